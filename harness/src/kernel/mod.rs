//! Kernels: acquisition (`fetch`), the cache (`store`), resolving what a
//! user passes as `--kernel`, and checking its configuration.

pub mod config;
pub mod fetch;
pub mod info;
pub mod modules;
pub mod sources;
pub mod store;

use std::path::{Path, PathBuf};

use ktstr_walker::kernel::image::{ImageError, KernelImage};

use config::KernelConfig;

/// What `--kernel` could not be turned into.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Neither a path nor a cached release.
    #[error(
        "kernel '{spec}' is neither a file or directory nor a cached release (cached: {cached}); pass a bzImage, vmlinux or build directory, or run `ktstr kernel fetch`"
    )]
    NotFound {
        /// What the user passed.
        spec: String,
        /// Releases in the cache, comma-separated.
        cached: String,
    },
    /// The image could not be used.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The config could not be read.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// A kernel ready for use: its vmlinux, and its config when known.
pub struct Kernel {
    /// The vmlinux ELF (a bzImage is decompressed).
    pub image: KernelImage,
    /// The build configuration, when one was found next to the image.
    pub config: Option<KernelConfig>,
    /// Where the config came from.
    pub config_path: Option<PathBuf>,
    /// The release, from the image's banner.
    pub release: Option<String>,
}

impl Kernel {
    /// Resolve `spec`: a release directory of the cache, a kernel build
    /// directory, a bzImage or vmlinux file, or a cached release name.
    pub fn resolve(spec: &str) -> Result<Self, ResolveError> {
        let path = Path::new(spec);
        if path.exists() {
            return Self::from_path(path);
        }
        let kernels = crate::cache::kernels_dir().ok();
        let cached = kernels
            .as_deref()
            .map(store::complete_releases)
            .unwrap_or_default();
        let hit = cached.iter().find(|d| {
            d.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == spec || n.strip_suffix("-cloud-amd64") == Some(spec))
        });
        match hit {
            Some(dir) => Self::from_path(dir),
            None => Err(ResolveError::NotFound {
                spec: spec.to_string(),
                cached: if cached.is_empty() {
                    "none".to_string()
                } else {
                    cached
                        .iter()
                        .filter_map(|d| d.file_name()?.to_str().map(str::to_string))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }),
        }
    }

    fn from_path(path: &Path) -> Result<Self, ResolveError> {
        let image = KernelImage::open(path)?;
        let release = image.release();
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        };
        let mut candidates = vec![dir.join("config"), dir.join(".config")];
        if let Some(r) = &release {
            candidates.push(dir.join(format!("config-{r}")));
        }
        let config_path = candidates.into_iter().find(|p| p.is_file());
        let config = config_path.as_deref().map(KernelConfig::open).transpose()?;
        Ok(Self {
            image,
            config,
            config_path,
            release,
        })
    }
}
