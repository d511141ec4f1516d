//! `ktstr kernel build`: a harness-sized kernel from a source tree or from
//! Debian's `linux-source-X.Y` package, cached like a fetched one.
//!
//! The config is `make tinyconfig`, then [`HARNESS_CONFIG`] and the user's
//! fragments merged over it, then `make olddefconfig`; every fragment line
//! must survive that (Kconfig silently drops an option whose dependencies
//! are not met: BTF without a new enough pahole), else the build is refused
//! with the line. The result goes to `<cache>/kernels/<version>+ktstr.<key>`
//! where the key hashes the source's identity and the merged fragment, with
//! `vmlinux`, `vmlinuz` (the bzImage), `config`, `System.map`, `build.log`
//! and the store's marker (origin `built`), published as fetches are (lock,
//! staging directory, atomic rename).

pub mod kconfig;
mod make;
pub mod source;

use crate::cache::io;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ktstr_walker::kernel::image::{ImageError, KernelImage};
use sha2::{Digest, Sha256};

use super::fetch::{FetchError, which};
use super::store::{self, Marker, Origin, ReleaseLock, StoreError, Verify};
use kconfig::{Dropped, Setting};
pub use source::SourceTree;

/// ktstr's own config fragment (its header says what it was measured on).
pub const HARNESS_CONFIG: &str = include_str!("../harness.config");

/// What the build programs are, and the Debian package that has each.
const TOOLS: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("pahole", "dwarves"),
];
/// objtool links libelf: its header must be there.
const LIBELF_HEADER: &str = "/usr/include/gelf.h";

/// What can go wrong while building a kernel.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A build tool is missing.
    #[error(
        "`{tool}` not found: building a kernel needs it (`apt-get install {package}`, or run ./setup.sh)"
    )]
    MissingTool {
        /// The program or file.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// The path is no kernel source tree.
    #[error("{0} is not a kernel source tree (no Makefile and Kconfig at its top)")]
    NotASourceTree(PathBuf),
    /// The version names no source package.
    #[error(
        "cannot tell which linux-source package holds '{0}': give a version such as 6.12, or a source tree path"
    )]
    NoSourcePackage(String),
    /// The source package holds another version than asked.
    #[error(
        "{package} holds Linux {have}, not {spec}: ask for {have} or build from a source tree of {spec}"
    )]
    VersionMismatch {
        /// What was asked for.
        spec: String,
        /// The package.
        package: String,
        /// The version its Makefile says.
        have: String,
    },
    /// Downloading the source failed.
    #[error("cannot download the kernel source: {0}")]
    Fetch(Box<FetchError>),
    /// Offline and nothing cached.
    #[error("{0}")]
    Offline(String),
    /// The source package could not be unpacked.
    #[error("cannot unpack {path}: {reason}")]
    Unpack {
        /// The package file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A make step failed.
    #[error("`make {step}` in {tree} failed ({status}); full log: {log}\n{tail}")]
    Make {
        /// The target.
        step: String,
        /// The source tree.
        tree: PathBuf,
        /// Exit status.
        status: String,
        /// The build log.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// Kconfig dropped options a fragment asked for.
    #[error(
        "the kernel config lacks `{wanted}` (asked for by {origin}; the result has `{found}`){more}: {hint}",
        wanted = .dropped[0].wanted.line(),
        origin = .dropped[0].wanted.origin,
        found = .dropped[0].found,
        more = if .dropped.len() > 1 { format!(" and {} more ({})", .dropped.len() - 1, .dropped[1..].iter().map(|d| d.wanted.line()).collect::<Vec<_>>().join(", ")) } else { String::new() },
    )]
    ConfigDropped {
        /// Every line not kept (at least one).
        dropped: Vec<Dropped>,
        /// What usually causes it.
        hint: String,
    },
    /// The build produced no usable image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] crate::cache::PathIo),
    /// The cache.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No cache directory.
    #[error(transparent)]
    Cache(#[from] crate::cache::NoCacheDir),
}

