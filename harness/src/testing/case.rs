//! What `#[ktstr_test]` expands to: a [`Declared`] test (the attribute's
//! values), one [`Variant`] of it per topology and flag profile, and the
//! [`Case`] the test's function declares its cgroups on and asserts with.

use std::path::{Path, PathBuf};
#[cfg(test)]
use std::time::Duration;

use crate::checks::Thresholds;
use crate::profiles::ProfileError;
use crate::run::RunReport;
use crate::scenario::{Action, At, CgroupSpec, Scenario, Step};
use crate::vm::Backend;

use super::{KtstrTest, skip};

/// A test as its attribute declares it; `&'static` so it can be a const.
#[derive(Debug, Clone, Copy)]
pub struct Declared {
    /// `module::function`.
    pub name: &'static str,
    /// A scheduler name or path; `None`: the kernel's own.
    pub scheduler: Option<&'static str>,
    /// Its arguments (a profile's come after them).
    pub args: &'static [&'static str],
    /// A catalogue scenario; `None`: the cgroups the test declares, or
    /// `steady` when it declares none.
    pub scenario: Option<&'static str>,
    /// How long the workload runs (`10s`, `500ms`).
    pub duration: Option<&'static str>,
    /// Freeze and dump this long into the workload.
    pub dump_at: Option<&'static str>,
    /// Longest a worker may wait.
    pub max_gap: Option<&'static str>,
    /// Largest spread of CPU time among identical spinners, in percent.
    pub fairness_spread_percent: Option<f64>,
    /// Least units of work per second every worker must do.
    pub min_throughput: Option<f64>,
    /// `--kernel`; `None`: `KTSTR_KERNEL`, else the newest cached.
    pub kernel: Option<&'static str>,
    /// `auto`, `qemu` or `kvm`; `None`: `KTSTR_BACKEND`, else `auto`.
    pub backend: Option<&'static str>,
    /// Guest RAM.
    pub memory_mib: Option<u64>,
}

impl Declared {
    /// The test on `topology` with flag profile `profile`, combination
    /// `index` of `total` in its gauntlet (0 of 1 for a single test).
    pub const fn variant(
        self,
        topology: &'static str,
        profile: Option<&'static str>,
        index: usize,
        total: usize,
    ) -> Variant {
        Variant {
            declared: self,
            topology,
            profile,
            index,
            total,
        }
    }
}

/// One combination of a (gauntlet) test.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    declared: Declared,
    topology: &'static str,
    profile: Option<&'static str>,
    index: usize,
    total: usize,
}

/// Why a declared test cannot even be set up: a mistake in the
/// attribute, said before any VM boots.
#[derive(Debug, thiserror::Error)]
pub enum DeclError {
    /// A duration that does not parse.
    #[error("{key} = {value:?}: not a duration (e.g. 10s, 500ms): {why}")]
    Duration {
        /// The attribute key.
        key: &'static str,
        /// Its value.
        value: String,
        /// Why.
        why: String,
    },
    /// An unknown backend.
    #[error("backend = {0:?}: {1}")]
    Backend(String, String),
    /// An unknown flag profile.
    #[error(transparent)]
    Profile(#[from] ProfileError),
}

impl Variant {
    /// The test's name in reports: `module::function`, plus the topology
    /// and profile for a gauntlet's combinations.
    pub fn name(&self) -> String {
        if self.total <= 1 {
            return self.declared.name.to_string();
        }
        let mut n = format!("{}::{}", self.declared.name, self.topology);
        if let Some(p) = self.profile {
            n = format!("{n}+{p}");
        }
        n
    }

    /// Whether `KTSTR_GAUNTLET_BUDGET=N` keeps this combination: N of the
    /// gauntlet's combinations, spread evenly over it and the same on
    /// every run.
    pub fn in_budget(&self) -> bool {
        let budget = std::env::var("KTSTR_GAUNTLET_BUDGET")
            .ok()
            .and_then(|v| v.parse::<usize>().ok());
        match budget {
            None => true,
            Some(n) => selected(self.index, self.total, n),
        }
    }

