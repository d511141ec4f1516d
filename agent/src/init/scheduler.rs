//! The scheduler process: start it, wait for sched_ext to say it is
//! attached, watch it, stop it.

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ktstr_agent::proto::{Msg, SchedulerJob, ScxState};

const LOG: &str = "/tmp/scheduler.log";
/// Bytes of scheduler output sent back to the host.
const TAIL: usize = 4096;

/// A started scheduler.
pub struct Scheduler {
    child: Child,
}

impl Scheduler {
    /// Start `job` and wait until it attached; the message says how that
    /// went, and on failure there is no scheduler to keep.
    pub fn start(job: &SchedulerJob) -> Result<(Scheduler, Msg), Box<Msg>> {
        let failed = |reason: String| {
            Box::new(Msg::SchedulerFailed {
                reason,
                output: tail(),
            })
        };
        let log = File::create(LOG).map_err(|e| failed(format!("creating {LOG}: {e}")))?;
        let log2 = log
            .try_clone()
            .map_err(|e| failed(format!("dup of {LOG}: {e}")))?;
        let start = Instant::now();
        let child = Command::new(&job.path)
            .args(&job.args)
            .envs(job.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| failed(format!("cannot start {}: {e}", job.path)))?;
        let mut sched = Scheduler { child };
        let timeout = Duration::from_millis(job.attach_timeout_ms);
        loop {
            let state = super::sched_ext_state();
            if let (true, Some(ops)) = (state.state == ScxState::Enabled, state.ops) {
                let msg = Msg::SchedulerAttached {
                    pid: sched.child.id() as i32,
                    ops,
                    after_ms: start.elapsed().as_millis() as u64,
                };
                return Ok((sched, msg));
            }
            if let Some(exit) = sched.exited() {
                return Err(failed(format!(
                    "{} exited before attaching ({exit})",
                    job.path
                )));
            }
            if start.elapsed() > timeout {
                sched.stop();
                return Err(failed(format!(
                    "{} did not attach within {} ms (sched_ext state: {})",
                    job.path, job.attach_timeout_ms, state.state
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot tell: {e}")),
        }
    }

    /// The end of its output.
    pub fn output_tail(&self) -> String {
        tail()
    }

    /// SIGINT, then SIGKILL after a grace period.
    pub fn stop(mut self) {
        if self.exited().is_some() {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail() -> String {
    let bytes = std::fs::read(LOG).unwrap_or_default();
    let start = bytes.len().saturating_sub(TAIL);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}
