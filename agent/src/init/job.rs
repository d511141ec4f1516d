//! Where the agent's job comes from: the initramfs ([`proto::JOB_PATH`]),
//! or, when it has none, one frame on [`proto::JOB_PORT`] after the agent
//! said [`Msg::Ready`](proto::Msg::Ready).

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use ktstr_agent::proto::{self, FrameError, Job};

/// Bytes of one unfinished line the agent buffers from the job port: a
/// job is kilobytes.
const MAX_JOB: usize = 1 << 20;

/// The job in the initramfs, if it has one.
pub fn from_initramfs() -> Result<Option<Job>, String> {
    match std::fs::read(proto::JOB_PATH) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("parsing {}: {e}", proto::JOB_PATH)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", proto::JOB_PATH)),
    }
}

/// The job port, open and raw (no echo back to the host, no line
/// editing). It is opened before the agent says it is ready: a closed
/// serial port drops what arrives.
pub struct JobPort(File);

impl JobPort {
    /// Open [`proto::JOB_PORT`].
    pub fn open() -> Result<JobPort, String> {
        let what = |e: std::io::Error| format!("opening the job port {}: {e}", proto::JOB_PORT);
        let f = File::options()
            .read(true)
            .custom_flags(libc::O_NOCTTY)
            .open(proto::JOB_PORT)
            .map_err(what)?;
        let fd = f.as_raw_fd();
        // SAFETY: termios calls on an fd we own, with a struct they fill.
        let ok = unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            libc::tcgetattr(fd, &mut t) == 0 && {
                libc::cfmakeraw(&mut t);
                libc::tcsetattr(fd, libc::TCSANOW, &t) == 0
            }
        };
        if !ok {
            return Err(what(std::io::Error::last_os_error()));
        }
        Ok(JobPort(f))
    }

    /// Wait for a whole job frame.
    pub fn read(mut self) -> Result<Job, String> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = match self.0.read(&mut chunk) {
                Ok(0) => return Err(format!("{} ended before a job came", proto::JOB_PORT)),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading {}: {e}", proto::JOB_PORT)),
            };
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            if let Some(job) = first_job(&mut buf)? {
                return Ok(job);
            }
            if buf.len() > MAX_JOB {
                return Err(format!(
                    "more than {MAX_JOB} bytes on {} without a job frame",
                    proto::JOB_PORT
                ));
            }
        }
    }
}

/// The first job frame among the complete lines of `buf`, which loses the
/// lines read. Lines that are not a job (a frame the host resent after a
/// cut, noise) are skipped; a frame of another protocol version is an
/// error, since host and agent disagree.
fn first_job(buf: &mut Vec<u8>) -> Result<Option<Job>, String> {
    while let Some(end) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=end).collect();
        match proto::decode_job(&String::from_utf8_lossy(&line)) {
            Ok(job) => return Ok(Some(job)),
            Err(FrameError::Version(v)) => {
                return Err(format!(
                    "the host sent a job of protocol version {v}, this agent speaks {}",
                    proto::VERSION
                ));
            }
            Err(_) => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            version: proto::VERSION,
            scheduler: None,
            cgroups: vec![],
            steps: vec![],
            duration_ms: 1000,
            shell: false,
        }
    }

    #[test]
    fn a_job_frame_is_found_after_noise_and_a_cut_frame() {
        let frame = proto::encode_job(&job());
        let cut = &frame[..frame.len() / 2];
        let mut buf = format!("noise\r\n{cut}\n").into_bytes();
        assert_eq!(first_job(&mut buf), Ok(None));
        assert!(buf.is_empty(), "complete lines are consumed");
        // Half a frame waits for the rest.
        buf.extend_from_slice(cut.as_bytes());
        assert_eq!(first_job(&mut buf), Ok(None));
        buf.extend_from_slice(&frame.as_bytes()[frame.len() / 2..]);
        assert_eq!(first_job(&mut buf), Ok(Some(job())));
    }

    #[test]
    fn a_job_of_another_version_is_an_error() {
        let frame = proto::encode_job(&job()).replacen(
            &format!("KTSTR {}", proto::VERSION),
            &format!("KTSTR {}", proto::VERSION + 1),
            1,
        );
        let mut buf = frame.into_bytes();
        let err = first_job(&mut buf).unwrap_err();
        assert!(err.contains("protocol version"), "{err}");
    }
}
