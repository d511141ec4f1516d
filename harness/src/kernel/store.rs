//! The kernel cache: one directory per release under
//! `<cache>/kernels/<release>/` holding `vmlinuz`, `vmlinux` and `config`,
//! complete only once the marker file is written (last).

use std::path::{Path, PathBuf};

/// Written last into a release directory: its presence means complete.
pub const COMPLETE_MARKER: &str = ".complete";

/// Whether `dir` is a complete cached release.
pub fn is_complete(dir: &Path) -> bool {
    dir.join(COMPLETE_MARKER).is_file() && dir.join("vmlinux").is_file()
}

/// Every complete release directory under `kernels`, oldest version first.
pub fn complete_releases(kernels: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(kernels)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    dirs.retain(|d| is_complete(d));
    dirs.sort_by_key(|d| {
        super::fetch::version_key(d.file_name().and_then(|n| n.to_str()).unwrap_or_default())
    });
    dirs
}

/// The newest complete release under `kernels`.
pub fn newest_complete(kernels: &Path) -> Option<PathBuf> {
    complete_releases(kernels).pop()
}
