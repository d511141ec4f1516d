//! The kernel cache under stress, through the `ktstr` binary on temporary
//! caches (KTSTR_CACHE_DIR): two fetches of one release at once, a fetch
//! killed mid-download, `kernel list`/`clean`, `--kernel VERSION`, a
//! hostile KTSTR_DEBIAN_MIRROR, and `kernel build` of a stand-in source
//! tree (refused when Kconfig drops a fragment line; two builds at once). The real-archive cases reuse the package
//! lists and .debs of ~/.cache/ktstr where they are, so they cost little
//! more than an `apt-get update`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ktstr::kernel::store::{self, COMPLETE_MARKER, STAGING_PREFIX, Verify};
use ktstr_tests::{Need, skip};

/// The small release used here: 6.19.x (one 13 MB package).
const SMALL: &str = "6.19.14";

fn ktstr(cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ktstr"));
    c.env("KTSTR_CACHE_DIR", cache)
        .env("KTSTR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Wait for `child` at most `limit`; kill it past that (nothing hangs).
fn wait(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "ktstr ran past {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().expect("output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A temporary cache with the real cache's package lists (and, with
/// `debs`, its .debs of `SMALL`) copied in, or `None` after a skip.
fn seeded_cache(test: &str, debs: bool) -> Option<tempfile::TempDir> {
    if ktstr::kernel::fetch::which("apt-get").is_none() {
        skip(test, Need::Tool, "apt-get not found (not Debian/Ubuntu)");
        return None;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let real = ktstr::cache::root().expect("cache").join("apt");
    let apt = tmp.path().join("apt");
    std::fs::create_dir_all(apt.join("lists/partial")).unwrap();
    std::fs::create_dir_all(apt.join("debs")).unwrap();
    for e in std::fs::read_dir(real.join("lists"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.path().is_file() && e.file_name() != "lock" {
            let _ = std::fs::copy(e.path(), apt.join("lists").join(e.file_name()));
        }
    }
    if debs {
        for e in std::fs::read_dir(real.join("debs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if e.file_name().to_string_lossy().contains(SMALL) {
                let _ = std::fs::copy(e.path(), apt.join("debs").join(e.file_name()));
            }
        }
    }
    Some(tmp)
}

fn staging_dirs(kernels: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(kernels)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(STAGING_PREFIX))
        })
        .collect()
}

fn fetch_ok_or_skip(test: &str, out: &Output) -> bool {
    if out.status.success() {
        return true;
    }
    let err = text(&out.stderr);
    if err.contains("update") || err.contains("Could not resolve") || err.contains("apt-get") {
        skip(test, Need::Kernel, &format!("archive unreachable: {err}"));
        return false;
    }
    panic!("fetch failed: {err}");
}

#[test]
fn two_concurrent_fetches_of_one_release_write_it_once_and_agree() {
    const TEST: &str = "two_concurrent_fetches_of_one_release";
    let Some(tmp) = seeded_cache(TEST, true) else {
        return;
    };
    let spawn = || {
        ktstr(tmp.path())
            .args(["kernel", "fetch", "--release", SMALL])
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (
        wait(a, Duration::from_secs(600)),
        wait(b, Duration::from_secs(600)),
    );
    if !fetch_ok_or_skip(TEST, &a) {
        return;
    }
    assert!(b.status.success(), "{}", text(&b.stderr));
    let dir_a = text(&a.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    let dir_b = text(&b.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert_eq!(dir_a, dir_b);
    // Exactly one wrote it; the other found it complete after the lock.
    let wrote = [&a, &b]
        .iter()
        .filter(|o| text(&o.stderr).contains("extracting vmlinux"))
        .count();
    assert_eq!(wrote, 1, "A: {}\nB: {}", text(&a.stderr), text(&b.stderr));
    store::verify(Path::new(&dir_a), Verify::Hashes).expect("verified");
    let kernels = tmp.path().join("kernels");
    assert!(
        staging_dirs(&kernels).is_empty(),
        "{:?}",
        staging_dirs(&kernels)
    );
}

#[test]
fn a_fetch_killed_mid_download_leaves_a_cache_the_next_fetch_completes() {
    const TEST: &str = "a_fetch_killed_mid_download";
    let Some(tmp) = seeded_cache(TEST, false) else {
        return;
    };
    let kernels = tmp.path().join("kernels");
    let mut cmd = ktstr(tmp.path());
    cmd.args(["kernel", "fetch", "--release", SMALL]);
    // Its own process group, so apt-get dies with it, as on Ctrl-C.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().expect("spawn");
    let pgid = child.id() as i32;
    let start = Instant::now();
    let downloading = loop {
        let hit = staging_dirs(&kernels)
            .iter()
            .any(|s| s.join("download").is_dir());
        if hit || start.elapsed() > Duration::from_secs(300) {
            break hit;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // SAFETY: kill(2) on the process group this test created.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let out = wait(child, Duration::from_secs(30));
    if !downloading {
        return skip(
            TEST,
            Need::Kernel,
            &format!("the download never started: {}", text(&out.stderr)),
        );
    }
    // Killed: nothing usable was published, the staging directory is left.
    assert!(store::complete_releases(&kernels).is_empty());
    assert!(!staging_dirs(&kernels).is_empty());

    let again = wait(
        ktstr(tmp.path())
            .args(["kernel", "fetch", "--release", SMALL])
            .spawn()
            .expect("spawn"),
        Duration::from_secs(600),
    );
    if !fetch_ok_or_skip(TEST, &again) {
        return;
    }
    let err = text(&again.stderr);
    assert!(err.contains("removed the stale staging directory"), "{err}");
    let dir = text(&again.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    store::verify(Path::new(&dir), Verify::Hashes).expect("verified");
    assert!(staging_dirs(&kernels).is_empty());
    // A later use is a verified cache hit, without the network.
    let offline = wait(
        ktstr(tmp.path())
            .args(["kernel", "fetch", "--offline", "--release", SMALL])
            .spawn()
            .expect("spawn"),
        Duration::from_secs(60),
    );
    assert!(offline.status.success(), "{}", text(&offline.stderr));
}

#[test]
fn kernel_version_is_fetched_on_first_use_then_taken_from_the_cache() {
    const TEST: &str = "kernel_version_is_fetched_on_first_use";
    let Some(tmp) = seeded_cache(TEST, true) else {
        return;
    };
    let info = |spec: &str| {
        wait(
            ktstr(tmp.path())
                .args(["kernel", "info", spec, "--json"])
                .spawn()
                .expect("spawn"),
            Duration::from_secs(600),
        )
    };
    // `kernel info` exits 1 when the walker's layout misses groups this
    // older kernel lacks (scx_sched_pcpu/pnode); 2 is a failure to resolve.
    let resolved = |o: &Output| matches!(o.status.code(), Some(0 | 1));
    let first = info(SMALL);
    if !resolved(&first) && !fetch_ok_or_skip(TEST, &first) {
        return;
    }
    let err = text(&first.stderr);
    assert!(
        err.contains("kernel: 6.19.14+deb13-cloud-amd64 (fetched now"),
        "{err}"
    );
    // Prefix of a cached version: no archive contact.
    let second = info("6.19");
    assert!(resolved(&second), "{}", text(&second.stderr));
    let err = text(&second.stderr);
    assert!(
        err.contains("kernel: 6.19.14+deb13-cloud-amd64 (cached"),
        "{err}"
    );
    assert!(!err.contains("updating the package lists"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&second.stdout).expect("json");
    assert!(
        v["release"]
            .as_str()
            .unwrap_or_default()
            .starts_with("6.19.14")
    );
}

#[test]
fn a_mirror_with_a_newline_is_refused_before_apt_sees_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = wait(
        ktstr(tmp.path())
            .env(
                "KTSTR_DEBIAN_MIRROR",
                "http://deb.example/debian trixie main\ndeb [trusted=yes] http://evil.example/ sid",
            )
            .args(["kernel", "fetch", "--release", "6.16.99"])
            .spawn()
            .unwrap(),
        Duration::from_secs(60),
    );
    if ktstr::kernel::fetch::which("apt-get").is_none() {
        return skip("a_mirror_with_a_newline", Need::Tool, "apt-get not found");
    }
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("KTSTR_DEBIAN_MIRROR") && err.contains("whitespace"),
        "{err}"
    );
    assert!(!tmp.path().join("apt/sources.list").exists());
}

/// A fake release (not bootable): enough for list and clean.
fn fake_release(kernels: &Path, name: &str, used_secs_ago: u64) {
    let dir = kernels.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vmlinuz"), b"z").unwrap();
    std::fs::write(dir.join("vmlinux"), vec![0u8; 2_000_000]).unwrap();
    std::fs::write(
        dir.join("config"),
        b"CONFIG_SCHED_CLASS_EXT=y\n# CONFIG_DEBUG_INFO_BTF is not set\n",
    )
    .unwrap();
    let m = store::Marker::record(
        &dir,
        store::Marker {
            release: name.into(),
            origin: store::Origin::Fetched,
            suite: Some("trixie-backports".into()),
            package_version: None,
            config_from_image: false,
            debs: vec![format!("linux-image-{name}_1_amd64.deb")],
            source: None,
            kernel_release: None,
            files: Default::default(),
        },
    )
    .unwrap();
    m.write(&dir).unwrap();
    std::fs::write(dir.join(store::LAST_USED), b"").unwrap();
    let t = std::time::SystemTime::now() - Duration::from_secs(used_secs_ago);
    std::fs::File::options()
        .write(true)
        .open(dir.join(store::LAST_USED))
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn list_shows_each_kernel_and_clean_keeps_the_most_recently_used() {
    let tmp = tempfile::tempdir().unwrap();
    let kernels = tmp.path().join("kernels");
    fake_release(&kernels, "6.16.12+deb13-cloud-amd64", 7200);
    fake_release(&kernels, "6.19.14+deb13-cloud-amd64", 60);
    fake_release(&kernels, "7.3.4+deb13-cloud-amd64", 3600);
    let debs = tmp.path().join("apt/debs");
    std::fs::create_dir_all(&debs).unwrap();
    std::fs::write(
        debs.join("linux-image-6.16.12+deb13-cloud-amd64_1_amd64.deb"),
        b"d",
    )
    .unwrap();
    // A stale staging directory of a dead fetch.
    std::fs::create_dir_all(kernels.join(format!("{STAGING_PREFIX}6.16.12+deb13-cloud-amd64-1")))
        .unwrap();
    // A damaged release is no release.
    fake_release(&kernels, "7.2.12+deb13-cloud-amd64", 10);
    std::fs::write(kernels.join("7.2.12+deb13-cloud-amd64/vmlinux"), b"cut").unwrap();

    let run = |args: &[&str]| {
        let out = wait(
            ktstr(tmp.path()).args(args).spawn().unwrap(),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let table = run(&["kernel", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("VERSION") && lines[0].contains("LAST USED"));
    assert!(lines[1].starts_with("6.16.12+deb13-cloud-amd64"), "{table}");
    assert!(lines[1].contains("fetched (trixie-backports)"), "{table}");
    assert!(
        lines[1].contains(" yes ") && lines[1].contains(" NO "),
        "{table}"
    );
    assert!(lines[1].contains(" 2h"), "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&run(&["kernel", "list", "--json"])).unwrap();
    assert_eq!(json.as_array().map(Vec::len), Some(3));
    assert!(json[0]["size"].as_u64().unwrap() >= 2_000_000);

    let out = run(&["kernel", "clean", "6.16"]);
    assert!(out.contains("6.16.12+deb13-cloud-amd64"), "{out}");
    assert!(
        !debs
            .join("linux-image-6.16.12+deb13-cloud-amd64_1_amd64.deb")
            .exists()
    );
    assert!(staging_dirs(&kernels).is_empty());
    // Keep 1 of the rest: 6.19 (used a minute ago) stays; 7.3.4 and the
    // damaged 7.2.12 go.
    run(&["kernel", "clean", "--keep", "1"]);
    let left: Vec<String> = store::complete_releases(&kernels)
        .iter()
        .filter_map(|d| store::release_name(d))
        .collect();
    assert_eq!(left, ["6.19.14+deb13-cloud-amd64"]);
    assert!(!kernels.join("7.2.12+deb13-cloud-amd64").exists());
    assert!(
        kernels
            .join("6.19.14+deb13-cloud-amd64")
            .join(COMPLETE_MARKER)
            .is_file()
    );
    run(&["kernel", "clean"]);
    assert!(store::complete_releases(&kernels).is_empty());
    assert!(run(&["kernel", "list"]).contains("no kernels cached"));
}

#[test]
fn an_unreachable_archive_falls_back_to_the_cache_loudly_but_not_for_a_pinned_release() {
    const TEST: &str = "an_unreachable_archive_falls_back";
    if ktstr::kernel::fetch::which("apt-get").is_none() {
        return skip(TEST, Need::Tool, "apt-get not found (not Debian/Ubuntu)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let kernels = tmp.path().join("kernels");
    fake_release(&kernels, "7.3.4+deb13-cloud-amd64", 60);
    // Port 9 (discard) on the loopback: refused at once, no network needed.
    let fetch = |args: &[&str]| {
        wait(
            ktstr(tmp.path())
                .env("KTSTR_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
                .args(["kernel", "fetch"])
                .args(args)
                .spawn()
                .unwrap(),
            Duration::from_secs(300),
        )
    };
    let out = fetch(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("WARNING") && err.contains("CACHED"), "{err}");
    assert!(
        text(&out.stdout)
            .trim_end()
            .ends_with("7.3.4+deb13-cloud-amd64")
    );
    let out = fetch(&["--release", "6.16.12"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot update the package lists")
            && err.contains("no cached kernel matches 6.16.12"),
        "{err}"
    );
    // A pinned release that is cached needs no archive at all.
    let out = fetch(&["--release", "7.3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_built_kernel_is_listed_as_built_and_cleaned_like_any_other() {
    let tmp = tempfile::tempdir().unwrap();
    let kernels = tmp.path().join("kernels");
    let name = "6.12.117+ktstr.0123456789ab";
    fake_release(&kernels, name, 60);
    fake_release(&kernels, "7.3.4+deb13-cloud-amd64", 30);
    // What `kernel build` records (fake files: list and clean read no image).
    let dir = kernels.join(name);
    std::fs::write(dir.join("build.log"), b"  CC      kernel/sched/core.o\n").unwrap();
    let m = store::Marker::record(
        &dir,
        store::Marker {
            release: name.into(),
            origin: store::Origin::Built,
            suite: None,
            package_version: None,
            config_from_image: false,
            debs: vec![],
            source: Some("linux-source-6.12 6.12.117-1".into()),
            kernel_release: Some("6.12.117".into()),
            files: Default::default(),
        },
    )
    .unwrap();
    assert!(m.files.contains_key("build.log"));
    m.write(&dir).unwrap();
    let run = |args: &[&str]| {
        let out = wait(
            ktstr(tmp.path()).args(args).spawn().unwrap(),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let table = run(&["kernel", "list"]);
    let line = table
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(line.contains(" built "), "{table}");
    // A build log cut short is damage, like any recorded file.
    std::fs::write(dir.join("build.log"), b"x").unwrap();
    assert!(!store::is_complete(&dir));
    std::fs::write(dir.join("build.log"), b"  CC      kernel/sched/core.o\n").unwrap();
    let out = run(&["kernel", "clean", "6.12"]);
    assert!(out.contains(name), "{out}");
    assert!(!dir.exists());
    assert_eq!(store::complete_releases(&kernels).len(), 1);
}

/// A stand-in kernel source tree (test fixture): a Makefile with kbuild's
/// version head and targets. `tinyconfig` writes a small .config,
/// `olddefconfig` drops DEBUG_INFO_BTF when FAKE_DROP is set (as Kconfig
/// does with a pahole too old), `bzImage` "builds" by copying the images
/// of the real kernel in FAKE_REAL (make imports both from the
/// environment).
fn fake_tree(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Kconfig"), "mainmenu \"fixture\"\n").unwrap();
    std::fs::write(
        dir.join("Makefile"),
        "VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 999\nEXTRAVERSION =\n\
         tinyconfig:\n\t@printf '# CONFIG_SMP is not set\\nCONFIG_NR_CPUS=1\\n' > .config\n\
         olddefconfig:\n\t@if [ -n \"$(FAKE_DROP)\" ]; then sed -i 's/^CONFIG_DEBUG_INFO_BTF=y/# CONFIG_DEBUG_INFO_BTF is not set/' .config; fi\n\
         bzImage:\n\t@echo '  CC      kernel/sched/ext.o'\n\t@sleep 1\n\
         \t@if [ -n \"$(FAKE_FAIL)\" ]; then echo 'ext.c:1: error: fixture' >&2; exit 1; fi\n\
         \t@cp $(FAKE_REAL)/vmlinux vmlinux\n\t@mkdir -p arch/x86/boot\n\
         \t@cp $(FAKE_REAL)/vmlinuz arch/x86/boot/bzImage\n\
         \t@echo 'ffffffff81000000 T _text' > System.map\n",
    )
    .unwrap();
}

/// What a fake build needs, or `None` after a skip.
fn build_prerequisites(test: &str) -> Option<PathBuf> {
    if let Err(e) = ktstr::kernel::build::check_tools() {
        skip(test, Need::Tool, &e.to_string());
        return None;
    }
    match ktstr_tests::cached_kernel_dir() {
        Ok(d) => Some(d),
        Err(e) => {
            skip(test, Need::Kernel, &e);
            None
        }
    }
}

fn entries(kernels: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(kernels)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[test]
fn a_fragment_line_kconfig_drops_refuses_the_build_and_keeps_its_log() {
    let test = "a_fragment_line_kconfig_drops_refuses_the_build";
    let Some(real) = build_prerequisites(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("linux");
    fake_tree(&tree);
    let out = wait(
        ktstr(&tmp.path().join("cache"))
            .args(["kernel", "build"])
            .arg(&tree)
            .env("FAKE_REAL", &real)
            .env("FAKE_DROP", "1")
            .spawn()
            .unwrap(),
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("lacks `CONFIG_DEBUG_INFO_BTF=y`")
            && err.contains("`# CONFIG_DEBUG_INFO_BTF is not set`")
            && err.contains("pahole"),
        "{err}"
    );
    let kernels = tmp.path().join("cache/kernels");
    assert!(staging_dirs(&kernels).is_empty());
    assert!(entries(&kernels, "6.12.999").is_empty(), "no cache entry");
    let logs = entries(&kernels, ".failed-6.12.999+ktstr.");
    assert_eq!(logs.len(), 1, "{logs:?}");
    let log = std::fs::read_to_string(kernels.join(&logs[0])).unwrap();
    assert!(
        log.contains("### make -j") && log.contains("olddefconfig"),
        "{log}"
    );
    // `kernel clean` of that version takes the log too.
    let out = wait(
        ktstr(&tmp.path().join("cache"))
            .args(["kernel", "clean", "6.12"])
            .spawn()
            .unwrap(),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(entries(&kernels, ".failed-").is_empty());
}

#[test]
fn a_failing_make_names_the_kept_log_and_leaves_no_entry() {
    let test = "a_failing_make_names_the_kept_log";
    let Some(real) = build_prerequisites(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("linux");
    fake_tree(&tree);
    let out = wait(
        ktstr(&tmp.path().join("cache"))
            .args(["kernel", "build"])
            .arg(&tree)
            .env("FAKE_REAL", &real)
            .env("FAKE_FAIL", "1")
            .spawn()
            .unwrap(),
        Duration::from_secs(120),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("`make bzImage`") && err.contains("error: fixture"),
        "{err}"
    );
    let kernels = tmp.path().join("cache/kernels");
    let logs = entries(&kernels, ".failed-");
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(
        err.contains(&logs[0]),
        "the error names the kept log: {err}"
    );
    assert!(staging_dirs(&kernels).is_empty());
    assert!(entries(&kernels, "6.12.999").is_empty());
}

#[test]
fn two_builds_of_one_tree_at_once_take_turns_and_publish_one_built_entry() {
    let test = "two_builds_of_one_tree_at_once";
    let Some(real) = build_prerequisites(test) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let tree = tmp.path().join("linux");
    fake_tree(&tree);
    let frag = tmp.path().join("hz.config");
    std::fs::write(&frag, "CONFIG_HZ_100=y\n").unwrap();
    let start = || {
        ktstr(&cache)
            .args(["kernel", "build"])
            .arg(&tree)
            .arg("--config-fragment")
            .arg(&frag)
            .env("FAKE_REAL", &real)
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    let (a, b) = (
        wait(a, Duration::from_secs(300)),
        wait(b, Duration::from_secs(300)),
    );
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert!(b.status.success(), "{}", text(&b.stderr));
    let dir_of = |o: &Output| PathBuf::from(text(&o.stdout).lines().last().unwrap_or(""));
    assert_eq!(dir_of(&a), dir_of(&b));
    let dir = dir_of(&a);
    let name = store::release_name(&dir).unwrap();
    assert!(name.starts_with("6.12.999+ktstr."), "{name}");
    let marker = store::verify(&dir, Verify::Hashes).unwrap();
    assert_eq!(marker.origin, store::Origin::Built);
    assert_eq!(
        marker.source.as_deref(),
        Some(tree.canonicalize().unwrap().to_str().unwrap())
    );
    assert!(marker.files.contains_key("build.log"));
    let config = std::fs::read_to_string(dir.join("config")).unwrap();
    assert!(
        config.contains("CONFIG_HZ_100=y\n")
            && config.contains("CONFIG_SCHED_CLASS_EXT=y\n")
            && !config.contains("CONFIG_NR_CPUS=1\n"),
        "{config}"
    );
    let kernels = cache.join("kernels");
    assert!(staging_dirs(&kernels).is_empty());
    assert_eq!(entries(&kernels, "6.12.999").len(), 1);
    // Another fragment is another build.
    std::fs::write(&frag, "CONFIG_HZ_1000=y\n").unwrap();
    let c = wait(start(), Duration::from_secs(300));
    assert!(c.status.success(), "{}", text(&c.stderr));
    assert_ne!(dir_of(&c), dir);
    assert_eq!(entries(&kernels, "6.12.999").len(), 2);
}

#[test]
fn clean_sources_removes_unpacked_trees_by_version_but_not_one_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let sources = tmp.path().join("sources");
    // Stand-ins for unpacked linux-source packages: a Makefile head each.
    for (name, pkg, sub) in [
        (
            "linux-source-6.12_6.12.117-1",
            "linux-source-6.12",
            "6.12.117",
        ),
        ("linux-source-7.3_7.3.4-1", "linux-source-7.3", "7.3.4"),
    ] {
        let tree = sources.join(name).join(pkg);
        std::fs::create_dir_all(&tree).unwrap();
        let mut v = sub.split('.');
        std::fs::write(
            tree.join("Makefile"),
            format!(
                "VERSION = {}\nPATCHLEVEL = {}\nSUBLEVEL = {}\nEXTRAVERSION =\n",
                v.next().unwrap(),
                v.next().unwrap(),
                v.next().unwrap()
            ),
        )
        .unwrap();
        std::fs::write(sources.join(name).join(COMPLETE_MARKER), name).unwrap();
    }
    let run = |args: &[&str]| {
        let out = wait(
            ktstr(tmp.path()).args(args).spawn().unwrap(),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let out = run(&["kernel", "clean", "--sources", "6.12"]);
    assert!(out.contains("linux-source-6.12_6.12.117-1"), "{out}");
    assert!(!sources.join("linux-source-6.12_6.12.117-1").exists());
    assert!(sources.join("linux-source-7.3_7.3.4-1").exists());
    // One being unpacked (its lock held) stays.
    let held = store::ReleaseLock::acquire(&sources, "linux-source-7.3_7.3.4-1").unwrap();
    assert!(run(&["kernel", "clean", "--sources"]).contains("nothing to remove"));
    drop(held);
    run(&["kernel", "clean", "--sources"]);
    assert!(!sources.join("linux-source-7.3_7.3.4-1").exists());
}
