//! Snapshots of a booted guest at the moment its agent waits for a job
//! ([`Msg::Ready`](crate::agent::proto::Msg::Ready)): up to then every VM
//! of the same kernel, initramfs and QEMU command line is the same, so
//! one boot is saved (QEMU's migration stream of a stopped guest) and
//! later VMs start from it (`-incoming`), skipping firmware and kernel
//! init: about 3 s of each TCG boot.
//!
//! A snapshot is a directory `<key>/` under the snapshot directory with
//! `state` (the stream), `agent.log` (what the agent had said: its hello
//! and ready) and `console.log` (the boot's console). The key hashes
//! everything that shapes the guest up to that moment: the caller's name
//! for the kernel and initramfs contents, QEMU's binary, and its command
//! line with the per-VM paths taken out. Directories are published by a
//! rename, one process saves at a time, and only the newest [`KEEP`] stay.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::vm::backend::{SnapshotSpec, VmError, io};
use crate::vm::qmp::{Qmp, QmpError};

/// Snapshots kept: about 100 MB each (the guest's touched pages), one per
/// kernel, initramfs (scheduler), topology and memory size in use; the
/// test suite uses about a dozen.
pub const KEEP: usize = 16;

const STATE: &str = "state";
const AGENT_LOG: &str = "agent.log";
const CONSOLE_LOG: &str = "console.log";
/// Held by the one process saving a snapshot.
const SAVE_LOCK: &str = ".save.lock";

