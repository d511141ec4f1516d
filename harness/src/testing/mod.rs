//! For test authors: declare a scheduler test in a few lines and run it
//! from `cargo test`/nextest, with loud skips where the machine cannot run
//! it.
//!
//! ```no_run
//! use ktstr::testing::KtstrTest;
//!
//! #[test]
//! fn bpfland_survives_cpuset_churn() {
//!     KtstrTest::new("bpfland_survives_cpuset_churn")
//!         .topology("1n2l2c1t")
//!         .scheduler("bpfland", &[])
//!         .scenario("cpuset-churn")
//!         .duration_secs(6)
//!         .check();
//! }
//! ```
//!
//! A test that cannot run (no QEMU, no fetched kernel, scheduler not
//! installed) prints `SKIPPED <test>: <reason>` and returns; when the
//! environment variable `KTSTR_REQUIRE` names the reason's category
//! (`kernel`, `tool`, `hwvirt`, comma-separated, or `all`) it panics
//! instead, so CI cannot pass by skipping.
//!
//! `KTSTR_BACKEND` (`auto`, `qemu` or `kvm`) picks the VMM of every
//! [`KtstrTest`] that does not choose one itself: the nested tier runs the
//! same tests on ktstr's KVM VMM with `KTSTR_BACKEND=kvm`.

mod case;

use std::time::Duration;

pub use case::{
    Case, DeclError, Declared, Variant, report_dir, report_path, selected, write_report_in,
};

use crate::checks::Thresholds;
use crate::kernel::store::NoFetchedKernel;
use crate::run::{RunError, RunReport, run};
use crate::scenario::{Scenario, ScenarioError, catalogue};
use crate::scheduler::NotFound;
use crate::session::{SchedulerConfig, SessionConfig};
use crate::vm::Backend;

/// Why a declared test could not be run (its checks failing is not an
/// error: they are in the report).
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// No kernel given and none fetched.
    #[error(transparent)]
    NoKernel(#[from] NoFetchedKernel),
    /// The topology string does not parse.
    #[error(transparent)]
    Topology(#[from] ktstr_vmm::TopologyError),
    /// The scheduler binary is not there.
    #[error(transparent)]
    Scheduler(#[from] NotFound),
    /// No such scenario.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The run itself failed.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Why a test could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// A fetched sched_ext kernel (`ktstr kernel fetch`).
    Kernel,
    /// A host tool such as qemu-system-x86_64 or a scheduler.
    Tool,
    /// Hardware virtualization (VT-x/AMD-V).
    HwVirt,
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Need::Kernel => "kernel",
            Need::Tool => "tool",
            Need::HwVirt => "hwvirt",
        }
    }
}

/// Whether `KTSTR_REQUIRE` makes `need` mandatory.
pub fn required(need: Need) -> bool {
    std::env::var("KTSTR_REQUIRE")
        .map(|v| {
            v.split(',')
                .any(|c| c.trim() == need.name() || c.trim() == "all")
        })
        .unwrap_or(false)
}

/// Report `test` as skipped because `reason`; panics when `need` is required.
pub fn skip(test: &str, need: Need, reason: &str) {
    if required(need) {
        panic!(
            "{test}: cannot run and KTSTR_REQUIRE includes {}: {reason}",
            need.name()
        );
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// Whether `tool` is on PATH.
pub fn have_tool(tool: &str) -> bool {
    crate::kernel::fetch::which(tool).is_some()
}

/// A scheduler test: topology, scheduler, scenario, thresholds.
#[derive(Debug, Clone)]
pub struct KtstrTest {
    name: String,
    kernel: Option<String>,
    topology: String,
    scheduler: Option<(String, Vec<String>)>,
    scenario: Option<Scenario>,
    scenario_name: String,
    duration: Duration,
    thresholds: Thresholds,
    dump_at: Option<Duration>,
    backend: Option<Backend>,
    memory_mib: Option<u64>,
}

/// The backend `KTSTR_BACKEND` names; `None` when unset. A value that
/// names no backend panics: a typo must not quietly run another VMM.
pub fn env_backend() -> Option<Backend> {
    let v = std::env::var("KTSTR_BACKEND").ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|e| panic!("KTSTR_BACKEND={v:?}: {e}")),
    )
}

impl KtstrTest {
    /// A test named `name`: the kernel `KTSTR_KERNEL` names, else the
    /// newest fetched one; `1n1l2c1t`, the kernel's
    /// own scheduler, the `steady` scenario, 5 s, default thresholds.
    pub fn new(name: &str) -> KtstrTest {
        KtstrTest {
            name: name.to_string(),
            kernel: std::env::var("KTSTR_KERNEL").ok(),
            topology: "1n1l2c1t".into(),
            scheduler: None,
            scenario: None,
            scenario_name: "steady".into(),
            duration: Duration::from_secs(5),
            thresholds: Thresholds::default(),
            dump_at: None,
            backend: None,
            memory_mib: None,
        }
    }

