//! Kernels: acquisition (`fetch`), the cache (`store`), resolving what a
//! user passes as `--kernel`, and checking its configuration.

pub mod build;
pub mod config;
pub mod fetch;
pub mod info;
pub mod modules;
pub mod sources;
pub mod store;
pub mod version;

use std::path::{Path, PathBuf};

use ktstr_walker::kernel::image::{ImageError, KernelImage};

use config::KernelConfig;

/// What `--kernel` could not be turned into.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Neither a path nor a cached release, nor a version to fetch.
    #[error(
        "kernel '{spec}' is neither a file or directory nor a kernel version (cached: {cached}); pass a bzImage, vmlinux or build directory, or a version such as 6.16.12 (fetched on first use, or ahead with `ktstr kernel fetch --release 6.16.12`)"
    )]
    NotFound {
        /// What the user passed.
        spec: String,
        /// Releases in the cache, comma-separated.
        cached: String,
    },
    /// A version that is not cached could not be fetched.
    #[error("kernel '{spec}' is not cached and fetching it failed: {source}")]
    Fetch {
        /// What the user passed.
        spec: String,
        /// Why the fetch failed.
        source: Box<fetch::FetchError>,
    },
    /// No sched_ext kernel of that version can be fetched, and building
    /// it from Debian's source package failed.
    #[error(
        "kernel '{spec}' cannot be fetched with sched_ext ({fetch}), and building it from Debian's linux-source package failed: {source}"
    )]
    Build {
        /// What the user passed.
        spec: String,
        /// Why no fetched kernel would do.
        fetch: String,
        /// Why the build failed.
        source: Box<build::BuildError>,
    },
    /// The image could not be used.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The config could not be read.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// Which kernel a `--kernel` value turned into, for the user to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A file or directory given by path.
    Path(PathBuf),
    /// A release already in the cache.
    Cached {
        /// The release.
        release: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// A release fetched now, on first use.
    Fetched {
        /// The release.
        release: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// Built now from Debian's source package, on first use (no kernel of
    /// that version with sched_ext can be fetched).
    Built {
        /// The cache entry's name (`6.12.117+ktstr.<key>`).
        release: String,
        /// Its directory.
        dir: PathBuf,
    },
}

impl std::fmt::Display for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resolved::Path(p) => write!(f, "{} (path)", p.display()),
            Resolved::Cached { release, dir } => {
                write!(f, "{release} (cached, {})", dir.display())
            }
            Resolved::Fetched { release, dir } => {
                write!(f, "{release} (fetched now, {})", dir.display())
            }
            Resolved::Built { release, dir } => {
                write!(f, "{release} (built now, {})", dir.display())
            }
        }
    }
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
    /// What the spec turned into.
    pub resolved: Resolved,
}

impl Kernel {
    /// Resolve `spec`: a path (release directory of the cache, kernel build
    /// directory, bzImage or vmlinux file), a cached release or version
    /// (`6.16` picks the newest cached 6.16.x), or a version that is not
    /// cached, fetched now (once). Logs which kernel it used.
    pub fn resolve(spec: &str) -> Result<Self, ResolveError> {
        let resolved = Self::locate(spec)?;
        tracing::info!("kernel: {resolved}");
        let (Resolved::Path(path)
        | Resolved::Cached { dir: path, .. }
        | Resolved::Fetched { dir: path, .. }
        | Resolved::Built { dir: path, .. }) = &resolved;
        // A cache release given by its directory counts as a use too.
        let in_cache = crate::cache::kernels_dir()
            .is_ok_and(|k| path.parent() == Some(k.as_path()) && store::is_complete(path));
        if !matches!(resolved, Resolved::Path(_)) || in_cache {
            store::touch_last_used(path);
        }
        let mut k = Self::from_path(path)?;
        k.resolved = resolved;
        Ok(k)
    }

    /// What `spec` names, fetching a version that is not cached.
    pub fn locate(spec: &str) -> Result<Resolved, ResolveError> {
        let path = Path::new(spec);
        if path.exists() {
            return Ok(Resolved::Path(path.to_path_buf()));
        }
        let kernels = crate::cache::kernels_dir().ok();
        if let Some(dir) = kernels
            .as_deref()
            .and_then(|k| fetch::cached_match(k, spec))
        {
            return Ok(Resolved::Cached {
                release: store::release_name(&dir).unwrap_or_default(),
                dir,
            });
        }
        if !fetch::looks_like_version(spec) {
            let cached: Vec<String> = kernels
                .as_deref()
                .map(store::complete_releases)
                .unwrap_or_default()
                .iter()
                .filter_map(|d| store::release_name(d))
                .collect();
            return Err(ResolveError::NotFound {
                spec: spec.to_string(),
                cached: if cached.is_empty() {
                    "none".to_string()
                } else {
                    cached.join(", ")
                },
            });
        }
        tracing::info!("kernel {spec} is not cached: fetching it (once)");
        let got = match fetch::fetch(&fetch::FetchOptions {
            release: Some(spec.to_string()),
            offline: false,
        }) {
            Ok(got) => got,
            // Debian ships no sched_ext kernel of this version (6.12's
            // images lack SCHED_CLASS_EXT): build one from its source.
            Err(e @ (fetch::FetchError::Refused { .. } | fetch::FetchError::NoPackage { .. })) => {
                return Self::build_version(spec, e);
            }
            Err(e) => {
                return Err(ResolveError::Fetch {
                    spec: spec.to_string(),
                    source: Box::new(e),
                });
            }
        };
        Ok(match got.from {
            fetch::FetchedFrom::Archive { .. } => Resolved::Fetched {
                release: got.release,
                dir: got.dir,
            },
            _ => Resolved::Cached {
                release: got.release,
                dir: got.dir,
            },
        })
    }

    /// Build `spec` from Debian's `linux-source-X.Y` (once: a second use
    /// is a cache hit in [`Kernel::locate`]).
    fn build_version(spec: &str, why: fetch::FetchError) -> Result<Resolved, ResolveError> {
        tracing::info!(
            "no sched_ext kernel {spec} to fetch ({why}); building it from Debian's linux-source package (once; minutes)"
        );
        let built = build::build(&build::BuildOptions::new(build::BuildSource::Version(
            spec.to_string(),
        )))
        .map_err(|e| ResolveError::Build {
            spec: spec.to_string(),
            fetch: why.to_string(),
            source: Box::new(e),
        })?;
        Ok(match built.build_time {
            Some(_) => Resolved::Built {
                release: built.name,
                dir: built.dir,
            },
            None => Resolved::Cached {
                release: built.name,
                dir: built.dir,
            },
        })
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
            resolved: Resolved::Path(path.to_path_buf()),
        })
    }
}
