//! The kernel cache: one directory per release under
//! `<cache>/kernels/<release>/` holding `vmlinuz`, `vmlinux`, `config` (and
//! `System.map` when the package has one).
//!
//! Safety rules, in the order a writer follows them:
//! - one writer per release: [`ReleaseLock`] (flock on
//!   `kernels/.locks/<release>.lock`, released by the kernel when the
//!   process dies, so a killed fetch never leaves a stale lock);
//! - everything is written into a staging directory
//!   (`kernels/.staging-<release>-<pid>`), fsynced, then renamed into place:
//!   readers see no directory or a complete one;
//! - the marker ([`COMPLETE_MARKER`], JSON: [`Marker`]) is written last and
//!   records each file's size and SHA-256, so a hit is verified, not trusted;
//! - staging directories whose release lock is free belong to a dead
//!   process and are swept.

use crate::cache::io;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Written last into a release directory: its presence means complete.
pub const COMPLETE_MARKER: &str = ".complete";
/// Touched whenever a cached release is used (`ktstr kernel list`'s
/// "last used", `clean --keep`'s order).
pub const LAST_USED: &str = ".last-used";
/// Prefix of staging directories under `kernels/`.
pub const STAGING_PREFIX: &str = ".staging-";
/// Directory of the per-release lock files under `kernels/`.
pub const LOCKS_DIR: &str = ".locks";
/// Files a release directory must have.
pub const RELEASE_FILES: [&str; 3] = ["vmlinuz", "vmlinux", "config"];
/// Files a release directory may have (recorded in the marker when there).
pub const OPTIONAL_FILES: [&str; 2] = ["System.map", "build.log"];

/// What can go wrong in the cache itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] crate::cache::PathIo),
    /// A cached release does not match its marker.
    #[error("cached kernel {dir} is damaged: {reason}")]
    Damaged {
        /// The release directory.
        dir: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// No cache directory.
    #[error(transparent)]
    Cache(#[from] crate::cache::NoCacheDir),
}

/// Size and SHA-256 of one cached file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    /// Length in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

impl FileSum {
    /// Size and hash of `path` (streamed: vmlinux is ~60 MB).
    pub fn of(path: &Path) -> Result<Self, StoreError> {
        let mut f = File::open(path).map_err(io(path))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(io(path))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            h.update(&buf[..n]);
        }
        Ok(Self {
            size,
            sha256: format!("{:x}", h.finalize()),
        })
    }
}

/// Where a cached kernel came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Downloaded from the Debian archive.
    Fetched,
    /// Built from a source tree.
    Built,
    /// Copied in from a path.
    Path,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Fetched => "fetched",
            Origin::Built => "built",
            Origin::Path => "path",
        })
    }
}

/// The marker's content: what was cached, from where, and each file's sum.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Marker {
    /// Kernel release (`6.16.12+deb13-cloud-amd64`).
    pub release: String,
    /// Where it came from.
    pub origin: Origin,
    /// The Debian suite, for a fetched kernel.
    #[serde(default)]
    pub suite: Option<String>,
    /// The packages' version (`6.16.12-1~bpo13+1`), for a fetched kernel.
    #[serde(default)]
    pub package_version: Option<String>,
    /// The archive shipped no config: `config` is ktstr's partial one,
    /// holding only what the image's BTF proves.
    #[serde(default)]
    pub config_from_image: bool,
    /// The .deb files it was unpacked from (names under `apt/debs/`).
    #[serde(default)]
    pub debs: Vec<String>,
    /// For a built kernel: its source (`linux-source-6.12 6.12.117-1`, or
    /// the tree's path).
    #[serde(default)]
    pub source: Option<String>,
    /// For a built kernel: the release its banner says (`uname -r`).
    #[serde(default)]
    pub kernel_release: Option<String>,
    /// Every file of the release directory with its sum.
    pub files: BTreeMap<String, FileSum>,
}

