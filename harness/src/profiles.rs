//! Named flag profiles of upstream schedulers: what a gauntlet varies
//! besides the topology. Flags are the schedulers' own (checked against
//! `scx_bpfland --help` 1.1.4 and `scx_lavd --help` 1.1.4); a profile
//! nobody wrote down here is an error that lists the known ones.

/// One named set of arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Its name in test names and reports (`local-pcpu`).
    pub name: &'static str,
    /// What it changes, in a line.
    pub description: &'static str,
    /// The arguments it adds.
    pub args: &'static [&'static str],
}

const fn p(
    name: &'static str,
    description: &'static str,
    args: &'static [&'static str],
) -> Profile {
    Profile {
        name,
        description,
        args,
    }
}

const DEFAULT: Profile = p("default", "the scheduler's own defaults", &[]);

const BPFLAND: &[Profile] = &[
    DEFAULT,
    p(
        "local-pcpu",
        "per-CPU tasks first (bpfland warns: can be unfair and stall other tasks)",
        &["--local-pcpu"],
    ),
    p(
        "short-slice",
        "1 ms time slices, minimum 100 us",
        &["--slice-us", "1000", "--slice-min-us", "100"],
    ),
    p(
        "no-wake-sync",
        "no wakeup-affine placement",
        &["--no-wake-sync"],
    ),
    p("sticky", "tasks stay on their CPU", &["--sticky-tasks"]),
    p(
        "no-topology",
        "SMT and NUMA awareness off",
        &["--disable-smt", "--disable-numa"],
    ),
];

const LAVD: &[Profile] = &[
    DEFAULT,
    p("performance", "prefer performance", &["--performance"]),
    p("powersave", "prefer power saving", &["--powersave"]),
    p(
        "short-slice",
        "1 ms maximum slice",
        &["--slice-max-us", "1000"],
    ),
];

/// Why a profile could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// The scheduler has profiles, but not this one.
    #[error("scheduler {scheduler} has no profile {profile:?}; known: {known}")]
    Unknown {
        /// The scheduler as named.
        scheduler: String,
        /// The profile asked for.
        profile: String,
        /// Its profiles, comma-separated.
        known: String,
    },
    /// No profiles are written down for this scheduler.
    #[error(
        "no flag profiles are known for scheduler {0}: only `default` works; pass its flags with `args` instead"
    )]
    NoProfiles(String),
}

/// The profiles of `scheduler` (a name such as `bpfland`/`scx_bpfland`,
/// or a path whose file name is one); empty when none are known.
pub fn of(scheduler: &str) -> &'static [Profile] {
    let base = scheduler.rsplit('/').next().unwrap_or(scheduler);
    match base.strip_prefix("scx_").unwrap_or(base) {
        "bpfland" => BPFLAND,
        "lavd" => LAVD,
        _ => &[],
    }
}

/// The profile `name` of `scheduler`; `default` exists for every scheduler.
pub fn find(scheduler: &str, name: &str) -> Result<Profile, ProfileError> {
    if name == DEFAULT.name {
        return Ok(DEFAULT);
    }
    let all = of(scheduler);
    if all.is_empty() {
        return Err(ProfileError::NoProfiles(scheduler.to_string()));
    }
    all.iter()
        .find(|p| p.name == name)
        .copied()
        .ok_or_else(|| ProfileError::Unknown {
            scheduler: scheduler.to_string(),
            profile: name.to_string(),
            known: all.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_found_by_scheduler_name_or_path() {
        let p = find("bpfland", "local-pcpu").unwrap();
        assert_eq!(p.args, ["--local-pcpu"]);
        assert_eq!(find("/opt/bin/scx_bpfland", "local-pcpu").unwrap(), p);
        assert_eq!(find("anything", "default").unwrap().args.len(), 0);
        let e = find("bpfland", "fast").unwrap_err();
        assert!(
            matches!(&e, ProfileError::Unknown { known, .. } if known.contains("local-pcpu")),
            "{e}"
        );
        assert!(matches!(
            find("scx_fixture", "x"),
            Err(ProfileError::NoProfiles(_))
        ));
    }

    #[test]
    fn bpfland_profiles_use_flags_bpfland_has() {
        const TEST: &str = "bpfland_profiles_use_flags_bpfland_has";
        let bin = match crate::scheduler::resolve("bpfland") {
            Ok(b) => b,
            Err(e) => {
                return crate::testing::skip(TEST, crate::testing::Need::Tool, &e.to_string());
            }
        };
        let help = std::process::Command::new(&bin)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for p in BPFLAND {
            for a in p.args.iter().filter(|a| a.starts_with("--")) {
                assert!(
                    help.contains(&format!("{a} ")) || help.contains(&format!("{a}\n")),
                    "profile {}: {} --help has no {a}",
                    p.name,
                    bin.display()
                );
            }
        }
    }
}