impl BuildError {
    fn fetch(e: FetchError) -> Self {
        Self::Fetch(Box::new(e))
    }
}

/// Where the source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildSource {
    /// A kernel source tree (built in place: make is incremental there).
    Tree(PathBuf),
    /// A version (`6.12`): Debian's `linux-source-6.12`.
    Version(String),
}

/// Options of `ktstr kernel build`.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The source.
    pub source: BuildSource,
    /// Extra config fragments, merged after ktstr's own, in order.
    pub fragments: Vec<PathBuf>,
    /// Parallel jobs (default: every core).
    pub jobs: Option<usize>,
    /// Rebuild even when the cache has this build.
    pub force: bool,
    /// Do not contact the archive (the source package must be cached).
    pub offline: bool,
}

impl BuildOptions {
    /// Build `source` with ktstr's config only.
    pub fn new(source: BuildSource) -> Self {
        Self {
            source,
            fragments: Vec::new(),
            jobs: None,
            force: false,
            offline: false,
        }
    }
}

/// A built kernel in the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    /// Its cache directory.
    pub dir: PathBuf,
    /// The cache entry's name (`6.12.117+ktstr.<key>`).
    pub name: String,
    /// Built now (with its wall time), or found in the cache.
    pub build_time: Option<Duration>,
}