    /// Run the test: `body` declares cgroups on the [`Case`] and may
    /// [`Case::run`] it and assert on the report; a body that does not
    /// run it gets it run (and its checks enforced) after it returns.
    /// Skips loudly where the machine cannot run it.
    pub fn run(self, body: impl FnOnce(&mut Case)) {
        let name = self.name();
        if !self.in_budget() {
            eprintln!(
                "NOT RUN {name}: outside this gauntlet's KTSTR_GAUNTLET_BUDGET (combination {} of {})",
                self.index + 1,
                self.total
            );
            return;
        }
        let mut case = match Case::new(&self, name) {
            Ok(c) => c,
            Err(e) => panic!("{}: {e}", self.declared.name),
        };
        if let Some((need, reason)) = case.test.missing() {
            return skip(&case.name, need, &reason);
        }
        body(&mut case);
        if case.report.is_none() {
            case.run();
        }
    }
}

/// Whether combination `index` of `total` is one of the `budget` kept:
/// those where `index * budget / total` steps up (so the kept ones are
/// spread over the whole list, and the same on every run).
pub fn selected(index: usize, total: usize, budget: usize) -> bool {
    if budget >= total {
        return true;
    }
    (index + 1) * budget / total > index * budget / total
}

/// One test's VM: what it runs, the cgroups it declared, its report.
pub struct Case {
    name: String,
    test: KtstrTest,
    cgroups: Vec<CgroupSpec>,
    steps: Vec<Step>,
    report: Option<RunReport>,
}

impl Case {
    fn new(v: &Variant, name: String) -> Result<Case, DeclError> {
        let d = &v.declared;
        let duration = |key: &'static str, value: &str| {
            humantime::parse_duration(value).map_err(|e| DeclError::Duration {
                key,
                value: value.to_string(),
                why: e.to_string(),
            })
        };
        let mut test = KtstrTest::new(&name).topology(v.topology);
        if let Some(s) = d.scheduler {
            let mut args: Vec<&str> = d.args.to_vec();
            if let Some(p) = v.profile {
                args.extend(crate::profiles::find(s, p)?.args);
            }
            test = test.scheduler(s, &args);
        }
        if let Some(s) = d.scenario {
            test = test.scenario(s);
        }
        if let Some(t) = d.duration {
            test.duration = duration("duration", t)?;
        }
        if let Some(t) = d.dump_at {
            test = test.dump_at(duration("dump_at", t)?);
        }
        let mut thresholds = Thresholds::default();
        if let Some(t) = d.max_gap {
            thresholds.max_gap = duration("max_gap", t)?;
        }
        if let Some(p) = d.fairness_spread_percent {
            thresholds.fairness_spread = p / 100.0;
        }
        thresholds.min_throughput = d.min_throughput;
        test = test.thresholds(thresholds);
        if let Some(k) = d.kernel {
            test = test.kernel(k);
        }
        if let Some(b) = d.backend {
            let backend: Backend = b
                .parse()
                .map_err(|e: String| DeclError::Backend(b.to_string(), e))?;
            test = test.backend(backend);
        }
        test.memory_mib = d.memory_mib;
        Ok(Case {
            name,
            test,
            cgroups: Vec::new(),
            steps: Vec::new(),
            report: None,
        })
    }

    /// The test's name in reports.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Declare a cgroup (every CPU, no workers yet) and configure it.
    pub fn cgroup(&mut self, name: &str) -> &mut CgroupSpec {
        self.cgroups.push(CgroupSpec::new(name));
        let last = self.cgroups.len() - 1;
        &mut self.cgroups[last]
    }

    /// A change at `at` into the workload.
    pub fn step(&mut self, at: At, action: Action) -> &mut Case {
        self.steps.push(Step { at, action });
        self
    }

    /// Boot, run and check: the report, after its JSON is written under
    /// `target/ktstr/`. A failed check panics with the report (checks,
    /// numbers, dump); so does a run that breaks.
    pub fn run(&mut self) -> &RunReport {
        let report = self.run_allowing_failures();
        assert!(
            report.passed(),
            "{} failed its checks:\n{}",
            report.test_name.as_deref().unwrap_or_default(),
            report.to_text()
        );
        report
    }

    /// [`Case::run`] for a scheduler broken on purpose: failed checks do
    /// not panic, the caller looks at them.
    pub fn run_allowing_failures(&mut self) -> &RunReport {
        if !self.cgroups.is_empty() {
            self.test = self.test.clone().scenario_def(Scenario {
                name: self.name.clone(),
                description: "declared by the test".into(),
                cgroups: self.cgroups.clone(),
                steps: self.steps.clone(),
            });
        }
        let mut report = self
            .test
            .run()
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        report.test_name = Some(self.name.clone());
        match write_report_in(&report_dir(), &report) {
            Ok(path) => eprintln!("{}: report {}", self.name, path.display()),
            Err(e) => eprintln!("{}: could not write its JSON report: {e}", self.name),
        }
        eprintln!("{}:\n{}", self.name, report.to_text());
        self.report.insert(report)
    }
}

