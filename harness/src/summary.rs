//! Many runs' reports as one summary: a gauntlet's, or the JSON reports
//! of every shard of a gauntlet spread over machines with nextest's
//! `--partition` (`ktstr report merge DIR...`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::run::RunReport;

/// One run, in a line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// The test (or the combination for `ktstr gauntlet`).
    pub name: String,
    /// Scenario, topology, scheduler.
    pub what: String,
    /// Every check passed.
    pub passed: bool,
    /// The names of the failed checks.
    pub failed_checks: Vec<String>,
    /// Wall time.
    pub wall_ms: u64,
    /// Whether a dump was taken.
    pub dumped: bool,
}

/// Runs, passed and failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// One line per run, by name.
    pub runs: Vec<Line>,
    /// How many passed.
    pub passed: usize,
    /// How many failed.
    pub failed: usize,
    /// The sum of their wall times.
    pub wall_ms: u64,
}

/// Why reports could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A file or directory could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// Which.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A JSON file that is not a ktstr run report.
    #[error("{} is not a ktstr run report: {source}", path.display())]
    NotAReport {
        /// Which.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// Two reports of one test (the same shard merged twice?).
    #[error("test {0} is reported twice")]
    Duplicate(String),
    /// Nothing to merge.
    #[error("no .json reports under {0}")]
    Empty(String),
}

impl Summary {
    /// The summary of `reports`.
    pub fn of(reports: &[RunReport]) -> Summary {
        let mut runs: Vec<Line> = reports.iter().map(line).collect();
        runs.sort_by(|a, b| a.name.cmp(&b.name));
        Summary {
            passed: runs.iter().filter(|l| l.passed).count(),
            failed: runs.iter().filter(|l| !l.passed).count(),
            wall_ms: runs.iter().map(|l| l.wall_ms).sum(),
            runs,
        }
    }

    /// Every `*.json` report under `paths` (files, or directories searched
    /// recursively), merged; a test reported twice is an error.
    pub fn merge(paths: &[PathBuf]) -> Result<Summary, MergeError> {
        let mut files = Vec::new();
        for p in paths {
            collect(p, &mut files)?;
        }
        if files.is_empty() {
            let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            return Err(MergeError::Empty(shown.join(", ")));
        }
        let mut reports = Vec::new();
        for f in &files {
            let bytes = std::fs::read(f).map_err(|source| MergeError::Read {
                path: f.clone(),
                source,
            })?;
            let mut r: RunReport =
                serde_json::from_slice(&bytes).map_err(|source| MergeError::NotAReport {
                    path: f.clone(),
                    source,
                })?;
            if r.test_name.is_none() {
                r.test_name = f.file_stem().map(|s| s.to_string_lossy().into_owned());
            }
            reports.push(r);
        }
        let summary = Summary::of(&reports);
        if let Some(w) = summary.runs.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(MergeError::Duplicate(w[0].name.clone()));
        }
        Ok(summary)
    }

    /// A run that ended without a report (its VM broke): a failed line
    /// carrying the error's first line.
    pub fn add_broken(&mut self, name: &str, topology: &str, error: &str) {
        self.runs.push(Line {
            name: name.to_string(),
            what: format!("on {topology}: no report"),
            passed: false,
            failed_checks: vec![format!(
                "run broke: {}",
                error.lines().next().unwrap_or_default()
            )],
            wall_ms: 0,
            dumped: false,
        });
        self.runs.sort_by(|a, b| a.name.cmp(&b.name));
        self.failed += 1;
    }

    /// A table, failures first, then the totals.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut lines: Vec<&Line> = self.runs.iter().collect();
        lines.sort_by_key(|l| l.passed);
        for l in lines {
            out.push_str(&format!(
                "{} {:<60} {:<40} {:>6.1} s{}{}\n",
                if l.passed { "ok  " } else { "FAIL" },
                l.name,
                l.what,
                l.wall_ms as f64 / 1000.0,
                if l.dumped { " (dump)" } else { "" },
                if l.failed_checks.is_empty() {
                    String::new()
                } else {
                    format!(": {}", l.failed_checks.join(", "))
                }
            ));
        }
        out.push_str(&format!(
            "{} runs: {} passed, {} failed, {:.1} s of VM time\n",
            self.runs.len(),
            self.passed,
            self.failed,
            self.wall_ms as f64 / 1000.0
        ));
        out
    }
}

fn line(r: &RunReport) -> Line {
    Line {
        name: r.test_name.clone().unwrap_or_else(|| r.scenario.clone()),
        what: format!(
            "{} on {}, {}",
            r.scenario,
            r.topology,
            r.scheduler.as_deref().unwrap_or("default scheduler")
        ),
        passed: r.passed(),
        failed_checks: r
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.clone())
            .collect(),
        wall_ms: r.wall_ms,
        dumped: r.dump.is_some(),
    }
}

/// `path` if it is a JSON file, or every JSON file below it; bounded in
/// depth so a symlink loop cannot run forever.
fn collect(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), MergeError> {
    fn walk(path: &Path, depth: u32, out: &mut Vec<PathBuf>) -> Result<(), MergeError> {
        let read = |source| MergeError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.is_file() {
            if path.extension().is_some_and(|e| e == "json") {
                out.push(path.to_path_buf());
            }
            return Ok(());
        }
        if !meta.is_dir() || depth > 16 {
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(read)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            walk(&e, depth + 1, out)?;
        }
        Ok(())
    }
    walk(path, 0, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::tests::report;

    fn named(name: &str, pass: bool) -> RunReport {
        let mut r = report();
        r.test_name = Some(name.into());
        for c in &mut r.checks {
            c.passed = pass;
        }
        r
    }

    #[test]
    fn shards_merge_into_one_summary_and_a_test_twice_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let shard = |n: u32, reports: &[RunReport]| {
            let d = tmp.path().join(format!("shard-{n}/target/ktstr"));
            std::fs::create_dir_all(&d).unwrap();
            for r in reports {
                let p = d.join(format!("{}.json", r.test_name.as_deref().unwrap()));
                std::fs::write(p, serde_json::to_vec(r).unwrap()).unwrap();
            }
        };
        shard(1, &[named("a", true), named("b", false)]);
        shard(2, &[named("c", true)]);
        std::fs::write(tmp.path().join("shard-2/notes.txt"), "not a report").unwrap();
        let s = Summary::merge(&[tmp.path().to_path_buf()]).unwrap();
        let names: Vec<&str> = s.runs.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!((s.passed, s.failed), (2, 1));
        assert_eq!(s.wall_ms, 3 * 12_345);
        let text = s.to_text();
        assert!(text.starts_with("FAIL b"), "{text}");
        assert!(text.contains("scheduler attached to the end"), "{text}");
        assert!(
            text.ends_with("3 runs: 2 passed, 1 failed, 37.0 s of VM time\n"),
            "{text}"
        );

        shard(3, &[named("a", true)]);
        assert!(matches!(
            Summary::merge(&[tmp.path().to_path_buf()]),
            Err(MergeError::Duplicate(n)) if n == "a"
        ));
        std::fs::write(tmp.path().join("shard-3/target/ktstr/a.json"), "{}").unwrap();
        assert!(matches!(
            Summary::merge(&[tmp.path().to_path_buf()]),
            Err(MergeError::NotAReport { .. })
        ));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            Summary::merge(&[empty.path().to_path_buf()]),
            Err(MergeError::Empty(_))
        ));
    }
}
