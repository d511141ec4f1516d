//! What the fixture's end-to-end tests share.

use ktstr::agent::proto::Work;
use ktstr::scenario::{CgroupSpec, Count, Cpuset, Scenario, Workers};

/// One worker named `stuck` (the fixture's `--stall-comm=stuck` never
/// dispatches it) next to two spinners it does.
pub fn stuck_next_to_spinners() -> Scenario {
    Scenario {
        name: "stall".into(),
        description: "one stuck worker next to two spinners".into(),
        cgroups: vec![CgroupSpec {
            name: "work".into(),
            cpuset: Cpuset::All,
            workers: vec![
                Workers::new("stuck", Count::Fixed(1), Work::Spin),
                Workers::new("ktstr-spin", Count::Fixed(2), Work::Spin),
            ],
            weight: None,
            cpu_max: None,
        }],
        steps: vec![],
    }
}