impl Marker {
    /// Record the sums of `dir`'s files.
    pub fn record(dir: &Path, mut marker: Marker) -> Result<Marker, StoreError> {
        marker.files.clear();
        for name in RELEASE_FILES.iter().copied().chain(OPTIONAL_FILES) {
            let p = dir.join(name);
            if p.is_file() {
                marker.files.insert(name.to_string(), FileSum::of(&p)?);
            }
        }
        Ok(marker)
    }

    /// Read `dir`'s marker; `None` when absent or not in this format (a
    /// marker from before it recorded sums).
    pub fn read(dir: &Path) -> Option<Marker> {
        let text = std::fs::read_to_string(dir.join(COMPLETE_MARKER)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Write the marker into `dir` (temporary file, fsync, rename).
    pub fn write(&self, dir: &Path) -> Result<(), StoreError> {
        let tmp = dir.join(format!("{COMPLETE_MARKER}.tmp"));
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        write_synced(&tmp, text.as_bytes())?;
        let dst = dir.join(COMPLETE_MARKER);
        std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
        sync_dir(dir)
    }
}

/// How much of a cache hit to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// The marker and every recorded file's size (cheap: no reads).
    Sizes,
    /// Sizes and SHA-256 (reads every file: ~0.3 s for a release).
    Hashes,
}

/// Check `dir` against its marker.
pub fn verify(dir: &Path, depth: Verify) -> Result<Marker, StoreError> {
    let damaged = |reason: String| StoreError::Damaged {
        dir: dir.to_path_buf(),
        reason,
    };
    let marker =
        Marker::read(dir).ok_or_else(|| damaged(format!("no readable {COMPLETE_MARKER}")))?;
    for name in RELEASE_FILES {
        if !marker.files.contains_key(name) {
            return Err(damaged(format!("the marker records no {name}")));
        }
    }
    for (name, sum) in &marker.files {
        let p = dir.join(name);
        let len = std::fs::metadata(&p)
            .map_err(|e| damaged(format!("{name}: {e}")))?
            .len();
        if len != sum.size {
            return Err(damaged(format!(
                "{name} has {len} bytes, the marker says {}",
                sum.size
            )));
        }
        if depth == Verify::Hashes {
            let now = FileSum::of(&p)?;
            if now.sha256 != sum.sha256 {
                return Err(damaged(format!("{name}'s SHA-256 differs from the marker")));
            }
        }
    }
    Ok(marker)
}

/// Whether `dir` is a complete cached release (marker and sizes match).
pub fn is_complete(dir: &Path) -> bool {
    verify(dir, Verify::Sizes).is_ok()
}

/// A release directory whose marker predates recorded sums (a plain
/// release name): upgrade it in place, under its lock, once. Its files were
/// written before the marker, so they were complete when it was written.
pub fn upgrade_legacy_marker(dir: &Path) -> Result<bool, StoreError> {
    let text = match std::fs::read_to_string(dir.join(COMPLETE_MARKER)) {
        Ok(t) => t,
        Err(_) => return Ok(false),
    };
    if serde_json::from_str::<Marker>(&text).is_ok()
        || !RELEASE_FILES.iter().all(|f| dir.join(f).is_file())
    {
        return Ok(false);
    }
    let (Some(kernels), Some(release)) = (dir.parent(), release_name(dir)) else {
        return Ok(false);
    };
    let _lock = ReleaseLock::acquire(kernels, &release)?;
    if Marker::read(dir).is_some() {
        return Ok(true);
    }
    let marker = Marker::record(
        dir,
        Marker {
            release: text.trim().to_string(),
            origin: Origin::Fetched,
            suite: None,
            package_version: None,
            config_from_image: false,
            debs: Vec::new(),
            source: None,
            kernel_release: None,
            files: BTreeMap::new(),
        },
    )?;
    marker.write(dir)?;
    tracing::info!("recorded file sizes and hashes of {}", dir.display());
    Ok(true)
}

/// A release directory's name.
pub fn release_name(dir: &Path) -> Option<String> {
    dir.file_name()?.to_str().map(str::to_string)
}

/// Exclusive flock on one release's lock file, held until dropped (or the
/// process dies: the kernel drops flocks with the last descriptor).
#[derive(Debug)]
pub struct ReleaseLock {
    _file: File,
}

impl ReleaseLock {
    fn open(kernels: &Path, release: &str) -> Result<File, StoreError> {
        let dir = kernels.join(LOCKS_DIR);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{release}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(file)
    }

