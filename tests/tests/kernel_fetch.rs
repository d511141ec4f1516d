//! `ktstr kernel fetch` against the real Debian archive: the cache layout
//! and idempotence (a second fetch downloads nothing and rewrites nothing).

use std::time::SystemTime;

use ktstr::kernel::config::KernelConfig;
use ktstr::kernel::fetch::{FetchOptions, fetch, which};
use ktstr::kernel::store::COMPLETE_MARKER;
use ktstr_tests::{Need, skip};

fn mtime(p: &std::path::Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .expect("mtime")
}

#[test]
fn fetch_is_idempotent_and_leaves_a_complete_release() {
    if which("apt-get").is_none() {
        return skip(
            "fetch_is_idempotent",
            Need::Tool,
            "apt-get not found (not Debian/Ubuntu)",
        );
    }
    // The first call downloads when the cache is cold (./setup.sh already
    // ran it on a set-up machine); the second must find everything cached.
    let dir = match fetch(&FetchOptions::default()) {
        Ok(d) => d,
        Err(e) => {
            return skip(
                "fetch_is_idempotent",
                Need::Kernel,
                &format!("fetch failed: {e}"),
            );
        }
    };
    for f in ["vmlinuz", "vmlinux", "config", COMPLETE_MARKER] {
        assert!(dir.join(f).is_file(), "{} lacks {f}", dir.display());
    }
    let cfg = KernelConfig::open(&dir.join("config")).expect("config");
    assert_eq!(cfg.get("CONFIG_SCHED_CLASS_EXT"), Some("y"));
    cfg.check_required().expect("required options");

    let debs = ktstr::cache::root().expect("cache").join("apt/debs");
    let deb_times: Vec<_> = std::fs::read_dir(&debs)
        .expect("deb dir")
        .map(|e| {
            (
                e.as_ref().expect("entry").path(),
                mtime(&e.expect("entry").path()),
            )
        })
        .collect();
    let marker = mtime(&dir.join(COMPLETE_MARKER));

    let again = fetch(&FetchOptions::default()).expect("second fetch");
    assert_eq!(again, dir);
    assert_eq!(
        mtime(&dir.join(COMPLETE_MARKER)),
        marker,
        "release rewritten"
    );
    for (p, t) in deb_times {
        assert_eq!(mtime(&p), t, "{} downloaded again", p.display());
    }
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name")
        .to_string();
    let pinned = fetch(&FetchOptions {
        release: Some(name),
        offline: true,
    })
    .expect("pinned cached release");
    assert_eq!(pinned, dir);
}
