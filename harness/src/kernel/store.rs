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

/// No kernel was given and none is fetched.
#[derive(Debug, thiserror::Error)]
#[error("no kernel given and none fetched under {0}: pass --kernel or run `ktstr kernel fetch`")]
pub struct NoFetchedKernel(pub String);

/// The newest complete release in ktstr's cache: the default kernel.
pub fn newest_fetched() -> Result<PathBuf, NoFetchedKernel> {
    let root = crate::cache::kernels_dir().map_err(|e| NoFetchedKernel(e.to_string()))?;
    newest_complete(&root).ok_or_else(|| NoFetchedKernel(root.display().to_string()))
}
