//! Driving QEMU from tests: a kill-on-drop guard and a small QMP client.
//! (The harness's QEMU backend will own this for real; tests need it now.)

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// Kills QEMU however the test ends.
pub struct Qemu(pub Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A line-oriented QMP client over the monitor's Unix socket.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connect (retrying until `deadline`) and negotiate capabilities.
    pub fn connect(path: &Path, deadline: Instant) -> Qmp {
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("QMP socket {}: {e}", path.display()),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let greeting = qmp.read();
        assert!(
            greeting.get("QMP").is_some(),
            "not a QMP greeting: {greeting}"
        );
        qmp.execute("qmp_capabilities", serde_json::json!({}));
        qmp
    }

    /// The next message.
    pub fn read(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("QMP read");
        assert!(!line.is_empty(), "QMP connection closed");
        serde_json::from_str(&line).expect("QMP JSON")
    }

    /// Run `cmd` and return its `return` value; events are skipped.
    pub fn execute(&mut self, cmd: &str, args: serde_json::Value) -> serde_json::Value {
        let req = serde_json::json!({ "execute": cmd, "arguments": args });
        writeln!(self.writer, "{req}").unwrap();
        loop {
            let v = self.read();
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            assert!(v.get("error").is_none(), "{cmd} failed: {v}");
        }
    }
}
