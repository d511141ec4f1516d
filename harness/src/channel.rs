//! The host's side of the agent channel: the guest's second serial port,
//! as a file QEMU writes (read as it grows) or bytes a VMM hands over.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use crate::agent::proto::{self, FrameError, Msg};

/// Noise lines kept for error reports; later ones are only counted.
const MAX_NOISE_LINES: usize = 50;
/// Bytes of a noise line kept.
const MAX_NOISE_LINE: usize = 200;

/// Reads agent frames from a growing file.
pub struct AgentLog {
    path: PathBuf,
    pos: u64,
    partial: Vec<u8>,
    /// The first lines that were not frames (kept for error reports).
    pub noise: Vec<String>,
    /// Noise lines not kept.
    pub noise_dropped: u64,
}

impl AgentLog {
    /// Follow `path` from its start.
    pub fn new(path: PathBuf) -> AgentLog {
        AgentLog {
            path,
            pos: 0,
            partial: Vec::new(),
            noise: Vec::new(),
            noise_dropped: 0,
        }
    }

    /// Messages completed since the last call. A frame from an agent of
    /// another protocol version is an error: nothing it says can be trusted.
    pub fn poll(&mut self) -> Result<Vec<Msg>, FrameError> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(_) => return Ok(Vec::new()),
        };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return Ok(Vec::new());
        }
        let mut new = Vec::new();
        let n = f.read_to_end(&mut new).unwrap_or(0);
        self.pos += n as u64;
        self.feed(&new[..n])
    }

    /// Messages completed by `bytes`, the channel's next output. A line
    /// longer than [`proto::MAX_FRAME`] is an error: the guest is not
    /// speaking the protocol, and the host will not buffer it.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<Msg>, FrameError> {
        self.partial.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            match proto::decode(&line) {
                Ok(m) => out.push(m),
                Err(e @ FrameError::Version(_)) => return Err(e),
                Err(_) if line.trim().is_empty() => {}
                Err(e) if self.noise.len() < MAX_NOISE_LINES => {
                    let text: String = line.trim_end().chars().take(MAX_NOISE_LINE).collect();
                    self.noise.push(format!("{text}: {e}"));
                }
                Err(_) => self.noise_dropped += 1,
            }
        }
        if self.partial.len() > proto::MAX_FRAME {
            self.partial = Vec::new();
            return Err(FrameError::TooLong(proto::MAX_FRAME));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn frames_arrive_as_the_file_grows() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agent");
        let mut log = AgentLog::new(path.clone());
        assert!(log.poll().unwrap().is_empty(), "no file yet");
        let msg = Msg::Error {
            message: "x".into(),
        };
        let frame = proto::encode(&msg).replace('\n', "\r\n");
        let (a, b) = frame.split_at(10);
        let mut f = std::fs::File::create(&path).unwrap();
        write!(f, "garbage\r\n{a}").unwrap();
        assert!(log.poll().unwrap().is_empty(), "half a frame");
        write!(f, "{b}").unwrap();
        assert_eq!(log.poll().unwrap(), vec![msg]);
        assert_eq!(log.noise.len(), 1);
        writeln!(f, "KTSTR 9 2 {{}}").unwrap();
        assert!(matches!(log.poll(), Err(FrameError::Version(9))));
    }

    #[test]
    fn a_hostile_channel_cannot_grow_host_memory() {
        let mut log = AgentLog::new(PathBuf::new());
        // Endless noise: kept up to a bound, counted past it, each line cut.
        let line = format!("{}\n", "x".repeat(10_000));
        for _ in 0..1000 {
            assert!(log.feed(line.as_bytes()).unwrap().is_empty());
        }
        assert_eq!(log.noise.len(), MAX_NOISE_LINES);
        assert_eq!(log.noise_dropped, 1000 - MAX_NOISE_LINES as u64);
        assert!(log.noise.iter().all(|l| l.len() < MAX_NOISE_LINE + 100));
        // A line that never ends.
        let chunk = vec![b'y'; 1 << 20];
        let mut fed = 0;
        let err = loop {
            match log.feed(&chunk) {
                Ok(_) => fed += chunk.len(),
                Err(e) => break e,
            }
            assert!(fed <= proto::MAX_FRAME, "buffered past the bound");
        };
        assert!(matches!(err, FrameError::TooLong(_)), "{err}");
        // The next frame still decodes.
        let msg = Msg::Error {
            message: "after".into(),
        };
        let mut bytes = b"\n".to_vec();
        bytes.extend(proto::encode(&msg).into_bytes());
        assert_eq!(log.feed(&bytes).unwrap(), vec![msg]);
    }
}