    /// Wait for the lock of `release`.
    pub fn acquire(kernels: &Path, release: &str) -> Result<Self, StoreError> {
        let file = Self::open(kernels, release)?;
        // UFCS: std's inherent File::lock needs Rust 1.89 (MSRV 1.88).
        if fs4::FileExt::try_lock(&file).is_err() {
            tracing::info!("waiting for another ktstr that is writing kernel {release}");
            fs4::FileExt::lock(&file).map_err(io(&kernels.join(LOCKS_DIR)))?;
        }
        Ok(Self { _file: file })
    }

    /// The lock of `release` if nobody holds it.
    pub fn try_acquire(kernels: &Path, release: &str) -> Result<Option<Self>, StoreError> {
        let file = Self::open(kernels, release)?;
        Ok(fs4::FileExt::try_lock(&file)
            .is_ok()
            .then_some(Self { _file: file }))
    }
}

/// The staging directory of `release` for this process.
pub fn staging_dir(kernels: &Path, release: &str) -> PathBuf {
    kernels.join(format!("{STAGING_PREFIX}{release}-{}", std::process::id()))
}

/// Remove staging directories left by dead processes: those of releases
/// whose lock is free (a live writer holds its release's lock while its
/// staging directory exists). Returns what was removed.
pub fn sweep_stale_staging(kernels: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(kernels) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(STAGING_PREFIX) else {
            continue;
        };
        // `<release>-<pid>`: the release is everything before the last '-'.
        let Some((release, _pid)) = rest.rsplit_once('-') else {
            continue;
        };
        if let Ok(Some(_lock)) = ReleaseLock::try_acquire(kernels, release)
            && std::fs::remove_dir_all(e.path()).is_ok()
        {
            tracing::info!("removed the stale staging directory {}", e.path().display());
            removed.push(e.path());
        }
    }
    removed
}

/// Write `bytes` to `path` and fsync it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))?;
    Ok(())
}

/// fsync every regular file directly in `dir`, then `dir` itself.
pub fn sync_tree(dir: &Path) -> Result<(), StoreError> {
    for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let p = e.path();
        if p.is_file() {
            File::open(&p).and_then(|f| f.sync_all()).map_err(io(&p))?;
        }
    }
    sync_dir(dir)
}

/// fsync a directory (its entries: a rename into it is durable).
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

