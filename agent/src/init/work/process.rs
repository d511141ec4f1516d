//! Process churn: fork and exit, or fork and exec.

use std::ffi::CStr;
use std::time::{Duration, Instant};

use super::{Meter, going};

/// Fork a child that exits at once (`exec`: that execs `exec true`
/// first), wait for it, again.
pub fn fork(exec: Option<&CStr>, deadline: Instant, m: &mut Meter) -> Result<u64, String> {
    let argv: Option<[*const libc::c_char; 3]> =
        exec.map(|p| [p.as_ptr(), c"true".as_ptr(), std::ptr::null()]);
    let mut iterations = 0;
    while going(deadline) {
        // SAFETY: the child calls only execv and _exit, both
        // async-signal-safe, on memory prepared before the fork.
        let pid = unsafe { libc::fork() };
        match pid {
            0 => unsafe {
                if let (Some(p), Some(argv)) = (exec, &argv) {
                    libc::execv(p.as_ptr(), argv.as_ptr());
                    libc::_exit(127);
                }
                libc::_exit(0)
            },
            -1 => return Err(format!("fork: {}", std::io::Error::last_os_error())),
            _ => {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 127 {
                    return Err(format!("exec {exec:?} failed in the child"));
                }
            }
        }
        iterations += 1;
        m.tick(Duration::ZERO);
    }
    Ok(iterations)
}
