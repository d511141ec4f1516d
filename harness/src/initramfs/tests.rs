use std::collections::BTreeMap;
use std::io::Read;

use super::*;

/// Every entry of a newc archive: name -> (mode, data), read back with the
/// cpio crate's reader.
fn entries(mut bytes: &[u8]) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    loop {
        let mut r = cpio::NewcReader::new(bytes).unwrap();
        if r.entry().is_trailer() {
            return out;
        }
        let (name, mode) = (r.entry().name().to_string(), r.entry().mode());
        let mut data = Vec::new();
        r.read_to_end(&mut data).unwrap();
        out.insert(name, (mode, data));
        bytes = r.finish().unwrap();
    }
}

#[test]
fn archive_holds_agent_program_libraries_and_files() {
    let mut i = Initramfs::new();
    let guest = i.program(Path::new("/bin/true")).unwrap();
    i.file("/etc/motd", b"hello".to_vec(), 0o644).unwrap();
    i.symlink("/bin/hi", "/etc/motd").unwrap();
    let e = entries(&i.to_cpio());

    assert_eq!(guest, "/ktstr/bin/true");
    assert_eq!(e["init"].1, AGENT);
    assert_eq!(e["init"].0, 0o100755);
    assert_eq!(e["ktstr/bin/true"].1, std::fs::read("/bin/true").unwrap());
    assert!(e.contains_key("ktstr/lib/libc.so.6"), "{:?}", e.keys());
    assert_eq!(e["dev/console"].0, 0o020600);
    assert_eq!(e["bin/hi"], (0o120777, b"/etc/motd".to_vec()));
    assert_eq!(e["etc/motd"], (0o100644, b"hello".to_vec()));
    // The loader sits where the program's PT_INTERP says.
    assert!(
        e.keys().any(|k| k.contains("ld-linux-x86-64.so.2")),
        "{:?}",
        e.keys()
    );
    // Parents come before children, as the kernel needs to create them.
    let names: Vec<&String> = e.keys().collect();
    let pos = |n: &str| names.iter().position(|k| *k == n).unwrap();
    assert!(pos("ktstr") < pos("ktstr/bin") && pos("ktstr/bin") < pos("ktstr/bin/true"));
}

#[test]
fn digest_follows_content() {
    let mut a = Initramfs::new();
    a.file("/x", b"1".to_vec(), 0o644).unwrap();
    let mut b = Initramfs::new();
    b.file("/x", b"1".to_vec(), 0o644).unwrap();
    assert_eq!(a.digest(), b.digest());
    b.file("/y", Vec::new(), 0o644).unwrap();
    assert_ne!(a.digest(), b.digest());
    let mut c = Initramfs::new();
    c.file("/x", b"1".to_vec(), 0o755).unwrap();
    assert_ne!(a.digest(), c.digest(), "mode is part of the key");
}

#[test]
fn conflicting_paths_are_refused() {
    let mut i = Initramfs::new();
    i.file("/x", b"1".to_vec(), 0o644).unwrap();
    i.file("/x", b"1".to_vec(), 0o644).unwrap();
    let e = i.file("/x", b"2".to_vec(), 0o644).unwrap_err();
    assert!(
        matches!(&e, InitramfsError::Conflict(p) if p == "/x"),
        "{e}"
    );
}

#[test]
fn cached_archive_is_the_cpio_and_job_follows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut i = Initramfs::new();
    i.file("/etc/motd", b"cached".to_vec(), 0o644).unwrap();
    let path = i.cached_in(&tmp.path().join("initramfs"), 4).unwrap();
    assert!(path.starts_with(tmp.path().join("initramfs")));
    let again = i.cached_in(&tmp.path().join("initramfs"), 4).unwrap();
    assert_eq!(path, again);
    let gz = std::fs::read(&path).unwrap();
    assert_eq!(gz, i.to_cpio());

    let job = proto::Job {
        version: proto::VERSION,
        scheduler: None,
        cgroups: vec![],
        steps: vec![],
        duration_ms: 5,
        shell: false,
    };
    let out = tmp.path().join("initrd");
    write_with_job(&path, &job, &out).unwrap();
    let all = std::fs::read(&out).unwrap();
    assert_eq!(&all[..gz.len()], &gz[..]);
    let job_at = gz.len().next_multiple_of(4);
    assert!(all[gz.len()..job_at].iter().all(|&b| b == 0));
    let e = entries(&all[job_at..]);
    let parsed: proto::Job = serde_json::from_slice(&e["ktstr/job.json"].1).unwrap();
    assert_eq!(parsed, job);
}

/// Found by the initramfs_cpio fuzz target: a directory named
/// `TRAILER!!!` ended the archive for every reader, and the kernel, so
/// the entries after it were silently lost.
#[test]
fn the_trailer_name_is_refused() {
    let mut i = Initramfs::default();
    for p in ["/TRAILER!!!", "//TRAILER!!!/x", "/TRAILER!!!/a/b"] {
        assert!(
            matches!(i.file(p, vec![1], 0o644), Err(InitramfsError::Reserved(_))),
            "{p}"
        );
        assert!(
            matches!(i.directory(p), Err(InitramfsError::Reserved(_))),
            "{p}"
        );
        assert!(
            matches!(i.symlink(p, "x"), Err(InitramfsError::Reserved(_))),
            "{p}"
        );
    }
    // Elsewhere the name is an ordinary one.
    i.file("/a/TRAILER!!!", vec![7], 0o644).unwrap();
    i.file("/z", vec![8], 0o644).unwrap();
    let e = entries(&i.to_cpio());
    assert_eq!(e["a/TRAILER!!!"].1, vec![7]);
    assert_eq!(e["z"].1, vec![8]);
}

#[test]
fn the_cache_keeps_the_newest_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now();
    for (i, name) in ["a.cpio.gz", "b.cpio", "c.cpio", "keep.txt"]
        .iter()
        .enumerate()
    {
        let p = tmp.path().join(name);
        std::fs::write(&p, b"x").unwrap();
        let f = std::fs::File::options().append(true).open(&p).unwrap();
        f.set_modified(now - std::time::Duration::from_secs(100 - i as u64))
            .unwrap();
    }
    let mut i = Initramfs::new();
    i.file("/etc/motd", b"new".to_vec(), 0o644).unwrap();
    let path = i.cached_in(tmp.path(), 2).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let new = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut want = vec!["c.cpio".to_string(), "keep.txt".into(), new];
    want.sort();
    assert_eq!(left, want);
}
