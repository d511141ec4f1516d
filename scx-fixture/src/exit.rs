//! How the scheduler ended, as the BPF side recorded it in ops.exit()
//! (`UEI_RECORD`): the kernel's `struct scx_exit_info`, copied.

use ktstr_walker::render::names::Names;

use crate::bpf_skel::types::user_exit_info;

/// A copy of the BPF side's exit record.
pub struct ExitInfo {
    /// `enum scx_exit_kind`; 0 while running.
    pub kind: i32,
    exit_code: i64,
    reason: String,
    msg: String,
}

fn text(chars: &[i8]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl ExitInfo {
    /// Read `uei`, which the BPF side may be writing: `kind` is stored
    /// last, behind a barrier, so the rest is complete once it is set.
    pub fn read(uei: &user_exit_info) -> ExitInfo {
        // SAFETY: a plain aligned read of shared, mmap'd BPF map memory.
        let kind = unsafe { std::ptr::read_volatile(&uei.kind) };
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        ExitInfo {
            kind,
            exit_code: uei.exit_code,
            reason: text(&uei.reason),
            msg: text(&uei.msg),
        }
    }

    /// An error exit (`SCX_EXIT_ERROR` and up), not an unregistration.
    pub fn is_error(&self) -> bool {
        self.kind >= 1024
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exited: {} ({}), exit code {}, reason {:?}, message {:?}",
            Names::default().exit_kind(self.kind as u32),
            self.kind,
            self.exit_code,
            self.reason,
            self.msg
        )
    }
}