/// Build a kernel (or find the same build in the cache).
pub fn build(opts: &BuildOptions) -> Result<Built, BuildError> {
    check_tools()?;
    let mut settings = kconfig::parse_fragment(HARNESS_CONFIG, "ktstr's harness.config");
    for f in &opts.fragments {
        let text = std::fs::read_to_string(f).map_err(io(f))?;
        settings.extend(kconfig::parse_fragment(&text, &f.display().to_string()));
    }
    let tree = match &opts.source {
        BuildSource::Tree(p) => source::user_tree(p)?,
        BuildSource::Version(v) => {
            let package =
                source::package_for(v).ok_or_else(|| BuildError::NoSourcePackage(v.clone()))?;
            let tree = source::debian_tree(&package, opts.offline)?;
            let have = kernel_version(&tree.dir)?;
            if !super::version::spec_matches(&have, v) {
                return Err(BuildError::VersionMismatch {
                    spec: v.clone(),
                    package,
                    have,
                });
            }
            tree
        }
    };
    let name = format!(
        "{}+ktstr.{}",
        kernel_version(&tree.dir)?,
        build_key(&tree, &settings)
    );
    let kernels = crate::cache::kernels_dir()?;
    std::fs::create_dir_all(&kernels).map_err(io(&kernels))?;
    store::sweep_stale_staging(&kernels);
    let dir = kernels.join(&name);
    let hit = |dir: &Path| tree.from_package && !opts.force && store::is_complete(dir);
    if hit(&dir) {
        return Ok(cached(dir, name));
    }
    // One build per tree at a time: two would write the same objects. The
    // entry's own lock is held throughout, as it marks the staging
    // directory as alive (others sweep those whose lock is free).
    let _tree_lock = ReleaseLock::acquire(&kernels, &tree_lock_name(&tree.dir))?;
    let _lock = ReleaseLock::acquire(&kernels, &name)?;
    if hit(&dir) {
        return Ok(cached(dir, name));
    }
    let staging = store::staging_dir(&kernels, &name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let start = Instant::now();
    let result = build_into(&tree, &settings, opts, &staging, &name)
        .and_then(|()| Ok(store::publish(&staging, &dir)?));
    if let Err(e) = result {
        // Keep the log, and point the error at where it is kept.
        let kept = kernels.join(format!("{}{name}.log", store::FAILED_LOG_PREFIX));
        let moved = std::fs::rename(staging.join(BUILD_LOG), &kept).is_ok();
        let _ = std::fs::remove_dir_all(&staging);
        return Err(match e {
            BuildError::Make {
                step,
                tree,
                status,
                tail,
                ..
            } if moved => BuildError::Make {
                step,
                tree,
                status,
                log: kept,
                tail,
            },
            e => e,
        });
    }
    let took = start.elapsed();
    tracing::info!(
        "built {name} in {:.0} s ({} jobs)",
        took.as_secs_f64(),
        jobs(opts)
    );
    store::touch_last_used(&dir);
    Ok(Built {
        dir,
        name,
        build_time: Some(took),
    })
}

/// The build log's name in a cache entry.
pub const BUILD_LOG: &str = "build.log";

fn cached(dir: PathBuf, name: String) -> Built {
    tracing::info!("kernel {name} is already built (cached)");
    store::touch_last_used(&dir);
    Built {
        dir,
        name,
        build_time: None,
    }
}

fn jobs(opts: &BuildOptions) -> usize {
    opts.jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// Configure and build in `tree`, leaving the cache entry's files in `staging`.
fn build_into(
    tree: &SourceTree,
    settings: &[Setting],
    opts: &BuildOptions,
    staging: &Path,
    name: &str,
) -> Result<(), BuildError> {
    let log = staging.join(BUILD_LOG);
    let mut make = make::Make::new(&tree.dir, &log, jobs(opts))?;
    tracing::info!(
        "building {name} from {} ({} jobs; log: {})",
        tree.identity,
        jobs(opts),
        log.display()
    );
    make.run("tinyconfig", false, None)?;
    let dotconfig = tree.dir.join(".config");
    let tiny = std::fs::read_to_string(&dotconfig).map_err(io(&dotconfig))?;
    store::write_synced(&dotconfig, kconfig::merge(&tiny, settings).as_bytes())?;
    make.run("olddefconfig", false, None)?;
    let result = std::fs::read_to_string(&dotconfig).map_err(io(&dotconfig))?;
    let dropped = kconfig::dropped(&result, settings);
    if !dropped.is_empty() {
        let hint = dropped_hint(&dropped);
        return Err(BuildError::ConfigDropped { dropped, hint });
    }
    make.run("bzImage", true, previous_steps(name))?;
    for (from, to) in [
        ("vmlinux", "vmlinux"),
        ("arch/x86/boot/bzImage", "vmlinuz"),
        (".config", "config"),
        ("System.map", "System.map"),
    ] {
        let src = tree.dir.join(from);
        let dst = staging.join(to);
        std::fs::copy(&src, &dst).map_err(io(&src))?;
    }
    // What the harness reads of it must be there: a PVH entry and BTF
    // that knows sched_ext.
    let image = KernelImage::open(staging.join("vmlinux"))?;
    super::fetch::config_from_btf(name, image.elf_bytes()).map_err(|e| {
        BuildError::ConfigDropped {
            dropped: vec![Dropped {
                wanted: Setting {
                    option: "CONFIG_DEBUG_INFO_BTF".into(),
                    value: Some("y".into()),
                    origin: "ktstr's harness.config".into(),
                },
                found: e.to_string(),
            }],
            hint: "the built vmlinux has no usable BTF".into(),
        }
    })?;
    drop(make);
    let marker = Marker::record(
        staging,
        Marker {
            release: name.to_string(),
            origin: Origin::Built,
            suite: None,
            package_version: None,
            config_from_image: false,
            debs: Vec::new(),
            source: Some(tree.identity.clone()),
            kernel_release: image.release(),
            files: BTreeMap::new(),
        },
    )?;
    marker.write(staging)?;
    Ok(())
}

/// How many make steps a cached build of the same kernel version took:
/// the total of the progress display.
fn previous_steps(name: &str) -> Option<u64> {
    let version = name.split_once('+').map_or(name, |(v, _)| v);
    let kernels = crate::cache::kernels_dir().ok()?;
    std::fs::read_dir(&kernels)
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&format!("{version}+")))
        })
        .find_map(|e| make::steps_in_log(&e.path().join(BUILD_LOG)))
}

