//! Finding a scheduler binary from what a user names: a path, or a
//! scheduler's name (`bpfland`, `scx_bpfland`) looked up on `PATH` and in
//! ktstr's tool cache, where `./setup.sh` installs scx_bpfland.

use std::path::{Path, PathBuf};

/// A scheduler that could not be found.
#[derive(Debug, thiserror::Error)]
#[error(
    "scheduler '{name}' not found: it is not a file, and {binary} is neither on PATH nor in {tools}; pass a path, or install it (./setup.sh installs scx_bpfland: cargo install --locked scx_bpfland --root {root})"
)]
pub struct NotFound {
    name: String,
    binary: String,
    tools: String,
    root: String,
}

/// Where cargo-installed tools live: `~/.cache/ktstr/tools` (`bin/` inside).
pub fn tools_root() -> Option<PathBuf> {
    crate::cache::root().ok().map(|r| r.join("tools"))
}

/// The binary for `name`.
pub fn resolve(name: &str) -> Result<PathBuf, NotFound> {
    let path = Path::new(name);
    if name.contains('/') || path.is_file() {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
    } else {
        let binary = if name.starts_with("scx_") {
            name.to_string()
        } else {
            format!("scx_{name}")
        };
        let cached = || {
            tools_root()
                .map(|t| t.join("bin").join(&binary))
                .filter(|p| p.is_file())
        };
        if let Some(hit) = crate::kernel::fetch::which(&binary).or_else(cached) {
            return Ok(hit);
        }
    }
    let tools = tools_root().unwrap_or_else(|| PathBuf::from("~/.cache/ktstr/tools"));
    Err(NotFound {
        name: name.to_string(),
        binary: if name.starts_with("scx_") || name.contains('/') {
            name.to_string()
        } else {
            format!("scx_{name}")
        },
        tools: tools.join("bin").display().to_string(),
        root: tools.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_names() {
        assert_eq!(resolve("/bin/true").unwrap(), PathBuf::from("/bin/true"));
        let e = resolve("/no/such/scx").unwrap_err().to_string();
        assert!(e.contains("'/no/such/scx' not found"), "{e}");
        let e = resolve("nonesuch").unwrap_err().to_string();
        assert!(e.contains("scx_nonesuch is neither on PATH"), "{e}");
    }
}
