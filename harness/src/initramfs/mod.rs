//! The guest's initramfs: the agent as `/init`, busybox, the scheduler with
//! its shared libraries, the kernel config libbpf reads, and test files.
//!
//! The bulky part is built once per content and cached, uncompressed,
//! under `~/.cache/ktstr/initramfs/<sha256>.cpio` (under TCG the kernel's
//! gunzip of it cost about a second of every boot); each run appends a
//! small archive holding its job (the kernel unpacks concatenated archives
//! in order). The newest [`KEEP_CACHED`] archives are kept.

pub mod libs;

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use cpio::NewcBuilder;
use sha2::{Digest, Sha256};

use crate::agent::{AGENT, proto};

/// Where libraries of shipped programs go in the guest (given to them as
/// `LD_LIBRARY_PATH`).
pub const LIB_DIR: &str = "/ktstr/lib";
/// Where shipped programs go.
pub const BIN_DIR: &str = "/ktstr/bin";

/// What could not go into an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A host file could not be read.
    #[error("reading {path} for the initramfs: {err}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// A program's libraries could not be found.
    #[error(transparent)]
    Libs(#[from] libs::LibsError),
    /// Writing the archive or the cache failed.
    #[error("writing initramfs {path}: {err}")]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// Two different things want one path.
    #[error("initramfs path {0} is given twice, with different contents")]
    Conflict(String),
    /// A path under `/TRAILER!!!`: the name that ends a newc archive, so
    /// the kernel would stop unpacking there.
    #[error(
        "initramfs path {0} starts with {TRAILER}, the name that ends a cpio archive: the kernel would not unpack what follows it; choose another path"
    )]
    Reserved(String),
}

/// The name of the entry that ends a newc archive.
pub const TRAILER: &str = "TRAILER!!!";

