//! A small QMP client: JSON lines over QEMU's monitor socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// A QMP exchange that failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed or timed out.
    #[error("QMP socket: {0}")]
    Io(#[from] std::io::Error),
    /// QEMU closed the connection (it exited).
    #[error("QMP connection closed by QEMU")]
    Closed,
    /// Not QMP.
    #[error("QMP: unexpected message {0}")]
    Protocol(String),
    /// QEMU refused the command.
    #[error("QMP {cmd} failed: {error}")]
    Command {
        /// The command.
        cmd: String,
        /// QEMU's error object.
        error: String,
    },
}

/// A connected, negotiated QMP session.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect to a listening socket and leave capabilities negotiation.
    /// `timeout` bounds every later read.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Closed);
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol(line.trim().to_string()))
    }

    /// Run `cmd` and return its `return` value; asynchronous events in
    /// between are skipped.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, QmpError> {
        let req = json!({ "execute": cmd, "arguments": args });
        writeln!(self.writer, "{req}")?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Command {
                    cmd: cmd.to_string(),
                    error: e.to_string(),
                });
            }
        }
    }

    /// An HMP command's text output (e.g. `info registers`).
    pub fn hmp(&mut self, command: &str) -> Result<String, QmpError> {
        let r = self.execute("human-monitor-command", json!({ "command-line": command }))?;
        Ok(r.as_str().unwrap_or_default().to_string())
    }
}

/// A control register's value in `info registers` output (`CR3=...`).
pub fn register(info: &str, name: &str) -> Option<u64> {
    let key = format!("{name}=");
    let at = info.find(&key)? + key.len();
    let hex: String = info[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_from_info_registers() {
        // Shape of QEMU 7.2's `info registers` (x86-64), abridged.
        let info = "RAX=0000000000000000 RBX=ffffffff82a0c940\n\
                    CR0=80050033 CR2=000055d0c8a4e000 CR3=0000000001c3e000 CR4=00350ef0\n";
        assert_eq!(register(info, "CR3"), Some(0x1c3e000));
        assert_eq!(register(info, "CR4"), Some(0x350ef0));
        assert_eq!(register(info, "CR8"), None);
    }
}
