//! A gauntlet from the command line: one scheduler binary run across
//! topologies, flag profiles and scenarios, one VM per combination, the
//! same combinations `#[ktstr_test]` would make, and a summary of all.

use std::path::PathBuf;

use crate::checks::Thresholds;
use crate::profiles::{self, ProfileError};
use crate::run::{RunReport, run_with};
use crate::scenario::{ScenarioError, catalogue};
use crate::session::SessionConfig;
use crate::summary::Summary;
use crate::testing::selected;

/// What to run.
#[derive(Debug, Clone)]
pub struct GauntletConfig {
    /// Kernel, memory, backend, duration and the scheduler's own args;
    /// the topology is set per combination.
    pub base: SessionConfig,
    /// The scheduler as the user named it (profiles are looked up by it).
    pub scheduler: String,
    /// Topologies, as `1n2l4c2t` strings.
    pub topologies: Vec<String>,
    /// Flag profile names (`default` when empty).
    pub profiles: Vec<String>,
    /// Scenario names (`steady` when empty).
    pub scenarios: Vec<String>,
    /// Run at most this many combinations, spread over all of them.
    pub max_vms: Option<usize>,
    /// Check thresholds.
    pub thresholds: Thresholds,
    /// Write each report as JSON here.
    pub json_dir: Option<PathBuf>,
}

/// One combination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combo {
    /// The topology.
    pub topology: String,
    /// The flag profile.
    pub profile: String,
    /// The scenario.
    pub scenario: String,
}

impl Combo {
    /// `steady@1n2l2c1t+local-pcpu`.
    pub fn name(&self) -> String {
        format!("{}@{}+{}", self.scenario, self.topology, self.profile)
    }
}

/// Why a gauntlet could not run.
#[derive(Debug, thiserror::Error)]
pub enum GauntletError {
    /// A topology that does not parse.
    #[error(transparent)]
    Topology(#[from] ktstr_vmm::TopologyError),
    /// An unknown profile.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// An unknown scenario.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// A report could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Every combination, in a fixed order, cut to `max_vms` spread evenly.
pub fn plan(cfg: &GauntletConfig) -> Vec<Combo> {
    let or = |v: &[String], d: &str| -> Vec<String> {
        if v.is_empty() {
            vec![d.to_string()]
        } else {
            v.to_vec()
        }
    };
    let topologies = or(&cfg.topologies, "1n1l2c1t");
    let profiles = or(&cfg.profiles, "default");
    let scenarios = or(&cfg.scenarios, "steady");
    let mut all = Vec::new();
    for scenario in &scenarios {
        for topology in &topologies {
            for profile in &profiles {
                all.push(Combo {
                    topology: topology.clone(),
                    profile: profile.clone(),
                    scenario: scenario.clone(),
                });
            }
        }
    }
    let total = all.len();
    match cfg.max_vms {
        Some(n) => all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| selected(*i, total, n))
            .map(|(_, c)| c)
            .collect(),
        None => all,
    }
}

/// Run the plan one VM at a time; `progress` hears which combination
/// runs. Every combination is checked before the first VM boots, so a
/// typo fails at once.
pub fn run(
    cfg: &GauntletConfig,
    progress: &dyn Fn(&str),
) -> Result<(Vec<RunReport>, Summary), GauntletError> {
    let combos = plan(cfg);
    let mut prepared = Vec::new();
    for c in &combos {
        let mut session = cfg.base.clone();
        session.topology = c.topology.parse()?;
        let profile = profiles::find(&cfg.scheduler, &c.profile)?;
        if let Some(s) = &mut session.scheduler {
            s.args.extend(profile.args.iter().map(|a| a.to_string()));
        }
        prepared.push((c, session, catalogue::find(&c.scenario)?));
    }
    let mut reports = Vec::new();
    let mut broken = Vec::new();
    for (i, (combo, session, scenario)) in prepared.into_iter().enumerate() {
        let name = combo.name();
        let at = format!("[{}/{}] {name}", i + 1, combos.len());
        progress(&at);
        // A run that breaks (a guest that panicked, a timeout) is one
        // failed line; the rest of the gauntlet still runs.
        match run_with(&session, &scenario, &cfg.thresholds, None, &|p| {
            progress(&format!("{at}: {p}"))
        }) {
            Ok(mut report) => {
                report.test_name = Some(name);
                if let Some(dir) = &cfg.json_dir {
                    crate::testing::write_report_in(dir, &report).map_err(|source| {
                        GauntletError::Write {
                            path: dir.clone(),
                            source,
                        }
                    })?;
                }
                reports.push(report);
            }
            Err(e) => {
                tracing::warn!("{name}: {e}");
                broken.push((name, combo.topology.clone(), e));
            }
        }
    }
    let mut summary = Summary::of(&reports);
    for (name, topology, e) in broken {
        summary.add_broken(&name, &topology, &e.to_string());
    }
    Ok((reports, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(topologies: &[&str], profiles: &[&str], max_vms: Option<usize>) -> GauntletConfig {
        GauntletConfig {
            base: SessionConfig::new("k", "1n1l1c1t".parse().unwrap()),
            scheduler: "bpfland".into(),
            topologies: topologies.iter().map(|s| s.to_string()).collect(),
            profiles: profiles.iter().map(|s| s.to_string()).collect(),
            scenarios: vec![],
            max_vms,
            thresholds: Thresholds::default(),
            json_dir: None,
        }
    }

    #[test]
    fn the_plan_is_every_combination_or_an_even_subset() {
        let all = plan(&cfg(
            &["1n1l2c1t", "1n2l2c1t", "2n2l2c1t"],
            &["default", "local-pcpu"],
            None,
        ));
        assert_eq!(all.len(), 6);
        assert_eq!(all[1].name(), "steady@1n1l2c1t+local-pcpu");
        let some = plan(&cfg(
            &["1n1l2c1t", "1n2l2c1t", "2n2l2c1t"],
            &["default", "local-pcpu"],
            Some(2),
        ));
        assert_eq!(some.len(), 2);
        assert_ne!(some[0].topology, some[1].topology, "{some:?}");
        assert_eq!(
            plan(&cfg(&[], &[], None))[0].name(),
            "steady@1n1l2c1t+default"
        );
    }

    #[test]
    fn a_typo_fails_before_any_vm_boots() {
        // No kernel "k" exists: reaching a boot would be a different error.
        let e = run(&cfg(&["1n1l2c1t"], &["warp"], None), &|_| {}).unwrap_err();
        assert!(matches!(e, GauntletError::Profile(_)), "{e}");
        let e = run(&cfg(&["1n1l2x1t"], &[], None), &|_| {}).unwrap_err();
        assert!(matches!(e, GauntletError::Topology(_)), "{e}");
    }
}