/// Whether `path`'s first component is [`TRAILER`].
fn reserved(path: &str) -> bool {
    path.split('/').find(|s| !s.is_empty()) == Some(TRAILER)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

/// An initramfs being put together. Paths are absolute guest paths; parent
/// directories appear by themselves.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

fn read(path: &Path) -> Result<Vec<u8>, InitramfsError> {
    std::fs::read(path).map_err(|err| InitramfsError::Read {
        path: path.to_path_buf(),
        err,
    })
}

impl Initramfs {
    /// The skeleton every ktstr guest has: the agent as `/init`, mount
    /// points, `/dev/console` (the kernel opens it for init before devtmpfs
    /// is mounted).
    pub fn new() -> Initramfs {
        let mut i = Initramfs::bare();
        i.put(
            "/init",
            Entry::File {
                data: AGENT.to_vec(),
                mode: 0o755,
            },
        )
        .expect("fresh archive");
        i
    }

    /// The skeleton without an `/init`: mount points and `/dev/console`,
    /// for an initramfs whose init is not the agent (the nested tier's L1
    /// guest, [`crate::nested`]).
    pub fn bare() -> Initramfs {
        let mut i = Initramfs::default();
        for d in [
            "/dev", "/proc", "/sys", "/tmp", "/run", "/etc", BIN_DIR, LIB_DIR,
        ] {
            i.dir(d);
        }
        i.entries
            .insert("/dev/console".into(), Entry::CharDev { major: 5, minor: 1 });
        i
    }

    /// Add an empty directory (and its parents).
    pub fn directory(&mut self, path: &str) -> Result<(), InitramfsError> {
        if reserved(path) {
            return Err(InitramfsError::Reserved(path.to_string()));
        }
        self.dir(path);
        Ok(())
    }

    fn dir(&mut self, path: &str) {
        let mut p = String::new();
        for part in path.split('/').filter(|s| !s.is_empty()) {
            p.push('/');
            p.push_str(part);
            self.entries.entry(p.clone()).or_insert(Entry::Dir);
        }
    }

    fn put(&mut self, path: &str, entry: Entry) -> Result<(), InitramfsError> {
        if reserved(path) {
            return Err(InitramfsError::Reserved(path.to_string()));
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        match self.entries.get(path) {
            Some(old) if *old != entry => Err(InitramfsError::Conflict(path.to_string())),
            _ => {
                self.entries.insert(path.to_string(), entry);
                Ok(())
            }
        }
    }

    /// Add a file with these contents and permission bits.
    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<(), InitramfsError> {
        self.put(path, Entry::File { data, mode })
    }

    /// Add a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), InitramfsError> {
        self.put(path, Entry::Symlink(target.to_string()))
    }

    /// Static busybox as `/bin/busybox`, with `/bin/sh` pointing at it.
    pub fn busybox(&mut self, host: &Path) -> Result<(), InitramfsError> {
        self.file("/bin/busybox", read(host)?, 0o755)?;
        self.symlink("/bin/sh", "busybox")
    }

    /// A program as `BIN_DIR/<name>` with its loader at its own path and its
    /// libraries in [`LIB_DIR`]; returns its guest path.
    pub fn program(&mut self, host: &Path) -> Result<String, InitramfsError> {
        let name = host
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "program".into());
        let guest = format!("{BIN_DIR}/{name}");
        self.file(&guest, read(host)?, 0o755)?;
        self.libraries(host)?;
        Ok(guest)
    }

    /// The loader and shared libraries `host` needs (its DT_NEEDED
    /// closure), the loader at its own path and the libraries in
    /// [`LIB_DIR`]; the program itself goes wherever the caller puts it.
    pub fn libraries(&mut self, host: &Path) -> Result<(), InitramfsError> {
        let closure = libs::closure(host)?;
        if let Some((interp, file)) = &closure.interp {
            self.file(interp, read(file)?, 0o755)?;
        }
        for (soname, file) in &closure.libs {
            self.file(&format!("{LIB_DIR}/{soname}"), read(file)?, 0o755)?;
        }
        Ok(())
    }

    /// The kernel config where libbpf looks for it.
    pub fn kernel_config(&mut self, release: &str, host: &Path) -> Result<(), InitramfsError> {
        self.file(&format!("/boot/config-{release}"), read(host)?, 0o644)
    }

    /// SHA-256 over every path, kind, mode and content: the cache key.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for (path, e) in &self.entries {
            h.update(path.as_bytes());
            h.update([0]);
            match e {
                Entry::Dir => h.update(b"d"),
                Entry::File { data, mode } => {
                    h.update(format!("f{mode:o}:{}:", data.len()));
                    h.update(data);
                }
                Entry::Symlink(t) => h.update(format!("l{t}")),
                Entry::CharDev { major, minor } => h.update(format!("c{major}:{minor}")),
            }
            h.update([0]);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The archive, uncompressed (newc format).
    pub fn to_cpio(&self) -> Vec<u8> {
        self.write_cpio(Vec::new())
            .expect("writing to a Vec cannot fail")
    }

    /// Write the uncompressed archive to `out` (file contents are not
    /// copied on the way: an archive of a few hundred MiB stays cheap).
    pub fn write_cpio<W: Write>(&self, out: W) -> std::io::Result<W> {
        let entries = self.entries.iter().map(|(path, e)| {
            let name = path.trim_start_matches('/');
            let (b, data) = match e {
                Entry::Dir => (NewcBuilder::new(name).mode(0o040755), &[][..]),
                Entry::File { data, mode } => (
                    NewcBuilder::new(name).mode(0o100000 | mode),
                    data.as_slice(),
                ),
                Entry::Symlink(t) => (NewcBuilder::new(name).mode(0o120777), t.as_bytes()),
                Entry::CharDev { major, minor } => (
                    NewcBuilder::new(name)
                        .mode(0o020600)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    &[][..],
                ),
            };
            (b, Cursor::new(data))
        });
        cpio::write_cpio(entries, out)
    }

    /// The archive in ktstr's cache (built on first use).
    pub fn cached(&self) -> Result<PathBuf, InitramfsError> {
        let root = crate::cache::root().map_err(|e| InitramfsError::Write {
            path: PathBuf::from("~/.cache/ktstr"),
            err: std::io::Error::other(e),
        })?;
        self.cached_in(&root.join("initramfs"), KEEP_CACHED)
    }

    /// The uncompressed archive as `dir/<digest>.cpio`, written on first
    /// use (to a temporary name, synced and renamed: a concurrent or
    /// interrupted build never leaves a half archive under the final
    /// name); then only the newest `keep` archives in `dir` are kept.
    pub fn cached_in(&self, dir: &Path, keep: usize) -> Result<PathBuf, InitramfsError> {
        let digest = self.digest();
        let path = dir.join(format!("{digest}.cpio"));
        if path.is_file() {
            crate::cache::mark_used(&path);
            prune(dir, keep);
            return Ok(path);
        }
        let werr = |err| InitramfsError::Write {
            path: path.clone(),
            err,
        };
        std::fs::create_dir_all(dir).map_err(werr)?;
        let tmp = dir.join(format!(".{digest}.cpio.{}", std::process::id()));
        let written = std::fs::File::create(&tmp)
            .map(std::io::BufWriter::new)
            .and_then(|mut w| {
                self.write_cpio(&mut w)?;
                w.into_inner().map_err(|e| e.into_error())
            })
            .and_then(|f| f.sync_all());
        if let Err(err) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(werr(err));
        }
        prune(dir, keep);
        Ok(path)
    }
}

/// Archives kept in ktstr's initramfs cache: one per scheduler binary and
/// set of files, so a gauntlet over a few schedulers reuses its own.
pub const KEEP_CACHED: usize = 16;

/// Keep the newest `keep` archives in `dir` (by mtime; the one in use was
/// just touched), older `.cpio.gz` ones included.
fn prune(dir: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let archives = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !name.starts_with('.') && (name.ends_with(".cpio") || name.ends_with(".cpio.gz"))
        })
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    crate::cache::keep_newest(archives, keep, |p| std::fs::remove_file(p));
}

/// The per-run archive: the job at [`proto::JOB_PATH`].
pub fn job_archive(job: &proto::Job) -> Vec<u8> {
    let mut i = Initramfs::default();
    let json = serde_json::to_vec_pretty(job).expect("a job serializes");
    i.file(proto::JOB_PATH, json, 0o644).expect("fresh archive");
    i.to_cpio()
}

/// Write the cached base archive followed by the job archive to `out`.
pub fn write_with_job(base: &Path, job: &proto::Job, out: &Path) -> Result<(), InitramfsError> {
    let mut bytes = read(base)?;
    // The kernel takes an uncompressed archive only at a 4-byte-aligned
    // offset; zeros between archives are skipped.
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes.extend_from_slice(&job_archive(job));
    std::fs::write(out, bytes).map_err(|err| InitramfsError::Write {
        path: out.to_path_buf(),
        err,
    })
}

#[cfg(test)]
mod tests;
