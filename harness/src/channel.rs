//! The host's side of the agent channel when QEMU writes it: the guest's
//! second serial port as a file, read as it grows.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use crate::agent::proto::{FrameError, FrameReader, Msg};

/// Bytes read from the file per poll: the guest decides how fast it
/// grows, the host how much it takes at once.
const READ_CHUNK: u64 = 1 << 20;

/// Reads agent frames from a growing file.
pub struct AgentLog {
    path: PathBuf,
    pos: u64,
    /// The frames in what was read so far.
    pub frames: FrameReader,
}

impl AgentLog {
    /// Follow `path` from its start.
    pub fn new(path: PathBuf) -> AgentLog {
        AgentLog {
            path,
            pos: 0,
            frames: FrameReader::new(),
        }
    }

    /// Messages completed since the last call (at most [`READ_CHUNK`] new
    /// bytes are read; the rest waits for the next call).
    pub fn poll(&mut self) -> Result<Vec<Msg>, FrameError> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(_) => return Ok(Vec::new()),
        };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return Ok(Vec::new());
        }
        let mut new = Vec::new();
        let n = f.take(READ_CHUNK).read_to_end(&mut new).unwrap_or(0);
        self.pos += n as u64;
        self.frames.feed(&new[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::proto;
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
        assert_eq!(log.frames.noise.len(), 1);
        writeln!(f, "KTSTR 9 2 {{}}").unwrap();
        assert!(matches!(log.poll(), Err(FrameError::Version(9))));
    }
}