/// Where reports go: `KTSTR_REPORT_DIR`, else `ktstr/` in the cargo target
/// directory of the running test binary (`target/debug/deps/..`).
pub fn report_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KTSTR_REPORT_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "deps"))
        .and_then(|deps| deps.parent()?.parent())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    target.join("ktstr")
}

/// Where the JSON report of test `name` goes: `<report_dir>/<name>.json`,
/// with what a file name cannot hold (`::`, `/`) as `_`.
pub fn report_path(name: &str) -> PathBuf {
    report_dir().join(report_file(name))
}

/// `<name>.json`, with what a file name cannot hold as `_`.
fn report_file(name: &str) -> String {
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '+' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{file}.json")
}

/// Write `report` as JSON into `dir`, named after its test (see
/// [`report_path`]); where it went.
pub fn write_report_in(dir: &Path, report: &RunReport) -> std::io::Result<PathBuf> {
    let path = dir.join(report_file(
        report.test_name.as_deref().unwrap_or("ktstr-run"),
    ));
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(&path, json)?;
    Ok(path)
}

impl Default for Declared {
    fn default() -> Declared {
        Declared {
            name: "test",
            scheduler: None,
            args: &[],
            scenario: None,
            duration: None,
            dump_at: None,
            max_gap: None,
            fairness_spread_percent: None,
            min_throughput: None,
            kernel: None,
            backend: None,
            memory_mib: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_keeps_that_many_combinations_spread_over_the_gauntlet() {
        for total in 1..=24 {
            for budget in 0..=total + 2 {
                let kept: Vec<usize> = (0..total).filter(|&i| selected(i, total, budget)).collect();
                assert_eq!(kept.len(), budget.min(total), "{budget} of {total}");
            }
        }
        // Spread, not the first N.
        let kept: Vec<usize> = (0..12).filter(|&i| selected(i, 12, 3)).collect();
        assert_eq!(kept, [3, 7, 11]);
    }

    #[test]
    fn a_declaration_becomes_the_test_it_says() {
        let d = Declared {
            name: "suite::fair",
            scheduler: Some("bpfland"),
            args: &["--slice-us", "5000"],
            duration: Some("3s"),
            max_gap: Some("500ms"),
            fairness_spread_percent: Some(40.0),
            min_throughput: Some(1.0),
            ..Declared::default()
        };
        let v = d.variant("1n2l2c1t", Some("local-pcpu"), 1, 4);
        assert_eq!(v.name(), "suite::fair::1n2l2c1t+local-pcpu");
        let c = Case::new(&v, v.name()).unwrap();
        assert_eq!(c.test.topology, "1n2l2c1t");
        assert_eq!(c.test.duration, Duration::from_secs(3));
        assert_eq!(c.test.thresholds.max_gap, Duration::from_millis(500));
        assert!((c.test.thresholds.fairness_spread - 0.4).abs() < 1e-9);
        assert_eq!(c.test.thresholds.min_throughput, Some(1.0));
        let (s, args) = c.test.scheduler.clone().unwrap();
        assert_eq!(s, "bpfland");
        assert_eq!(args, ["--slice-us", "5000", "--local-pcpu"]);
        let single = d.variant("1n1l2c1t", None, 0, 1);
        assert_eq!(single.name(), "suite::fair");
    }

    #[test]
    fn declaration_mistakes_say_which_key() {
        let bad = Declared {
            duration: Some("ten seconds"),
            ..Declared::default()
        };
        let v = bad.variant("1n1l2c1t", None, 0, 1);
        assert!(matches!(
            Case::new(&v, v.name()),
            Err(DeclError::Duration {
                key: "duration",
                ..
            })
        ));
        let bad = Declared {
            scheduler: Some("bpfland"),
            ..Declared::default()
        };
        let v = bad.variant("1n1l2c1t", Some("warp-speed"), 0, 2);
        assert!(matches!(
            Case::new(&v, v.name()),
            Err(DeclError::Profile(ProfileError::Unknown { .. }))
        ));
    }
}