/// Move `staged` to `dir` atomically, replacing a damaged `dir`. Caller
/// holds the release lock.
pub fn publish(staged: &Path, dir: &Path) -> Result<(), StoreError> {
    sync_tree(staged)?;
    if dir.exists() {
        retire(dir)?;
    }
    std::fs::rename(staged, dir).map_err(io(dir))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Remove a release directory so that no reader ever sees it half-deleted:
/// rename it out of the way first (it stops being a release at once).
pub fn retire(dir: &Path) -> Result<(), StoreError> {
    let Some(release) = release_name(dir) else {
        return Ok(());
    };
    // `.old` keeps it apart from this process's own staging directory.
    let trash = dir.with_file_name(format!(
        "{STAGING_PREFIX}{release}-{}.old",
        std::process::id()
    ));
    if trash.exists() {
        std::fs::remove_dir_all(&trash).map_err(io(&trash))?;
    }
    std::fs::rename(dir, &trash).map_err(io(dir))?;
    std::fs::remove_dir_all(&trash).map_err(io(&trash))?;
    Ok(())
}

/// Every complete release directory under `kernels`, oldest version first.
pub fn complete_releases(kernels: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(kernels)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    dirs.retain(|d| {
        release_name(d).is_some_and(|n| !n.starts_with('.'))
            // Markers written before sums were recorded are upgraded once;
            // in a cache ktstr cannot write, they keep their old meaning.
            && match upgrade_legacy_marker(d) {
                Ok(_) => is_complete(d),
                Err(_) => RELEASE_FILES.iter().all(|f| d.join(f).is_file()),
            }
    });
    dirs.sort_by_key(|d| super::version::version_key(&release_name(d).unwrap_or_default()));
    dirs
}

/// Every complete release fetched from the archive (not built), oldest
/// version first: what a fetch may answer from the cache.
pub fn fetched_releases(kernels: &Path) -> Vec<PathBuf> {
    complete_releases(kernels)
        .into_iter()
        .filter(|d| Marker::read(d).is_some_and(|m| m.origin == Origin::Fetched))
        .collect()
}

/// The newest complete release under `kernels`.
pub fn newest_complete(kernels: &Path) -> Option<PathBuf> {
    complete_releases(kernels).pop()
}

/// Record that `dir` was used now (best effort: a read-only cache still works).
pub fn touch_last_used(dir: &Path) {
    let _ = std::fs::write(dir.join(LAST_USED), b"");
}

/// When `dir` was last used (or cached, if never used).
pub fn last_used(dir: &Path) -> Option<SystemTime> {
    [LAST_USED, COMPLETE_MARKER].iter().find_map(|f| {
        std::fs::metadata(dir.join(f))
            .and_then(|m| m.modified())
            .ok()
    })
}

/// Total size of the regular files under `dir` (one level of subdirectories,
/// e.g. `kvm-modules/`).
pub fn dir_size(dir: &Path) -> u64 {
    fn walk(dir: &Path, depth: u32) -> u64 {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() && depth < 2 => walk(&e.path(), depth + 1),
                        Ok(m) if m.is_file() => m.len(),
                        _ => 0,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir, 0)
}

/// One cached kernel, as `ktstr kernel list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CachedKernel {
    /// Release name.
    pub release: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Where it came from (`fetched`, `built`, `path`).
    pub origin: Origin,
    /// The Debian suite, for a fetched kernel.
    pub suite: Option<String>,
    /// `CONFIG_SCHED_CLASS_EXT=y`.
    pub sched_ext: bool,
    /// `CONFIG_DEBUG_INFO_BTF=y`.
    pub btf: bool,
    /// Its config is ktstr's partial one (the archive shipped none).
    pub config_from_image: bool,
    /// Bytes on disk.
    pub size: u64,
    /// Seconds since the Unix epoch of its last use (or caching).
    pub last_used: Option<u64>,
}

/// Every complete cached kernel, oldest version first.
pub fn list(kernels: &Path) -> Vec<CachedKernel> {
    complete_releases(kernels)
        .into_iter()
        .filter_map(|dir| {
            let marker = Marker::read(&dir)?;
            let cfg = super::config::KernelConfig::open(&dir.join("config")).ok();
            let y = |o: &str| cfg.as_ref().and_then(|c| c.get(o)) == Some("y");
            Some(CachedKernel {
                release: marker.release.clone(),
                origin: marker.origin,
                suite: marker.suite.clone(),
                sched_ext: y("CONFIG_SCHED_CLASS_EXT"),
                btf: y("CONFIG_DEBUG_INFO_BTF"),
                config_from_image: marker.config_from_image,
                size: dir_size(&dir),
                last_used: last_used(&dir)
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                dir,
            })
        })
        .collect()
}

/// What `ktstr kernel clean` removes.
#[derive(Debug, Clone, Default)]
pub struct CleanOptions {
    /// Keep the N most recently used kernels.
    pub keep: Option<usize>,
    /// Remove only kernels matching this version (`6.16`, `6.16.12+deb13`).
    pub version: Option<String>,
}

