//! A guest that floods its console: QEMU's console file stays within its
//! bound on disk (here `KTSTR_CONSOLE_MAX_BYTES`, 64 KiB) while the guest
//! prints, the file says how much was dropped and still shows the newest
//! lines, and nothing is left behind.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ktstr::session::{SchedulerConfig, Session, SessionConfig};
use ktstr_tests::assert_no_vm_left_behind;

const LIMIT: u64 = 64 << 10;

/// This process's VM directories' console logs.
fn console_logs() -> Vec<PathBuf> {
    let tag = format!("ktstr-{}-", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(&tag))
        .map(|e| e.path().join("console.log"))
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn a_console_flood_is_bounded_on_disk() {
    const TEST: &str = "a_console_flood_is_bounded_on_disk";
    let Some(dir) = ktstr_tests::qemu_kernel_or_skip(TEST) else {
        return;
    };
    // SAFETY: set before any thread of this test process reads it; this
    // test binary holds only this test.
    unsafe { std::env::set_var("KTSTR_CONSOLE_MAX_BYTES", LIMIT.to_string()) };
    let mut cfg = SessionConfig::new(dir.display().to_string(), "1n1l1c1t".parse().unwrap());
    // A "scheduler" (dash, with its libraries) that prints to the console
    // in a loop and never attaches.
    cfg.scheduler = Some(SchedulerConfig {
        binary: PathBuf::from("/bin/sh"),
        args: vec![
            "-c".into(),
            "i=0; while :; do i=$((i+1)); echo \"flood line $i ................................\"; done >/dev/console".into(),
        ],
    });
    cfg.attach_timeout = Duration::from_secs(8);

    // Watch the console file's size while the session runs.
    let done = Arc::new(AtomicBool::new(false));
    let (largest, last_note) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let watcher = {
        let (done, largest, note) = (done.clone(), largest.clone(), last_note.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                for p in console_logs() {
                    if let Ok(m) = std::fs::metadata(&p) {
                        largest.fetch_max(m.len(), Ordering::Relaxed);
                    }
                    // The note, then the newest lines.
                    if std::fs::read(&p).is_ok_and(|b| {
                        let t = String::from_utf8_lossy(&b);
                        t.starts_with("[ktstr: ")
                            && t.contains("earlier console bytes dropped")
                            && t.contains("flood line")
                    }) {
                        note.store(true, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let err = match Session::start(&cfg) {
        Ok(_) => panic!("the flooding scheduler attached"),
        Err(e) => format!("{e:#}"),
    };
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let largest = largest.load(Ordering::Relaxed);
    // The note line is on top of the limit.
    assert!(
        largest <= LIMIT + 128,
        "console file reached {largest} bytes"
    );
    assert!(
        last_note.load(Ordering::Relaxed),
        "the guest never printed past the limit (largest file {largest} bytes): {err}"
    );
    assert!(err.contains("did not attach"), "{err}");
    assert_no_vm_left_behind();
}
