//! Where ktstr keeps what it downloads and builds: `~/.cache/ktstr`, or
//! `$KTSTR_CACHE_DIR`, or `$XDG_CACHE_HOME/ktstr`.

use std::path::{Path, PathBuf};

/// The cache directory could not be determined.
#[derive(Debug, thiserror::Error)]
#[error("cannot find a cache directory: set KTSTR_CACHE_DIR or HOME")]
pub struct NoCacheDir;

/// A file operation on `path` failed: the error every cache and kernel
/// module wraps.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct PathIo {
    /// The path.
    pub path: PathBuf,
    /// What the OS said.
    #[source]
    pub source: std::io::Error,
}

/// `map_err(io(path))`: an I/O error on `path`.
pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PathIo + '_ {
    move |source| PathIo {
        path: path.to_path_buf(),
        source,
    }
}

/// Mark a cached file as just used: its mtime orders the pruning of the
/// caches that keep only their newest entries.
pub fn mark_used(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Remove all but the newest `keep` of `entries` (each with the mtime
/// that orders it) by `remove`: the pruning of caches that keep only
/// their newest entries.
pub fn keep_newest(
    mut entries: Vec<(std::time::SystemTime, PathBuf)>,
    keep: usize,
    remove: impl Fn(&Path) -> std::io::Result<()>,
) {
    entries.sort();
    let n = entries.len().saturating_sub(keep);
    for (_, p) in entries.into_iter().take(n) {
        let _ = remove(&p);
    }
}

/// Root of ktstr's cache.
pub fn root() -> Result<PathBuf, NoCacheDir> {
    if let Some(d) = std::env::var_os("KTSTR_CACHE_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("ktstr"));
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache").join("ktstr"))
        .ok_or(NoCacheDir)
}

/// Directory holding one subdirectory per fetched kernel release.
pub fn kernels_dir() -> Result<PathBuf, NoCacheDir> {
    Ok(root()?.join("kernels"))
}
