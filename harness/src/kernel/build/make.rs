//! Running make in a kernel tree: every line into the build log, a
//! progress display on a terminal (a periodic log line otherwise), the
//! log's tail in the error.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::BuildError;

/// How often a build without a terminal says it is still going.
const HEARTBEAT: Duration = Duration::from_secs(60);
/// Lines of the log an error carries.
const TAIL_LINES: usize = 25;

/// make in one tree, logging to one file.
pub struct Make {
    tree: PathBuf,
    log_path: PathBuf,
    log: File,
    jobs: usize,
}

impl Make {
    /// make in `tree` with `jobs` jobs, appending to `log`.
    pub fn new(tree: &Path, log: &Path, jobs: usize) -> Result<Self, BuildError> {
        let file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(super::io(log))?;
        Ok(Self {
            tree: tree.to_path_buf(),
            log_path: log.to_path_buf(),
            log: file,
            jobs,
        })
    }

    /// Run `make <target>`; with `progress`, show how far it got, against
    /// `expected` steps when a previous build of the tree says how many.
    pub fn run(
        &mut self,
        target: &str,
        progress: bool,
        expected: Option<u64>,
    ) -> Result<(), BuildError> {
        let _ = writeln!(self.log, "### make -j{} {target}", self.jobs);
        let mut child = Command::new("make")
            .arg("-C")
            .arg(&self.tree)
            .arg(format!("-j{}", self.jobs))
            .arg(target)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(super::io(Path::new("make")))?;
        let (rx, readers) = lines_of(&mut child);
        let mut shown = Progress::new(target, progress, expected);
        let mut tail = VecDeque::with_capacity(TAIL_LINES + 1);
        // Ends when both pipes close (make and its children exited).
        for line in rx {
            let _ = writeln!(self.log, "{line}");
            shown.line(&line);
            tail.push_back(line);
            if tail.len() > TAIL_LINES {
                tail.pop_front();
            }
        }
        for r in readers {
            let _ = r.join();
        }
        let start = shown.finish();
        let status = child.wait().map_err(super::io(Path::new("make")))?;
        let _ = writeln!(
            self.log,
            "### make {target}: {status} after {:.1} s",
            start.elapsed().as_secs_f64()
        );
        let _ = self.log.flush();
        if status.success() {
            return Ok(());
        }
        Err(BuildError::Make {
            step: target.to_string(),
            tree: self.tree.clone(),
            status: status.to_string(),
            log: self.log_path.clone(),
            tail: Vec::from(tail).join("\n"),
        })
    }
}

/// make's stdout and stderr as one stream of lines, read by a thread each.
fn lines_of(child: &mut Child) -> (mpsc::Receiver<String>, Vec<JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel::<String>();
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child.stdout.take().map(|o| Box::new(o) as _),
        child.stderr.take().map(|e| Box::new(e) as _),
    ];
    let readers = pipes
        .into_iter()
        .flatten()
        .map(|r| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    (rx, readers)
}

/// What the user sees of a make step: a bar on a terminal, else a
/// heartbeat line every [`HEARTBEAT`] (nothing when `progress` is off).
struct Progress<'a> {
    target: &'a str,
    progress: bool,
    expected: Option<u64>,
    bar: Option<indicatif::ProgressBar>,
    start: Instant,
    last_beat: Instant,
    steps: u64,
}

impl<'a> Progress<'a> {
    fn new(target: &'a str, progress: bool, expected: Option<u64>) -> Self {
        let bar = (progress && std::io::stderr().is_terminal()).then(|| {
            let (b, template) = match expected {
                Some(n) => (
                    indicatif::ProgressBar::new(n),
                    "[{elapsed_precise}] {bar:30} {pos}/{len} steps (~{eta} left) {msg}",
                ),
                None => (
                    indicatif::ProgressBar::new_spinner(),
                    "{spinner} [{elapsed_precise}] {pos} steps {msg}",
                ),
            };
            b.set_style(
                indicatif::ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        let start = Instant::now();
        Self {
            target,
            progress,
            expected,
            bar,
            start,
            last_beat: start,
            steps: 0,
        }
    }

    fn line(&mut self, line: &str) {
        let step = is_step(line);
        self.steps += u64::from(step);
        if let Some(b) = &self.bar {
            b.set_position(self.steps);
            if step {
                b.set_message(line.trim().to_string());
            }
        } else if self.progress && self.last_beat.elapsed() >= HEARTBEAT {
            self.last_beat = Instant::now();
            tracing::info!(
                "make {}: {}{} steps in {} s; {}",
                self.target,
                self.steps,
                self.expected.map_or(String::new(), |n| format!(" of ~{n}")),
                self.start.elapsed().as_secs(),
                line.trim()
            );
        }
    }

    /// Clears the bar; returns when the step started.
    fn finish(self) -> Instant {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
        self.start
    }
}

/// Steps of a previous build in its log, if it has any.
pub fn steps_in_log(log: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let n = text.lines().filter(|l| is_step(l)).count() as u64;
    (n > 0).then_some(n)
}

/// A kbuild short-log line (`  CC      kernel/sched/core.o`): one step.
fn is_step(line: &str) -> bool {
    line.strip_prefix("  ")
        .and_then(|l| l.split_whitespace().next())
        .is_some_and(|w| w.len() >= 2 && w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_log_lines_count_as_steps() {
        assert!(is_step("  CC      kernel/sched/core.o"));
        assert!(is_step("  BTF     .btf.vmlinux.bin.o"));
        assert!(!is_step("make[1]: Entering directory '/x'"));
        assert!(!is_step("kernel/sched/ext.c:12: warning: unused"));
        assert!(!is_step("  a"));
    }

    #[test]
    fn a_failing_make_carries_its_log_tail() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("Makefile"),
            "ok:\n\t@echo '  CC      a.o'\nbad:\n\t@echo building; echo 'x.c:1: error: nope' >&2; false\n",
        )
        .unwrap();
        let log = tmp.path().join("build.log");
        let mut m = Make::new(tmp.path(), &log, 1).unwrap();
        m.run("ok", true, Some(1)).unwrap();
        let e = m.run("bad", false, None).unwrap_err();
        match &e {
            BuildError::Make { step, tail, .. } => {
                assert_eq!(step, "bad");
                assert!(tail.contains("error: nope"), "{tail}");
            }
            other => panic!("{other}"),
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("  CC      a.o") && text.contains("error: nope"),
            "{text}"
        );
    }
}
