//! Finding a Debian mirror in the machine's own apt configuration, so the
//! kernel fetch never writes a host name into the code.

use std::path::Path;

/// Debian suites (codenames and aliases) a Debian archive mirror serves.
const DEBIAN_SUITES: &[&str] = &[
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "stable",
    "testing",
    "unstable",
    "oldstable",
];

/// One `deb` source: a URI and its suites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Archive root, without a trailing slash.
    pub uri: String,
    /// Suites it was configured with.
    pub suites: Vec<String>,
}

impl Source {
    /// A Debian archive mirror: serves a Debian suite other than the
    /// security archive (which does not carry backports).
    fn is_debian_archive(&self) -> bool {
        !self.uri.contains("security")
            && self.suites.iter().any(|s| {
                let base = s.split(['-', '/']).next().unwrap_or(s);
                DEBIAN_SUITES.contains(&base) && !s.contains("security")
            })
    }
}

/// Parse deb822 `.sources` text (stanzas of `Key: value` lines).
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| {
                    l.split_once(':')
                        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                })
                .map(|(_, v)| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        if !field("Types").iter().any(|t| t == "deb") {
            continue;
        }
        let suites = field("Suites");
        for uri in field("URIs") {
            out.push(Source {
                uri: uri.trim_end_matches('/').to_string(),
                suites: suites.clone(),
            });
        }
    }
    out
}

/// Parse one-line `sources.list` text (`deb [opts] URI suite comp...`).
pub fn parse_one_line(text: &str) -> Vec<Source> {
    text.lines()
        .filter_map(|l| {
            let l = l.split('#').next()?.trim();
            let rest = l.strip_prefix("deb ")?.trim_start();
            // Skip an `[arch=amd64 signed-by=...]` options block.
            let rest = match rest.strip_prefix('[') {
                Some(r) => r.split_once(']')?.1,
                None => rest,
            };
            let mut words = rest.split_whitespace();
            let uri = words.next()?.trim_end_matches('/').to_string();
            let suite = words.next()?.to_string();
            Some(Source {
                uri,
                suites: vec![suite],
            })
        })
        .collect()
}

/// Every source configured under `etc_apt` (`sources.list` and
/// `sources.list.d/*.list|*.sources`), in apt's reading order.
pub fn configured_sources(etc_apt: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string(etc_apt.join("sources.list")) {
        out.extend(parse_one_line(&t));
    }
    let mut files: Vec<_> = std::fs::read_dir(etc_apt.join("sources.list.d"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let Ok(t) = std::fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => out.extend(parse_deb822(&t)),
            Some("list") => out.extend(parse_one_line(&t)),
            _ => {}
        }
    }
    out
}

/// The first Debian archive mirror among `sources`.
pub fn debian_mirror(sources: &[Source]) -> Option<&str> {
    sources
        .iter()
        .find(|s| s.is_debian_archive())
        .map(|s| s.uri.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixture: the shape of a Debian 12 cloud image's deb822 file, with a
    // third-party repository first so the choice is not just "the first".
    const DEB822: &str = "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n\nTypes: deb\n# comment: snapshot\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";

    #[test]
    fn deb822_picks_the_debian_archive_not_security_or_third_party() {
        let s = parse_deb822(DEB822);
        assert_eq!(s.len(), 3);
        assert_eq!(debian_mirror(&s), Some("http://mirror.example/debian"));
    }

    #[test]
    fn one_line_with_options_and_comments() {
        // Fixture: one-line sources.list text.
        let text = "# deb http://old.example/debian buster main\ndeb https://packages.example/apt cloud-sdk main\ndeb [arch=amd64 signed-by=/k.gpg] http://ftp.example/debian/ trixie main contrib\ndeb http://ftp.example/debian-security trixie-security main\n";
        let s = parse_one_line(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[1].uri, "http://ftp.example/debian");
        assert_eq!(debian_mirror(&s), Some("http://ftp.example/debian"));
    }

    #[test]
    fn no_debian_source_gives_none() {
        let s = parse_one_line("deb http://archive.ubuntu.com/ubuntu noble main\n");
        assert_eq!(debian_mirror(&s), None);
    }
}
