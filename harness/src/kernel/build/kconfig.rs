//! Config fragments: parsing `CONFIG_X=v` / `# CONFIG_X is not set` lines,
//! merging them over a `.config` (what `merge_config.sh -m` does), and
//! checking that `make olddefconfig` kept every line a fragment asked for.

/// One line of a fragment: an option and the value asked for (`None`:
/// `# CONFIG_X is not set`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// `CONFIG_X`.
    pub option: String,
    /// `y`, `m`, a number or a quoted string as written; `None` for unset.
    pub value: Option<String>,
    /// The fragment it came from, for messages.
    pub origin: String,
}

impl Setting {
    /// The line as it appears in a `.config`.
    pub fn line(&self) -> String {
        match &self.value {
            Some(v) => format!("{}={v}", self.option),
            None => format!("# {} is not set", self.option),
        }
    }
}

/// What a `.config` line sets: `(option, Some(value))`, `(option, None)` for
/// `# CONFIG_X is not set`, or nothing for any other line.
fn parse_line(line: &str) -> Option<(&str, Option<&str>)> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# ") {
        let option = rest.strip_suffix(" is not set")?;
        return option.starts_with("CONFIG_").then_some((option, None));
    }
    let (k, v) = line.split_once('=')?;
    k.starts_with("CONFIG_").then_some((k, Some(v)))
}

/// Parse a fragment's text; `origin` names it in messages. Lines that set
/// nothing (comments, blanks) are skipped.
pub fn parse_fragment(text: &str, origin: &str) -> Vec<Setting> {
    text.lines()
        .filter_map(parse_line)
        .map(|(option, value)| Setting {
            option: option.to_string(),
            value: value.map(str::to_string),
            origin: origin.to_string(),
        })
        .collect()
}

/// `dotconfig` with every option of `settings` replaced by the setting's
/// line (later settings win), the rest kept in order.
pub fn merge(dotconfig: &str, settings: &[Setting]) -> String {
    let overridden = |o: &str| settings.iter().any(|s| s.option == o);
    let mut out: String = dotconfig
        .lines()
        .filter(|l| parse_line(l).is_none_or(|(o, _)| !overridden(o)))
        .flat_map(|l| [l, "\n"])
        .collect();
    out.push_str("# ktstr: config fragments\n");
    for (i, s) in settings.iter().enumerate() {
        if !settings[i + 1..].iter().any(|t| t.option == s.option) {
            out.push_str(&s.line());
            out.push('\n');
        }
    }
    out
}

/// A fragment line that `make olddefconfig` did not keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// What was asked for.
    pub wanted: Setting,
    /// What the resulting `.config` has instead.
    pub found: String,
}

/// Every setting that `dotconfig` (after olddefconfig) does not have as
/// asked. An unset option is kept when the result does not set it.
pub fn dropped(dotconfig: &str, settings: &[Setting]) -> Vec<Dropped> {
    let value_of = |option: &str| {
        dotconfig
            .lines()
            .filter_map(parse_line)
            .find(|(o, _)| *o == option)
            .and_then(|(_, v)| v)
    };
    let mut out = Vec::new();
    for (i, s) in settings.iter().enumerate() {
        // A later fragment overriding this option decides.
        if settings[i + 1..].iter().any(|t| t.option == s.option) {
            continue;
        }
        let have = value_of(&s.option);
        if have != s.value.as_deref() {
            out.push(Dropped {
                wanted: s.clone(),
                found: match have {
                    Some(v) => format!("{}={v}", s.option),
                    None => format!("# {} is not set", s.option),
                },
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixture: lines in the format `make tinyconfig` writes.
    const TINY: &str = "#\n# Linux/x86 6.12.117 Kernel Configuration\n#\nCONFIG_CC_VERSION_TEXT=\"gcc (Debian 12.2.0-14) 12.2.0\"\n# CONFIG_SMP is not set\nCONFIG_NR_CPUS=1\n# CONFIG_BPF_SYSCALL is not set\nCONFIG_LOCALVERSION=\"\"\n";

    #[test]
    fn a_merge_replaces_set_and_unset_lines_and_later_fragments_win() {
        let mut s = parse_fragment(
            "# harness\nCONFIG_SMP=y\nCONFIG_NR_CPUS=64\nCONFIG_BPF_SYSCALL=y\n",
            "harness.config",
        );
        s.extend(parse_fragment(
            "CONFIG_NR_CPUS=8\n# CONFIG_LOCALVERSION is not set\n",
            "user.config",
        ));
        assert_eq!(s.len(), 5);
        assert_eq!(s[4].line(), "# CONFIG_LOCALVERSION is not set");
        let merged = merge(TINY, &s);
        assert!(merged.contains("CONFIG_CC_VERSION_TEXT=\"gcc"));
        assert!(!merged.contains("# CONFIG_SMP is not set"), "{merged}");
        assert!(!merged.contains("CONFIG_NR_CPUS=1\n"), "{merged}");
        assert!(!merged.contains("CONFIG_NR_CPUS=64"), "{merged}");
        assert!(merged.contains("CONFIG_NR_CPUS=8\n") && merged.contains("CONFIG_SMP=y\n"));
        assert!(!merged.contains("CONFIG_LOCALVERSION=\"\""), "{merged}");
    }

    #[test]
    fn dropped_names_what_olddefconfig_did_not_keep() {
        let s = parse_fragment(
            "CONFIG_SMP=y\nCONFIG_DEBUG_INFO_BTF=y\n# CONFIG_MODULES is not set\nCONFIG_NR_CPUS=64\n",
            "harness.config",
        );
        // What olddefconfig might leave: BTF dropped (pahole too old), the
        // unset option absent, NR_CPUS changed.
        let result = "CONFIG_SMP=y\n# CONFIG_DEBUG_INFO_BTF is not set\nCONFIG_NR_CPUS=32\n";
        let d = dropped(result, &s);
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].wanted.option, "CONFIG_DEBUG_INFO_BTF");
        assert_eq!(d[0].found, "# CONFIG_DEBUG_INFO_BTF is not set");
        assert_eq!(d[1].found, "CONFIG_NR_CPUS=32");
        let with_modules = format!("{result}CONFIG_MODULES=y\n");
        assert_eq!(dropped(&with_modules, &s).len(), 3);
    }
}
