//! Where ktstr keeps what it downloads and builds: `~/.cache/ktstr`, or
//! `$KTSTR_CACHE_DIR`, or `$XDG_CACHE_HOME/ktstr`.

use std::path::PathBuf;

/// The cache directory could not be determined.
#[derive(Debug, thiserror::Error)]
#[error("cannot find a cache directory: set KTSTR_CACHE_DIR or HOME")]
pub struct NoCacheDir;

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