/// Why Kconfig usually drops one of these.
fn dropped_hint(dropped: &[Dropped]) -> String {
    if dropped
        .iter()
        .any(|d| d.wanted.option == "CONFIG_DEBUG_INFO_BTF")
    {
        let pahole = super::fetch::run(
            std::process::Command::new("pahole").arg("--version"),
            Duration::from_secs(10),
        )
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "not runnable".into());
        return format!(
            "DEBUG_INFO_BTF needs pahole >= 1.16 and DEBUG_INFO (pahole here: {pahole})"
        );
    }
    "their Kconfig dependencies are not met in this source (`make menuconfig`, `/` and the option's name shows which)".into()
}

/// Every tool the build needs is there.
pub fn check_tools() -> Result<(), BuildError> {
    for &(tool, package) in TOOLS {
        if which(tool).is_none() {
            return Err(BuildError::MissingTool { tool, package });
        }
    }
    if !Path::new(LIBELF_HEADER).is_file() {
        return Err(BuildError::MissingTool {
            tool: LIBELF_HEADER,
            package: "libelf-dev",
        });
    }
    Ok(())
}

/// `6.12.117` from a tree's top Makefile (VERSION, PATCHLEVEL, SUBLEVEL,
/// EXTRAVERSION), without running make.
pub fn kernel_version(tree: &Path) -> Result<String, BuildError> {
    let path = tree.join("Makefile");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    version_from_makefile(&text).ok_or_else(|| BuildError::NotASourceTree(tree.to_path_buf()))
}

/// The version a kernel Makefile's head declares.
pub fn version_from_makefile(text: &str) -> Option<String> {
    let var = |name: &str| {
        text.lines().take(20).find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let (v, p) = (var("VERSION")?, var("PATCHLEVEL")?);
    if v.parse::<u32>().is_err() || p.parse::<u32>().is_err() {
        return None;
    }
    let s = var("SUBLEVEL").unwrap_or_else(|| "0".into());
    Some(format!(
        "{v}.{p}.{s}{}",
        var("EXTRAVERSION").unwrap_or_default()
    ))
}

/// First 12 hex digits of SHA-256 over the source's identity and the
/// merged fragment: the cache key next to the version.
pub fn build_key(tree: &SourceTree, settings: &[Setting]) -> String {
    let mut h = Sha256::new();
    h.update(tree.identity.as_bytes());
    h.update(b"\n");
    h.update(kconfig::merge("", settings).as_bytes());
    format!("{:x}", h.finalize())[..12].to_string()
}

fn tree_lock_name(tree: &Path) -> String {
    let h = Sha256::digest(tree.as_os_str().as_encoded_bytes());
    format!("tree-{:x}", h)[..17].to_string()
}

/// Remove unpacked source packages (`<cache>/sources/<package>_<version>/`,
/// about 2.6 GB each once built in), all or those whose kernel version
/// matches `version`; one being unpacked or built in is skipped. Returns
/// the removed directories. Built kernels stay: they need no source.
pub fn clean_sources(version: Option<&str>) -> Result<Vec<PathBuf>, BuildError> {
    let sources = source::sources_dir()?;
    let kernels = crate::cache::kernels_dir()?;
    store::sweep_stale_staging(&sources);
    let mut removed = Vec::new();
    for e in std::fs::read_dir(&sources).into_iter().flatten().flatten() {
        let dir = e.path();
        let Some(name) = store::release_name(&dir).filter(|n| !n.starts_with('.')) else {
            continue;
        };
        let tree_version = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|t| kernel_version(&t.path()).ok());
        if version.is_some_and(|v| {
            tree_version
                .as_deref()
                .is_none_or(|t| !super::version::spec_matches(t, v))
        }) {
            continue;
        }
        let trees: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|t| t.path())
            .filter(|t| t.is_dir())
            .collect();
        let unpack_lock = ReleaseLock::try_acquire(&sources, &name)?;
        let mut busy = unpack_lock.is_none();
        let mut tree_locks = Vec::new();
        for t in &trees {
            match ReleaseLock::try_acquire(&kernels, &tree_lock_name(t))? {
                Some(l) => tree_locks.push(l),
                None => busy = true,
            }
        }
        if busy {
            tracing::warn!("{name} is being unpacked or built in; not removed");
            continue;
        }
        store::retire(&dir)?;
        removed.push(dir);
    }
    Ok(removed)
}