    /// The VMM; default `KTSTR_BACKEND`, else `auto`.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The backend this test runs on, on this host.
    pub fn resolved_backend(&self) -> Backend {
        self.backend
            .or_else(env_backend)
            .unwrap_or_default()
            .resolve()
    }

    /// The kernel: path, build directory or cached release.
    pub fn kernel(mut self, kernel: &str) -> Self {
        self.kernel = Some(kernel.to_string());
        self
    }

    /// The topology, e.g. `1n2l4c2t`.
    pub fn topology(mut self, topology: &str) -> Self {
        self.topology = topology.to_string();
        self
    }

    /// The scheduler: a path or a name (`bpfland`), with arguments.
    pub fn scheduler(mut self, scheduler: &str, args: &[&str]) -> Self {
        self.scheduler = Some((
            scheduler.to_string(),
            args.iter().map(|a| a.to_string()).collect(),
        ));
        self
    }

    /// A scenario from the catalogue.
    pub fn scenario(mut self, name: &str) -> Self {
        self.scenario_name = name.to_string();
        self.scenario = None;
        self
    }

    /// A scenario of the test's own.
    pub fn scenario_def(mut self, scenario: Scenario) -> Self {
        self.scenario = Some(scenario);
        self
    }

    /// How long the workload runs.
    pub fn duration_secs(mut self, secs: u64) -> Self {
        self.duration = Duration::from_secs(secs);
        self
    }

    /// Check thresholds.
    pub fn thresholds(mut self, thresholds: Thresholds) -> Self {
        self.thresholds = thresholds;
        self
    }

    /// Freeze and dump this long into the workload.
    pub fn dump_at(mut self, at: Duration) -> Self {
        self.dump_at = Some(at);
        self
    }

    /// What this machine lacks to run the test, if anything.
    fn missing(&self) -> Option<(Need, String)> {
        let backend = self.resolved_backend();
        if backend == Backend::Kvm && !ktstr_vmm::hardware_virt() {
            return Some((
                Need::HwVirt,
                "the KVM backend needs VT-x/AMD-V (no vmx/svm in /proc/cpuinfo, or no /dev/kvm); the nested tier (tests/tests/nested_kvm.rs) provides them".into(),
            ));
        }
        if backend == Backend::Qemu && !have_tool("qemu-system-x86_64") {
            return Some((
                Need::Tool,
                "qemu-system-x86_64 not installed (./setup.sh installs it)".into(),
            ));
        }
        if self.kernel.is_none()
            && let Err(e) = crate::kernel::store::newest_fetched()
        {
            return Some((Need::Kernel, e.to_string()));
        }
        if let Some((s, _)) = &self.scheduler
            && let Err(e) = crate::scheduler::resolve(s)
        {
            return Some((Need::Tool, e.to_string()));
        }
        None
    }

    /// Run it. Errors are infrastructure failures; check failures are in
    /// the report.
    pub fn run(&self) -> Result<RunReport, TestError> {
        let kernel = match &self.kernel {
            Some(k) => k.clone(),
            None => crate::kernel::store::newest_fetched()?
                .display()
                .to_string(),
        };
        let topology = self.topology.parse()?;
        let mut cfg = SessionConfig::new(kernel, topology);
        cfg.duration = self.duration;
        if let Some(m) = self.memory_mib {
            cfg.memory_mib = m;
        }
        cfg.backend = self.resolved_backend();
        cfg.scheduler = match &self.scheduler {
            Some((s, args)) => Some(SchedulerConfig {
                binary: crate::scheduler::resolve(s)?,
                args: args.clone(),
            }),
            None => None,
        };
        let scenario = match &self.scenario {
            Some(s) => s.clone(),
            None => catalogue::find(&self.scenario_name)?,
        };
        Ok(run(&cfg, &scenario, &self.thresholds, self.dump_at)?)
    }

    /// Run it as a `#[test]` whose checks may fail (a scheduler broken on
    /// purpose): skip loudly when the machine cannot, panic when the run
    /// itself breaks; returns the report (or `None` when skipped).
    pub fn report(&self) -> Option<RunReport> {
        if let Some((need, reason)) = self.missing() {
            skip(&self.name, need, &reason);
            return None;
        }
        let report = self.run().unwrap_or_else(|e| panic!("{}: {e}", self.name));
        eprintln!("{}:\n{}", self.name, report.to_text());
        Some(report)
    }

    /// Run it as a `#[test]`: skip loudly when the machine cannot, panic
    /// with the report when a check fails or the run breaks; returns the
    /// report of a passing run (or `None` when skipped).
    pub fn check(&self) -> Option<RunReport> {
        let report = self.report()?;
        assert!(
            report.passed(),
            "{} failed its checks:\n{}",
            self.name,
            report.to_text()
        );
        Some(report)
    }
}