/// The snapshot key for `spec` and QEMU's arguments `args` (without
/// `-incoming`), where `vm_paths` (the VM's directory, its RAM files) are
/// replaced by placeholders: they differ for every VM.
pub fn key(spec: &SnapshotSpec, qemu: &Path, args: &[OsString], vm_paths: &[&Path]) -> String {
    let mut h = Sha256::new();
    h.update(spec.id.as_bytes());
    h.update(b"\0");
    h.update(file_identity(qemu).as_bytes());
    for a in args {
        let mut a = a.to_string_lossy().into_owned();
        for (i, p) in vm_paths.iter().enumerate() {
            a = a.replace(&*p.to_string_lossy(), &format!("<vm{i}>"));
        }
        h.update(b"\0");
        h.update(a.as_bytes());
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A file as path, length and modification time: what changes when it is
/// replaced or rebuilt.
pub fn file_identity(path: &Path) -> String {
    let meta = std::fs::metadata(path).ok();
    let mtime = meta
        .as_ref()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{} {} {mtime}", path.display(), meta.map_or(0, |m| m.len()))
}

/// A saved snapshot.
#[derive(Debug)]
pub struct Stored {
    dir: PathBuf,
}

impl Stored {
    /// The snapshot under `key`, if one was saved (and marked as used, for
    /// the pruning).
    pub fn find(spec: &SnapshotSpec, key: &str) -> Option<Stored> {
        let dir = spec.dir.join(key);
        let state = dir.join(STATE);
        if !state.is_file() || !dir.join(AGENT_LOG).is_file() {
            return None;
        }
        crate::cache::mark_used(&state);
        Some(Stored { dir })
    }

    /// Where it is.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The migration stream, for `-incoming fd:`.
    pub fn open_state(&self) -> Result<File, VmError> {
        File::open(self.dir.join(STATE)).map_err(io(format!(
            "opening the snapshot {}",
            self.dir.join(STATE).display()
        )))
    }

    /// What the agent had said when the snapshot was taken.
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join(AGENT_LOG)
    }

    /// The boot's console up to the snapshot.
    pub fn console(&self) -> String {
        super::read_tail(&self.dir.join(CONSOLE_LOG))
    }

    /// Remove it (QEMU could not load it).
    pub fn discard(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The right to save the snapshot under a key: held by one process at a
/// time (others boot without saving; the next VM tries again).
pub struct Saver {
    lock: File,
    root: PathBuf,
    key: String,
}

impl Saver {
    /// The right to save `key`, unless another process is saving one.
    pub fn try_new(spec: &SnapshotSpec, key: &str) -> Option<Saver> {
        std::fs::create_dir_all(&spec.dir).ok()?;
        let lock = File::create(spec.dir.join(SAVE_LOCK)).ok()?;
        // SAFETY: flock on an fd we own; released when it closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return None;
        }
        Some(Saver {
            lock,
            root: spec.dir.clone(),
            key: key.to_string(),
        })
    }

    /// Stop the guest, write its migration stream and the logs so far
    /// (`agent_log`, `console`) and publish the snapshot; `bound` limits
    /// the migration. The guest stays stopped: the caller resumes it,
    /// whatever this returned.
    pub fn save(
        self,
        qmp: &mut Qmp,
        agent_log: &Path,
        console: &str,
        bound: Duration,
    ) -> Result<PathBuf, VmError> {
        let tmp = self
            .root
            .join(format!(".{}.{}", self.key, std::process::id()));
        let published = self
            .write(qmp, &tmp, agent_log, console, bound)
            .and_then(|()| {
                let dir = self.root.join(&self.key);
                std::fs::rename(&tmp, &dir).map_err(io(format!("publishing {}", dir.display())))?;
                Ok(dir)
            });
        if published.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        prune(&self.root, KEEP);
        drop(self.lock);
        published
    }

    fn write(
        &self,
        qmp: &mut Qmp,
        tmp: &Path,
        agent_log: &Path,
        console: &str,
        bound: Duration,
    ) -> Result<(), VmError> {
        let _ = std::fs::remove_dir_all(tmp);
        std::fs::create_dir_all(tmp).map_err(io(format!("creating {}", tmp.display())))?;
        qmp.stop()?;
        // QEMU's `completed` says the stream left QEMU, not that `cat` has
        // written it all: the state gets its name only after `cat` ends.
        let (part, state) = (tmp.join("state.part"), tmp.join(STATE));
        let uri = format!(
            "exec:cat > {} && mv {} {}",
            shell_quote(&part),
            shell_quote(&part),
            shell_quote(&state)
        );
        qmp.execute("migrate", json!({ "uri": uri }))?;
        let deadline = Instant::now() + bound;
        loop {
            let info = qmp.execute("query-migrate", json!({}))?;
            match info.get("status").and_then(Value::as_str) {
                Some("completed") => break,
                Some("failed" | "cancelled") => {
                    return Err(QmpError::Command {
                        cmd: "migrate".into(),
                        error: info.to_string(),
                    }
                    .into());
                }
                _ if Instant::now() >= deadline => {
                    let _ = qmp.execute("migrate_cancel", json!({}));
                    return Err(QmpError::Timeout {
                        cmd: "migrate".into(),
                        after: bound,
                    }
                    .into());
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        while !state.is_file() {
            if Instant::now() >= deadline {
                return Err(VmError::Io {
                    what: format!("writing {}", state.display()),
                    err: std::io::Error::other("the migration stream was not written whole"),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::copy(agent_log, tmp.join(AGENT_LOG))
            .map_err(io("copying the agent log into the snapshot"))?;
        std::fs::write(tmp.join(CONSOLE_LOG), console)
            .map_err(io("writing the console into the snapshot"))?;
        Ok(())
    }
}

/// `path` as one word for `sh`.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

/// Keep the newest `keep` snapshots in `root` (by their state's mtime),
/// and remove saves that dead processes left.
fn prune(root: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    let paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    for p in &paths {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let pid = name.strip_prefix('.').and_then(|n| n.rsplit('.').next());
        if pid.is_some_and(|pid| {
            pid.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{pid}")).exists()
        }) {
            let _ = std::fs::remove_dir_all(p);
        }
    }
    let all = paths
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
        })
        .filter_map(|p| {
            let t = std::fs::metadata(p.join(STATE)).ok()?.modified().ok()?;
            Some((t, p))
        })
        .collect();
    crate::cache::keep_newest(all, keep, |p| std::fs::remove_dir_all(p));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> SnapshotSpec {
        SnapshotSpec {
            dir: dir.to_path_buf(),
            id: "kernel k initrd i".into(),
        }
    }

    #[test]
    fn keys_ignore_per_vm_paths_and_follow_everything_else() {
        let s = spec(Path::new("/nowhere"));
        let qemu = Path::new("/bin/sh");
        let args = |dir: &str, smp: &str| -> Vec<OsString> {
            vec![
                "-smp".into(),
                smp.into(),
                format!("file:{dir}/agent.log").into(),
                format!("mem-path=/dev/shm/{dir}-ram").into(),
            ]
        };
        let k1 = key(&s, qemu, &args("/tmp/a", "2"), &[Path::new("/tmp/a")]);
        let k2 = key(&s, qemu, &args("/tmp/b", "2"), &[Path::new("/tmp/b")]);
        assert_eq!(k1, k2, "the VM's own paths are not part of the key");
        let k3 = key(&s, qemu, &args("/tmp/a", "4"), &[Path::new("/tmp/a")]);
        assert_ne!(k1, k3, "another topology is another snapshot");
        let other = SnapshotSpec {
            id: "kernel k2 initrd i".into(),
            ..s
        };
        let k4 = key(&other, qemu, &args("/tmp/a", "2"), &[Path::new("/tmp/a")]);
        assert_ne!(k1, k4, "another kernel is another snapshot");
        assert!(k1.len() == 32 && k1.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn one_process_saves_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let s = spec(tmp.path());
        let first = Saver::try_new(&s, "a").expect("nobody holds the lock");
        assert!(Saver::try_new(&s, "b").is_none(), "a second saver waits");
        drop(first);
        assert!(Saver::try_new(&s, "b").is_some());
    }

    #[test]
    fn only_complete_snapshots_are_found_and_the_newest_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let s = spec(tmp.path());
        let make = |k: &str, age_s: u64| {
            let d = tmp.path().join(k);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(AGENT_LOG), "").unwrap();
            let f = File::create(d.join(STATE)).unwrap();
            f.set_modified(SystemTime::now() - Duration::from_secs(age_s))
                .unwrap();
        };
        for (i, k) in ["k0", "k1", "k2", "k3"].iter().enumerate() {
            make(k, 100 - i as u64);
        }
        std::fs::create_dir_all(tmp.path().join("half")).unwrap();
        std::fs::write(tmp.path().join("half").join(STATE), "").unwrap();
        assert!(
            Stored::find(&s, "half").is_none(),
            "no agent log: not whole"
        );
        assert!(Stored::find(&s, "none").is_none());
        // Using the oldest makes it the newest.
        assert!(Stored::find(&s, "k0").is_some());
        std::fs::remove_dir_all(tmp.path().join("half")).unwrap();
        // A save a killed process left behind.
        let dead = tmp.path().join(".k9.4000000000");
        std::fs::create_dir_all(&dead).unwrap();
        prune(tmp.path(), 2);
        assert!(!dead.exists());
        let left: Vec<bool> = ["k0", "k1", "k2", "k3"]
            .iter()
            .map(|k| tmp.path().join(k).exists())
            .collect();
        assert_eq!(left, [true, false, false, true]);
    }

    #[test]
    fn quoted_paths_survive_the_shell() {
        let p = Path::new("/tmp/it's here");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote(p)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "/tmp/it's here");
    }
}
