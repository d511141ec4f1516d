//! A small QMP client: JSON lines over QEMU's monitor socket. Every
//! command carries an `id` and only the reply with that id answers it, so
//! a reply that arrives after its command timed out, or an event, is never
//! taken for the answer to a later command.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ktstr_walker::capture::vcpus::VcpuState;

use serde_json::{Value, json};

/// A QMP exchange that failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket failed or timed out.
    #[error("QMP socket: {0}")]
    Io(#[from] std::io::Error),
    /// QEMU did not answer a command in time (it hangs, or is stopped).
    #[error("QEMU did not answer QMP {cmd} within {after:?}")]
    Timeout {
        /// The command.
        cmd: String,
        /// How long it waited.
        after: Duration,
    },
    /// QEMU closed the connection (it exited).
    #[error("QMP connection closed by QEMU")]
    Closed,
    /// Not QMP.
    #[error("QMP: unexpected message {0}")]
    Protocol(String),
    /// `stop` returned but the guest still runs.
    #[error("QMP stop: the guest is not paused afterwards (query-status: {0})")]
    NotStopped(String),
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
    /// The id of the last command sent.
    id: u64,
    /// A line cut short by a read timeout, completed by the next read.
    partial: String,
    /// What bounds every read.
    timeout: Duration,
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
            id: 0,
            partial: String::new(),
            timeout,
        };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol(greeting.to_string()));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    /// Run `f` with every read bounded by `timeout` instead, then go back
    /// to the connection's own bound.
    pub fn within<T>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce(&mut Qmp) -> Result<T, QmpError>,
    ) -> Result<T, QmpError> {
        let before = self.timeout;
        self.set_timeout(timeout)?;
        let r = f(self);
        self.set_timeout(before)?;
        r
    }

    fn set_timeout(&mut self, timeout: Duration) -> Result<(), QmpError> {
        self.writer.set_read_timeout(Some(timeout))?;
        self.timeout = timeout;
        Ok(())
    }

    fn read(&mut self) -> Result<Value, QmpError> {
        // On a timeout, what was read so far stays in `partial`.
        if self.reader.read_line(&mut self.partial)? == 0 {
            return Err(QmpError::Closed);
        }
        let line = std::mem::take(&mut self.partial);
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol(line.trim().to_string()))
    }

    /// Run `cmd` and return its `return` value; events and replies to
    /// earlier commands in between are skipped.
    pub fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, QmpError> {
        self.id += 1;
        let id = self.id;
        let req = json!({ "execute": cmd, "arguments": args, "id": id });
        writeln!(self.writer, "{req}")?;
        loop {
            let v = match self.read() {
                Err(QmpError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(QmpError::Timeout {
                        cmd: cmd.to_string(),
                        after: self.timeout,
                    });
                }
                r => r?,
            };
            if v.get("event").is_some() {
                continue;
            }
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                tracing::debug!(%v, "QMP: skipping a reply to an earlier command");
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QmpError::Command {
                    cmd: cmd.to_string(),
                    error: e.to_string(),
                });
            }
            return Err(QmpError::Protocol(v.to_string()));
        }
    }

    /// Stop every vCPU and confirm with `query-status` that the guest is
    /// paused: only then may its memory be read as a snapshot.
    pub fn stop(&mut self) -> Result<(), QmpError> {
        self.execute("stop", json!({}))?;
        let status = self.execute("query-status", json!({}))?;
        if status.get("running") != Some(&Value::Bool(false)) {
            return Err(QmpError::NotStopped(status.to_string()));
        }
        Ok(())
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

/// Each vCPU's registers from HMP's `info registers -a` (blocks headed
/// `CPU#<n>`); a block without RIP or RSP is skipped.
pub fn vcpu_registers(text: &str) -> Vec<VcpuState> {
    text.split("CPU#")
        .skip(1)
        .filter_map(|block| {
            let index = block
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()?;
            Some(VcpuState {
                index,
                rip: register(block, "RIP")?,
                rsp: register(block, "RSP")?,
                rflags: register(block, "RFL").unwrap_or(0),
                cr3: register(block, "CR3"),
                cs: register(block, "CS "),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real output of QEMU 7.2's `info registers -a` (a fixture: two TCG
    /// vCPUs of the Debian 7.3.4 kernel, stopped during boot).
    #[test]
    fn registers_of_every_vcpu() {
        let text = include_str!("testdata/info_registers_a.txt");
        let v = vcpu_registers(text);
        assert_eq!(v.len(), 2, "{v:?}");
        assert_eq!((v[0].index, v[1].index), (0, 1));
        assert_eq!(v[0].rip, 0xffffffffb2947679);
        assert_eq!(v[0].rsp, 0xffffd0e680013d38);
        assert_eq!(v[0].rflags, 0x283);
        assert_eq!(v[0].cr3, Some(0x762a000));
        assert_eq!(v[0].cs, Some(0x10));
        assert!(v.iter().all(VcpuState::in_kernel));
        assert!(vcpu_registers("garbage CPU#x RIP=").is_empty());
    }

    /// A QMP server on a socket pair: greets, accepts capabilities, then
    /// answers each command with what `answer` says (raw lines, so stale
    /// replies and events can be sent); returns the client.
    fn serve(
        answer: impl Fn(&Value) -> Vec<String> + Send + 'static,
    ) -> (Qmp, std::thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 {
                let req: Value = serde_json::from_str(&line).unwrap();
                line.clear();
                let replies = if req["execute"] == "qmp_capabilities" {
                    vec![json!({"return": {}, "id": req["id"]}).to_string()]
                } else {
                    answer(&req)
                };
                for l in replies {
                    writeln!(w, "{l}").unwrap();
                }
            }
            drop(dir);
        });
        (
            Qmp::connect(&path, Duration::from_millis(300)).unwrap(),
            server,
        )
    }

    #[test]
    fn only_the_reply_with_the_commands_id_answers_it() {
        let (mut qmp, _server) = serve(|req| {
            let id = req["id"].as_u64().unwrap();
            vec![
                json!({"event": "STOP", "timestamp": {}}).to_string(),
                // A stale reply to the previous command, then the real one.
                json!({"return": {"stale": true}, "id": id - 1}).to_string(),
                json!({"return": {"for": req["execute"]}, "id": id}).to_string(),
            ]
        });
        let r = qmp.execute("query-status", json!({})).unwrap();
        assert_eq!(r, json!({"for": "query-status"}));
        let r = qmp.execute("cont", json!({})).unwrap();
        assert_eq!(r, json!({"for": "cont"}));
    }

    #[test]
    fn a_late_reply_is_not_taken_for_the_next_commands() {
        // The first `stop` is answered too late for its read timeout;
        // the next command must not take that answer as its own.
        let (mut qmp, _server) = serve(|req| {
            let id = req["id"].as_u64().unwrap();
            if req["execute"] == "stop" {
                std::thread::sleep(Duration::from_millis(500));
                return vec![json!({"return": {"late": true}, "id": id}).to_string()];
            }
            vec![json!({"return": {"running": true, "status": "running"}, "id": id}).to_string()]
        });
        match qmp.execute("stop", json!({})) {
            Err(QmpError::Timeout { cmd, after }) => {
                assert_eq!((cmd.as_str(), after), ("stop", Duration::from_millis(300)));
            }
            other => panic!("expected a timeout naming stop, got {other:?}"),
        }
        let r = qmp.execute("query-status", json!({})).unwrap();
        assert_eq!(r["status"], "running", "{r}");
    }

    #[test]
    fn within_bounds_one_exchange_and_restores_the_connections_bound() {
        let (mut qmp, _server) = serve(|req| {
            let id = req["id"].as_u64().unwrap();
            if req["execute"] == "stop" {
                std::thread::sleep(Duration::from_millis(150));
            }
            vec![json!({"return": {}, "id": id}).to_string()]
        });
        match qmp.within(Duration::from_millis(50), |q| q.execute("stop", json!({}))) {
            Err(QmpError::Timeout { cmd, after }) => {
                assert_eq!((cmd.as_str(), after), ("stop", Duration::from_millis(50)));
            }
            other => panic!("expected a timeout naming stop, got {other:?}"),
        }
        // Back to the connection's 300 ms: a 150 ms answer arrives in time.
        qmp.execute("stop", json!({})).unwrap();
    }

    #[test]
    fn stop_is_confirmed_by_query_status() {
        let (mut qmp, _server) = serve(|req| {
            let id = req["id"].as_u64().unwrap();
            let ret = match req["execute"].as_str() {
                Some("query-status") => json!({"running": true, "status": "running"}),
                _ => json!({}),
            };
            vec![json!({"return": ret, "id": id}).to_string()]
        });
        assert!(matches!(qmp.stop(), Err(QmpError::NotStopped(_))));
    }

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