/// Remove cached kernels (and their downloaded .debs, and stale staging
/// directories); a kernel another process is writing is skipped. Returns
/// the removed release directories.
pub fn clean(kernels: &Path, opts: &CleanOptions) -> Result<Vec<PathBuf>, StoreError> {
    sweep_stale_staging(kernels);
    let mut all: Vec<(Option<SystemTime>, PathBuf)> = std::fs::read_dir(kernels)
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.is_dir() && release_name(d).is_some_and(|n| !n.starts_with('.')))
        .filter(|d| {
            opts.version.as_deref().is_none_or(|v| {
                release_name(d).is_some_and(|n| {
                    super::version::spec_matches(&super::version::version_of(&n), v)
                })
            })
        })
        .map(|d| (last_used(&d), d))
        .collect();
    // Most recently used first; `--keep N` spares the first N complete
    // ones (a damaged or partial directory is never worth keeping).
    all.sort_by_key(|(used, d)| (!is_complete(d), std::cmp::Reverse(*used)));
    let complete = all.iter().filter(|(_, d)| is_complete(d)).count();
    let keep = opts.keep.unwrap_or(0).min(complete);
    let debs_dir = kernels
        .parent()
        .map(|p| p.join("apt").join("debs"))
        .unwrap_or_default();
    let mut removed = Vec::new();
    for (_, dir) in all.into_iter().skip(keep) {
        let Some(release) = release_name(&dir) else {
            continue;
        };
        let Some(_lock) = ReleaseLock::try_acquire(kernels, &release)? else {
            tracing::warn!("{release} is being written by another ktstr; not removed");
            continue;
        };
        let debs = Marker::read(&dir).map(|m| m.debs).unwrap_or_default();
        retire(&dir)?;
        for d in debs {
            let _ = std::fs::remove_file(debs_dir.join(d));
        }
        let _ = std::fs::remove_file(kernels.join(LOCKS_DIR).join(format!("{release}.lock")));
        removed.push(dir);
    }
    // Logs of failed builds (`kernel build`) of matching versions.
    for e in std::fs::read_dir(kernels).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(release) = name
            .strip_prefix(FAILED_LOG_PREFIX)
            .and_then(|n| n.strip_suffix(".log"))
            && opts.version.as_deref().is_none_or(|v| {
                super::version::spec_matches(&super::version::version_of(release), v)
            })
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(removed)
}

/// Prefix of the kept log of a failed build: `.failed-<name>.log`.
pub const FAILED_LOG_PREFIX: &str = ".failed-";

/// No kernel was given and none is fetched.
#[derive(Debug, thiserror::Error)]
#[error("no kernel given and none fetched under {0}: pass --kernel or run `ktstr kernel fetch`")]
pub struct NoFetchedKernel(pub String);

