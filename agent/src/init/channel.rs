//! The agent's side of the host channel: the second serial port.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use ktstr_agent::proto::{self, Msg};

/// Where frames go: `/dev/ttyS1`, else stdout (run by hand, outside a VM).
#[derive(Clone)]
pub struct Channel(Arc<Mutex<Option<File>>>);

impl Channel {
    /// Open the host channel.
    pub fn open() -> Channel {
        let tty = File::options().write(true).open("/dev/ttyS1").ok();
        Channel(Arc::new(Mutex::new(tty)))
    }

    /// Send one frame and wait until the UART has sent it (a frame still
    /// in the tty buffer is lost when the agent powers off next). A broken
    /// channel is ignored, as nobody would hear the complaint.
    pub fn send(&self, msg: &Msg) {
        let frame = proto::encode(msg);
        let tty = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        match tty.as_ref() {
            Some(mut f) => {
                let _ = f.write_all(frame.as_bytes());
                // SAFETY: tcdrain on an fd we own.
                unsafe { libc::tcdrain(f.as_raw_fd()) };
            }
            None => {
                let _ = std::io::stdout().write_all(frame.as_bytes());
            }
        }
    }
}
