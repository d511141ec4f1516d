//! A kernel's build configuration (`config-<release>` / `.config`): the
//! options ktstr needs, checked with messages that name what is missing.

use std::collections::BTreeMap;
use std::path::Path;

/// Options a kernel must have for ktstr to test sched_ext schedulers on it,
/// each with why.
pub const REQUIRED: &[(&str, &str)] = &[
    ("CONFIG_SCHED_CLASS_EXT", "sched_ext itself"),
    (
        "CONFIG_DEBUG_INFO_BTF",
        "BTF, from which ktstr reads struct layouts and BPF schedulers load",
    ),
];

/// A required option is not set.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read kernel config {0}")]
    Io(#[from] crate::cache::PathIo),
    /// A required option is unset or not `=y`.
    #[error(
        "kernel config {source_name} has `{found}` where ktstr needs `{option}=y` (for {why}); build one with it (`ktstr kernel build VERSION` builds from Debian's linux-source-X.Y package, and `--kernel VERSION` does so on first use) or fetch one that has it (Debian's sched_ext kernels start at 6.16, in trixie-backports)"
    )]
    Missing {
        /// Where the config came from.
        source_name: String,
        /// The option.
        option: &'static str,
        /// The config's own line for it (`# CONFIG_X is not set`, `CONFIG_X=m`),
        /// or a note that it does not mention it.
        found: String,
        /// What it is needed for.
        why: &'static str,
    },
}

/// Parsed `CONFIG_*` assignments.
#[derive(Debug, Clone, Default)]
pub struct KernelConfig {
    source: String,
    values: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Parse config text; `source` names it in errors. Comment lines
    /// (`# CONFIG_X is not set`) and anything else that is not an
    /// assignment are ignored.
    pub fn parse(text: &str, source: &str) -> Self {
        let values = text
            .lines()
            .filter_map(|l| l.trim().split_once('='))
            .filter(|(k, _)| k.starts_with("CONFIG_"))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        Self {
            source: source.to_string(),
            values,
        }
    }

    /// Read and parse a config file.
    pub fn open(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(crate::cache::io(path))?;
        Ok(Self::parse(&text, &path.display().to_string()))
    }

    /// The value of `option` (`y`, `m`, a number, a string), if set.
    pub fn get(&self, option: &str) -> Option<&str> {
        self.values.get(option).map(String::as_str)
    }

    /// Every [`REQUIRED`] option is `=y`; the first that is not is the error.
    pub fn check_required(&self) -> Result<(), ConfigError> {
        match REQUIRED.iter().find(|(o, _)| self.get(o) != Some("y")) {
            None => Ok(()),
            Some(&(option, why)) => Err(ConfigError::Missing {
                source_name: self.source.clone(),
                option,
                found: match self.get(option) {
                    Some(v) => format!("{option}={v}"),
                    None => format!("# {option} is not set"),
                },
                why,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixture: a few lines in the format of a real Kconfig output.
    const TEXT: &str = "#\n# Automatically generated file; DO NOT EDIT.\nCONFIG_SCHED_CLASS_EXT=y\n# CONFIG_DEBUG_INFO_BTF is not set\nCONFIG_HZ=250\nCONFIG_LOCALVERSION=\"-x\"\n";

    #[test]
    fn parses_assignments_and_names_the_missing_option() {
        let c = KernelConfig::parse(TEXT, "fixture");
        assert_eq!(c.get("CONFIG_HZ"), Some("250"));
        assert_eq!(c.get("CONFIG_LOCALVERSION"), Some("-x"));
        assert_eq!(c.get("CONFIG_DEBUG_INFO_BTF"), None);
        let err = c.check_required().unwrap_err().to_string();
        assert!(err.contains("CONFIG_DEBUG_INFO_BTF=y"), "{err}");
        assert!(
            err.contains("`# CONFIG_DEBUG_INFO_BTF is not set`"),
            "{err}"
        );
        let m = KernelConfig::parse("CONFIG_SCHED_CLASS_EXT=m\n", "fixture");
        let err = m.check_required().unwrap_err().to_string();
        assert!(err.contains("`CONFIG_SCHED_CLASS_EXT=m`"), "{err}");
        let ok = KernelConfig::parse(&format!("{TEXT}CONFIG_DEBUG_INFO_BTF=y\n"), "fixture");
        ok.check_required().unwrap();
    }
}
