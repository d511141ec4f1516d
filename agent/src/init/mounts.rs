//! The filesystems a scheduler and its workers expect.

use std::ffi::CString;

/// Mount proc, sys, dev, debugfs, cgroup2 and /tmp; failures are logged to
/// the console and ignored (a scheduler may not need every one).
pub fn mount_all() {
    for (fstype, target) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("debugfs", "/sys/kernel/debug"),
        ("cgroup2", "/sys/fs/cgroup"),
        ("tmpfs", "/tmp"),
        ("bpf", "/sys/fs/bpf"),
    ] {
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(fstype, target) {
            eprintln!("ktstr-agent: mount {fstype} on {target}: {e}");
        }
    }
}

fn mount(fstype: &str, target: &str) -> std::io::Result<()> {
    let src = CString::new(fstype)?;
    let dst = CString::new(target)?;
    // SAFETY: valid NUL-terminated strings; null data is allowed.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EBUSY) {
        return Ok(());
    }
    Err(e)
}