/// The newest cached build matching `spec`, if any (used by `--kernel`).
pub fn cached_build(kernels: &Path, spec: &str) -> Option<PathBuf> {
    super::fetch::cached_match(kernels, spec)
        .filter(|d| Marker::read(d).is_some_and(|m| m.origin == Origin::Built))
        .filter(|d| store::verify(d, Verify::Sizes).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_comes_from_the_makefile_head() {
        // Fixture: the head of 6.12's top Makefile.
        let mk = "# SPDX-License-Identifier: GPL-2.0\nVERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\nNAME = Baby Opossum Posse\n";
        assert_eq!(version_from_makefile(mk).as_deref(), Some("6.12.117"));
        let rc = mk
            .replace("SUBLEVEL = 117", "SUBLEVEL = 0")
            .replace("EXTRAVERSION =", "EXTRAVERSION = -rc3");
        assert_eq!(version_from_makefile(&rc).as_deref(), Some("6.12.0-rc3"));
        assert_eq!(version_from_makefile("all:\n\techo\n"), None);
    }

    #[test]
    fn the_key_changes_with_the_fragment_and_the_source() {
        let tree = SourceTree {
            dir: "/src".into(),
            identity: "linux-source-6.12 6.12.117-1".into(),
            from_package: true,
        };
        let base = kconfig::parse_fragment(HARNESS_CONFIG, "h");
        let k = build_key(&tree, &base);
        assert_eq!(k.len(), 12);
        assert_eq!(k, build_key(&tree, &base));
        let mut more = base.clone();
        more.extend(kconfig::parse_fragment("CONFIG_HZ_1000=y\n", "u"));
        assert_ne!(k, build_key(&tree, &more));
        let other = SourceTree {
            identity: "linux-source-6.12 6.12.118-1".into(),
            ..tree.clone()
        };
        assert_ne!(k, build_key(&other, &base));
    }

    #[test]
    fn the_harness_fragment_asks_for_what_ktstr_needs() {
        let s = kconfig::parse_fragment(HARNESS_CONFIG, "h");
        for (option, _) in super::super::config::REQUIRED {
            assert!(
                s.iter()
                    .any(|x| x.option == *option && x.value.as_deref() == Some("y")),
                "{option}"
            );
        }
        assert!(s.iter().any(|x| x.option == "CONFIG_PVH"));
        assert!(
            s.iter()
                .any(|x| x.option == "CONFIG_MODULES" && x.value.is_none())
        );
    }

    #[test]
    fn a_dropped_option_is_refused_with_its_line() {
        let e = BuildError::ConfigDropped {
            dropped: vec![
                Dropped {
                    wanted: Setting {
                        option: "CONFIG_DEBUG_INFO_BTF".into(),
                        value: Some("y".into()),
                        origin: "ktstr's harness.config".into(),
                    },
                    found: "# CONFIG_DEBUG_INFO_BTF is not set".into(),
                },
                Dropped {
                    wanted: Setting {
                        option: "CONFIG_PVH".into(),
                        value: Some("y".into()),
                        origin: "x".into(),
                    },
                    found: "# CONFIG_PVH is not set".into(),
                },
            ],
            hint: "h".into(),
        };
        let t = e.to_string();
        assert!(t.contains("lacks `CONFIG_DEBUG_INFO_BTF=y`"), "{t}");
        assert!(
            t.contains("has `# CONFIG_DEBUG_INFO_BTF is not set`"),
            "{t}"
        );
        assert!(t.contains("1 more (CONFIG_PVH=y)"), "{t}");
    }
}