/// The newest complete release in ktstr's cache: the default kernel.
pub fn newest_fetched() -> Result<PathBuf, NoFetchedKernel> {
    let root = crate::cache::kernels_dir().map_err(|e| NoFetchedKernel(e.to_string()))?;
    newest_complete(&root).ok_or_else(|| NoFetchedKernel(root.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(kernels: &Path, name: &str) -> PathBuf {
        let dir = kernels.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in RELEASE_FILES {
            std::fs::write(dir.join(f), format!("{name} {f}")).unwrap();
        }
        let m = Marker::record(
            &dir,
            Marker {
                release: name.into(),
                origin: Origin::Fetched,
                suite: Some("trixie".into()),
                package_version: None,
                config_from_image: false,
                debs: vec![],
                source: None,
                kernel_release: None,
                files: BTreeMap::new(),
            },
        )
        .unwrap();
        m.write(&dir).unwrap();
        dir
    }

    #[test]
    fn a_hit_is_verified_by_size_and_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = release(tmp.path(), "6.16.12+deb13-cloud-amd64");
        verify(&dir, Verify::Hashes).unwrap();
        // Same size, other bytes: only the hash sees it.
        std::fs::write(dir.join("config"), b"6.16.12+deb13-cloud-amd64 cOnfig").unwrap();
        verify(&dir, Verify::Sizes).unwrap();
        let e = verify(&dir, Verify::Hashes).unwrap_err().to_string();
        assert!(e.contains("config's SHA-256"), "{e}");
        // A truncated file: the size check sees it, and the dir is no release.
        std::fs::write(dir.join("vmlinux"), b"short").unwrap();
        let e = verify(&dir, Verify::Sizes).unwrap_err().to_string();
        assert!(e.contains("vmlinux has 5 bytes"), "{e}");
        assert!(complete_releases(tmp.path()).is_empty());
    }

    #[test]
    fn a_legacy_marker_is_upgraded_once_and_a_missing_file_is_not_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = release(tmp.path(), "7.3.4+deb13-cloud-amd64");
        std::fs::write(dir.join(COMPLETE_MARKER), "7.3.4+deb13-cloud-amd64\n").unwrap();
        assert!(!is_complete(&dir));
        assert_eq!(complete_releases(tmp.path()), std::slice::from_ref(&dir));
        assert_eq!(
            verify(&dir, Verify::Hashes).unwrap().release,
            "7.3.4+deb13-cloud-amd64"
        );
        std::fs::remove_file(dir.join("vmlinuz")).unwrap();
        assert!(!is_complete(&dir));
    }

    #[test]
    fn stale_staging_is_swept_only_when_its_lock_is_free() {
        let tmp = tempfile::tempdir().unwrap();
        let k = tmp.path();
        let stale = k.join(format!("{STAGING_PREFIX}6.16.12+deb13-cloud-amd64-4242"));
        let busy = k.join(format!("{STAGING_PREFIX}7.3.4+deb13-cloud-amd64-4343"));
        std::fs::create_dir_all(stale.join("unpacked")).unwrap();
        std::fs::create_dir_all(&busy).unwrap();
        let held = ReleaseLock::acquire(k, "7.3.4+deb13-cloud-amd64").unwrap();
        assert_eq!(sweep_stale_staging(k), std::slice::from_ref(&stale));
        assert!(!stale.exists() && busy.exists());
        drop(held);
        assert_eq!(sweep_stale_staging(k), std::slice::from_ref(&busy));
    }

    #[test]
    fn publish_replaces_a_damaged_release_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let k = tmp.path();
        let dir = release(k, "6.19.14+deb13-cloud-amd64");
        std::fs::write(dir.join("vmlinux"), b"x").unwrap();
        let staged = staging_dir(k, "6.19.14+deb13-cloud-amd64");
        std::fs::create_dir_all(&staged).unwrap();
        for f in RELEASE_FILES {
            std::fs::write(staged.join(f), b"new").unwrap();
        }
        let m = Marker::record(&staged, verify_fail_marker()).unwrap();
        m.write(&staged).unwrap();
        publish(&staged, &dir).unwrap();
        verify(&dir, Verify::Hashes).unwrap();
        assert!(!staged.exists());
        let left: Vec<_> = std::fs::read_dir(k)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(STAGING_PREFIX))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn clean_keeps_the_most_recently_used_and_matches_versions() {
        let tmp = tempfile::tempdir().unwrap();
        let k = tmp.path().join("kernels");
        let names = [
            "6.16.12+deb13-cloud-amd64",
            "6.19.14+deb13-cloud-amd64",
            "7.3.4+deb13-cloud-amd64",
        ];
        for (i, n) in names.iter().enumerate() {
            let d = release(&k, n);
            let t =
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000 * (i as u64 + 1));
            touch_last_used(&d);
            File::options()
                .write(true)
                .open(d.join(LAST_USED))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        let listed = list(&k);
        assert_eq!(listed.len(), 3);
        assert_eq!(listed[0].release, names[0]);
        assert!(listed[0].size > 0 && listed[0].last_used == Some(1_000_000));
        let gone = clean(
            &k,
            &CleanOptions {
                keep: None,
                version: Some("6.19".into()),
            },
        )
        .unwrap();
        assert_eq!(gone, [k.join(names[1])]);
        // Keep 1: the most recently used (7.3.4) stays.
        let gone = clean(
            &k,
            &CleanOptions {
                keep: Some(1),
                version: None,
            },
        )
        .unwrap();
        assert_eq!(gone, [k.join(names[0])]);
        assert_eq!(complete_releases(&k), [k.join(names[2])]);
        let left: Vec<String> = std::fs::read_dir(&k)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            left.iter().all(|n| n == names[2] || n == LOCKS_DIR),
            "{left:?}"
        );
    }

    fn verify_fail_marker() -> Marker {
        Marker {
            release: "6.19.14+deb13-cloud-amd64".into(),
            origin: Origin::Fetched,
            suite: None,
            package_version: None,
            config_from_image: false,
            debs: vec![],
            source: None,
            kernel_release: None,
            files: BTreeMap::new(),
        }
    }
}
