//! Driving a hand-started QEMU from tests that need a bare kernel (no
//! initramfs, no agent), where the harness's backend does not fit: a
//! kill-on-drop guard and a retrying QMP connect.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

pub use ktstr::vm::qmp::Qmp;

/// Kills QEMU however the test ends.
pub struct Qemu(pub Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connect to QEMU's QMP socket, retrying until `deadline`.
pub fn connect(path: &Path, deadline: Instant) -> Qmp {
    loop {
        match Qmp::connect(path, Duration::from_secs(60)) {
            Ok(q) => return q,
            Err(e) if Instant::now() >= deadline => panic!("QMP socket {}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
