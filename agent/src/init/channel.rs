//! The agent's side of the host channel: the second serial port.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use ktstr_agent::proto::{self, Msg};

/// Where frames go: `/dev/ttyS1`, else stdout (run by hand, outside a VM).
#[derive(Clone)]
pub struct Channel(Arc<Mutex<Box<dyn Write + Send>>>);

impl Channel {
    /// Open the host channel.
    pub fn open() -> Channel {
        let out: Box<dyn Write + Send> = match File::options().write(true).open("/dev/ttyS1") {
            Ok(f) => Box::new(f),
            Err(_) => Box::new(std::io::stdout()),
        };
        Channel(Arc::new(Mutex::new(out)))
    }

    /// Send one frame; a broken channel is ignored, as nobody would hear
    /// the complaint.
    pub fn send(&self, msg: &Msg) {
        let frame = proto::encode(msg);
        let mut out = match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let _ = out.write_all(frame.as_bytes());
        let _ = out.flush();
    }
}
