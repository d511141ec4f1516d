//! `ktstr kernel fetch`: a sched_ext-enabled Debian cloud kernel of any
//! release, fetched with apt's own tools into a private apt state under the
//! cache (the system's sources, lists and configuration are untouched).
//!
//! Which packages hold a release is asked of the archive, never guessed:
//! Debian's packaging changed twice. 6.12 to 6.18 ship one
//! `linux-image-<release>` with `/boot/vmlinuz-*` and `/boot/config-*`;
//! from 6.19 that package is a small meta package whose `Depends` name
//! `linux-binary-<release>` (the image) and `linux-base-<release>` (config,
//! System.map). So: the release's `linux-image-*` plus whatever
//! `linux-binary-*`/`linux-base-*` of the same release it depends on.
//! Both `trixie` and `trixie-backports` are in the private sources, and apt
//! says which suite has the release.

use crate::cache::io;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ktstr_walker::kernel::image::{ImageError, KernelImage};

use super::config::{ConfigError, KernelConfig};
use super::sources;
use super::store::{
    self, Marker, Origin, ReleaseLock, StoreError, Verify, publish, staging_dir,
    sweep_stale_staging,
};
pub use super::version::{
    FLAVOUR_SUFFIX, looks_like_version, pick_version, release_of, spec_matches, version_key,
    version_of,
};

/// Suites searched for kernels: stable (6.12, no sched_ext) and its backports.
pub const SUITES: [&str; 2] = ["trixie", "trixie-backports"];
const IMAGE_PREFIX: &str = "linux-image-";
/// Packages of a split release that a `linux-image-*` meta package depends on.
const PART_PREFIXES: [&str; 2] = ["linux-binary-", "linux-base-"];
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Download directories of packages fetched without a release (KVM modules).
const DOWNLOAD_PREFIX: &str = ".download-";

/// Bounds on the external commands (apt's own network timeout is set too).
const UPDATE_TIMEOUT: Duration = Duration::from_secs(300);
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(900);
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);
pub(super) const UNPACK_TIMEOUT: Duration = Duration::from_secs(300);

/// What can go wrong while fetching a kernel.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// A needed program is not installed.
    #[error(
        "`{0}` not found: `ktstr kernel fetch` needs Debian/Ubuntu apt tools (apt-get, apt-cache, dpkg-deb); run ./setup.sh or pass --kernel PATH to use a kernel you have"
    )]
    MissingTool(&'static str),
    /// No Debian mirror in the apt configuration.
    #[error(
        "no Debian archive mirror in /etc/apt (sources.list or sources.list.d); set KTSTR_DEBIAN_MIRROR=<uri of a Debian archive>"
    )]
    NoMirror,
    /// The mirror URI is not one ktstr will write into a sources list.
    #[error(
        "mirror {uri:?} ({origin}) is not usable: {reason}; set KTSTR_DEBIAN_MIRROR to an http:// or https:// URI of a Debian archive"
    )]
    BadMirror {
        /// The URI as given.
        uri: String,
        /// Where it came from.
        origin: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The archive keyring is missing.
    #[error("{KEYRING} is missing: install the debian-archive-keyring package")]
    NoKeyring,
    /// An external command failed or ran past its bound.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status, or the timeout.
        status: String,
        /// The tail of its stderr.
        stderr: String,
    },
    /// No package matched.
    #[error("{what} in {suites} of {mirror}", suites = SUITES.join(" or "))]
    NoPackage {
        /// What was looked for.
        what: String,
        /// The mirror used.
        mirror: String,
    },
    /// The packages did not contain what a kernel package should.
    #[error("{0}")]
    BadPackage(String),
    /// Offline, and nothing cached.
    #[error(
        "cannot reach the package archive ({0}) and no kernel is cached; connect to the network and run `ktstr kernel fetch` again"
    )]
    OfflineEmpty(String),
    /// Offline (or the archive unreachable), and what is asked for was
    /// never downloaded.
    #[error("{0}")]
    Offline(String),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] crate::cache::PathIo),
    /// The cache itself.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The kernel image could not be turned into a vmlinux.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The kernel lacks a required option: refused.
    #[error("kernel {release} is refused: {reason}")]
    Refused {
        /// The release.
        release: String,
        /// The missing option.
        reason: ConfigError,
    },
    /// A config could not be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No cache directory.
    #[error(transparent)]
    Cache(#[from] crate::cache::NoCacheDir),
}

/// Options of `ktstr kernel fetch`.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// A version (`6.16`, `6.16.12`, `7.3.4+deb13`) or release
    /// (`7.3.4+deb13-cloud-amd64`); the newest matching one is fetched.
    pub release: Option<String>,
    /// Do not contact the archive: use what is cached.
    pub offline: bool,
}

/// Where a fetched kernel came from this time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchedFrom {
    /// Already cached (verified against its marker).
    Cache,
    /// Downloaded from the archive now, from this suite.
    Archive {
        /// `trixie` or `trixie-backports`.
        suite: String,
    },
    /// The archive could not be asked; this is the newest cached kernel,
    /// which may not be the newest there is.
    StaleCache {
        /// Why the archive could not be asked.
        reason: String,
    },
}

/// A kernel in the cache, ready to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Its release directory.
    pub dir: PathBuf,
    /// Its release name.
    pub release: String,
    /// Where it came from this time.
    pub from: FetchedFrom,
}

impl Fetched {
    fn cached(dir: PathBuf) -> Self {
        store::touch_last_used(&dir);
        Self {
            release: store::release_name(&dir).unwrap_or_default(),
            dir,
            from: FetchedFrom::Cache,
        }
    }
}

/// Fetch (or find in the cache) a kernel.
pub fn fetch(opts: &FetchOptions) -> Result<Fetched, FetchError> {
    let kernels = crate::cache::kernels_dir()?;
    std::fs::create_dir_all(&kernels).map_err(io(&kernels))?;
    sweep_stale_staging(&kernels);
    if let Some(spec) = &opts.release
        && let Some(dir) = fetched_match(&kernels, spec)
    {
        match store::verify(&dir, Verify::Hashes) {
            Ok(_) => return Ok(Fetched::cached(dir)),
            Err(e) if opts.offline => return Err(e.into()),
            Err(e) => tracing::warn!("{e}; fetching it again"),
        }
    }
    if opts.offline {
        return match &opts.release {
            Some(spec) => Err(FetchError::Offline(format!(
                "--offline, and no cached kernel matches {spec} (cached: {})",
                cached_names(&kernels)
            ))),
            None => store::fetched_releases(&kernels)
                .pop()
                .map(Fetched::cached)
                .ok_or_else(|| FetchError::OfflineEmpty("--offline".into())),
        };
    }
    let apt = Apt::prepare()?;
    if let Err(e) = apt.update() {
        return archive_unreachable(&kernels, opts.release.as_deref(), e);
    }
    let versions = apt.image_versions()?;
    let version = pick_version(&versions, opts.release.as_deref()).ok_or_else(|| {
        let mut newest: Vec<&String> = versions.iter().rev().take(8).collect();
        newest.reverse();
        FetchError::NoPackage {
            what: format!(
                "no {IMAGE_PREFIX}{}{FLAVOUR_SUFFIX} package (newest there: {})",
                opts.release.as_deref().unwrap_or("<version>"),
                newest
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            mirror: apt.mirror.clone(),
        }
    })?;
    let release = release_of(&version);
    let dir = kernels.join(&release);
    // One writer per release; a second fetch waits here and then finds
    // the first one's result.
    let _lock = ReleaseLock::acquire(&kernels, &release)?;
    if dir.exists() {
        let _ = store::upgrade_legacy_marker(&dir);
        match store::verify(&dir, Verify::Hashes) {
            Ok(_) => {
                tracing::info!("kernel {release} is already cached");
                return Ok(Fetched::cached(dir));
            }
            Err(e) => tracing::warn!("{e}; fetching it again"),
        }
    }
    let plan = apt.plan(&release)?;
    tracing::info!(
        "kernel {release} ({}) from {}: {}",
        plan.version,
        plan.suite,
        plan.packages
            .iter()
            .map(|p| format!("{} ({} MB)", p.name, p.size / 1_000_000))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let staging = staging_dir(&kernels, &release);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    let result = (|| {
        let debs = apt.download_verified(&plan.packages, &staging.join("download"))?;
        install(&debs, &staging, &dir, &plan)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result?;
    Ok(Fetched {
        dir,
        release,
        from: FetchedFrom::Archive { suite: plan.suite },
    })
}

/// `apt-get update` failed: a pinned release must be cached; otherwise
/// the newest cached kernel is used, and the caller is told so.
fn archive_unreachable(
    kernels: &Path,
    spec: Option<&str>,
    err: FetchError,
) -> Result<Fetched, FetchError> {
    if let Some(spec) = spec {
        return Err(FetchError::Offline(format!(
            "cannot update the package lists ({err}), and no cached kernel matches {spec} (cached: {})",
            cached_names(kernels)
        )));
    }
    match store::newest_complete(kernels) {
        Some(dir) => {
            let reason = err.to_string();
            // The caller says so loudly (FetchedFrom::StaleCache); the CLI
            // prints a WARNING line.
            tracing::debug!(
                "cannot update the package lists: {reason}; using the newest CACHED kernel {}, which may not be the newest in the archive",
                dir.display()
            );
            Ok(Fetched {
                release: store::release_name(&dir).unwrap_or_default(),
                dir,
                from: FetchedFrom::StaleCache { reason },
            })
        }
        None => Err(FetchError::OfflineEmpty(err.to_string())),
    }
}

fn cached_names(kernels: &Path) -> String {
    let names: Vec<String> = store::complete_releases(kernels)
        .iter()
        .filter_map(|d| store::release_name(d))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// The newest complete cached release matching `spec`.
pub fn cached_match(kernels: &Path, spec: &str) -> Option<PathBuf> {
    newest_matching(store::complete_releases(kernels), spec)
}

/// [`cached_match`] among kernels fetched from the archive: a built kernel
/// of the same version is not what a fetch was asked for.
pub fn fetched_match(kernels: &Path, spec: &str) -> Option<PathBuf> {
    newest_matching(store::fetched_releases(kernels), spec)
}

fn newest_matching(dirs: Vec<PathBuf>, spec: &str) -> Option<PathBuf> {
    dirs.into_iter()
        .rev()
        .find(|d| store::release_name(d).is_some_and(|n| spec_matches(&version_of(&n), spec)))
}

/// Versions of `linux-image-<version>-cloud-amd64` packages among `names`
/// (`-dbg`, `-unsigned`, meta packages and other flavours excluded).
pub fn image_versions<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut v: Vec<String> = names
        .into_iter()
        .filter_map(|n| {
            n.trim()
                .strip_prefix(IMAGE_PREFIX)?
                .strip_suffix(FLAVOUR_SUFFIX)
        })
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
        .collect();
    v.sort_by_key(|v| version_key(v));
    v.dedup();
    v
}

/// A mirror URI that is safe to write into a one-line sources list: an
/// http(s) URI of printable ASCII without whitespace (a newline would
/// inject a second source, a space a second field).
pub fn validate_mirror(uri: &str, origin: &'static str) -> Result<String, FetchError> {
    let bad = |reason| FetchError::BadMirror {
        uri: uri.to_string(),
        origin,
        reason,
    };
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace or control characters"));
    }
    if !uri.is_ascii() || uri.contains(['[', ']', '"', '#']) {
        return Err(bad("it contains characters apt would read as syntax"));
    }
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
        .ok_or_else(|| bad("its scheme is not http or https"))?;
    if rest.split('/').next().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    Ok(uri.trim_end_matches('/').to_string())
}

/// One package of a release, as the archive describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    /// Package name.
    pub name: String,
    /// Its version (`6.16.12-1~bpo13+1`).
    pub version: String,
    /// Size of the .deb.
    pub size: u64,
    /// SHA-256 of the .deb.
    pub sha256: String,
    /// Its `Depends` package names (versions and alternatives dropped).
    pub depends: Vec<String>,
}

/// Parse `apt-cache show` stanzas.
pub fn parse_show(text: &str) -> Vec<PackageInfo> {
    text.split("\n\n")
        .filter_map(|stanza| {
            let mut f: BTreeMap<&str, &str> = BTreeMap::new();
            for line in stanza.lines() {
                if let Some((k, v)) = line.split_once(": ")
                    && !k.starts_with(' ')
                {
                    f.insert(k, v.trim());
                }
            }
            Some(PackageInfo {
                name: f.get("Package")?.to_string(),
                version: f.get("Version")?.to_string(),
                size: f.get("Size")?.parse().ok()?,
                sha256: f.get("SHA256")?.to_string(),
                depends: f
                    .get("Depends")
                    .map(|d| {
                        d.split([',', '|'])
                            .filter_map(|p| p.split_whitespace().next())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// What the archive says a release is made of.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The release.
    pub release: String,
    /// The suite that has it.
    pub suite: String,
    /// The packages' version.
    pub version: String,
    /// The packages to download: `linux-image-*`, and for a split release
    /// the `linux-binary-*`/`linux-base-*` it depends on.
    pub packages: Vec<PackageInfo>,
}

/// The packages of `release` given its `linux-image-*` description and a
/// lookup of the others.
pub fn release_packages(release: &str, image: &PackageInfo) -> Vec<String> {
    let mut names = vec![image.name.clone()];
    for prefix in PART_PREFIXES {
        let part = format!("{prefix}{release}");
        if image.depends.contains(&part) {
            names.push(part);
        }
    }
    names
}

/// apt with a private state directory and a private configuration.
pub(super) struct Apt {
    root: PathBuf,
    mirror: String,
}

impl Apt {
    pub(super) fn prepare() -> Result<Self, FetchError> {
        for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
            if which(tool).is_none() {
                return Err(FetchError::MissingTool(tool));
            }
        }
        if !Path::new(KEYRING).exists() {
            return Err(FetchError::NoKeyring);
        }
        let mirror = match std::env::var("KTSTR_DEBIAN_MIRROR") {
            Ok(m) if !m.is_empty() => validate_mirror(&m, "KTSTR_DEBIAN_MIRROR")?,
            _ => validate_mirror(
                sources::debian_mirror(&sources::configured_sources(Path::new("/etc/apt")))
                    .ok_or(FetchError::NoMirror)?,
                "/etc/apt",
            )?,
        };
        let root = crate::cache::root()?.join("apt");
        Self::with_root(root, mirror)
    }

    /// The private apt state under `root`, for `mirror` (validated).
    pub(super) fn with_root(root: PathBuf, mirror: String) -> Result<Self, FetchError> {
        if root.to_str().is_none_or(|r| r.contains(['"', '\n'])) {
            let source = std::io::Error::other("not usable in an apt configuration");
            return Err(crate::cache::PathIo { path: root, source }.into());
        }
        for d in ["lists/partial", "cache/archives/partial", "debs"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        let list = root.join("sources.list");
        let text: String = SUITES
            .iter()
            .map(|s| format!("deb [signed-by={KEYRING}] {mirror} {s} main\n"))
            .collect();
        std::fs::write(&list, text).map_err(io(&list))?;
        let conf = root.join("apt.conf");
        std::fs::write(&conf, private_config(&root)).map_err(io(&conf))?;
        Ok(Self { root, mirror })
    }

    /// A command of apt with only the private configuration: APT_CONFIG is
    /// read before anything else, and it turns off the host's apt.conf and
    /// apt.conf.d (hooks, proxies, pins, languages).
    pub(super) fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("APT_CONFIG", self.root.join("apt.conf"))
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        c
    }

    fn lock(&self) -> Result<std::fs::File, FetchError> {
        let path = self.root.join(".ktstr-lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        // apt's own lock fails at once when busy; this one waits.
        fs4::FileExt::lock(&f).map_err(io(&path))?;
        Ok(f)
    }

    pub(super) fn update(&self) -> Result<(), FetchError> {
        let _lock = self.lock()?;
        tracing::info!(
            "updating the package lists of {} from {}",
            SUITES.join(" and "),
            self.mirror
        );
        run(self.cmd("apt-get").args(["-q", "update"]), UPDATE_TIMEOUT)?;
        Ok(())
    }

    fn image_versions(&self) -> Result<Vec<String>, FetchError> {
        let out = run(
            self.cmd("apt-cache").args(["pkgnames", IMAGE_PREFIX]),
            QUERY_TIMEOUT,
        )?;
        Ok(image_versions(out.lines()))
    }

    fn show(&self, pkgs: &[String]) -> Result<Vec<PackageInfo>, FetchError> {
        let out = run(
            self.cmd("apt-cache")
                .args(["show", "--no-all-versions"])
                .args(pkgs),
            QUERY_TIMEOUT,
        )?;
        Ok(parse_show(&out))
    }

    /// Which packages make `release`, and from which suite.
    fn plan(&self, release: &str) -> Result<Plan, FetchError> {
        let image_name = format!("{IMAGE_PREFIX}{release}");
        let image = self
            .show(std::slice::from_ref(&image_name))?
            .into_iter()
            .next()
            .ok_or_else(|| FetchError::NoPackage {
                what: format!("no candidate for {image_name}"),
                mirror: self.mirror.clone(),
            })?;
        // Each part on its own: apt-cache fails on a name without a
        // candidate, and one such is in the archive (6.19's image depends
        // on a linux-base-6.19.* that no suite has; its config is in
        // linux-binary-*). What the .debs hold is checked after unpacking.
        let mut packages = vec![image.clone()];
        for name in release_packages(release, &image).into_iter().skip(1) {
            match self
                .show(std::slice::from_ref(&name))
                .ok()
                .and_then(|p| p.into_iter().next())
            {
                Some(p) => packages.push(p),
                None => tracing::info!(
                    "{image_name} depends on {name}, which the archive does not have; going on without it"
                ),
            }
        }
        let madison = run(
            self.cmd("apt-cache").args(["madison", &image_name]),
            QUERY_TIMEOUT,
        )?;
        let suite = madison
            .lines()
            .filter(|l| l.contains(&image.version))
            .find_map(suite_of_madison_line)
            .unwrap_or_else(|| "unknown suite".into());
        Ok(Plan {
            release: release.to_string(),
            suite,
            version: image.version,
            packages,
        })
    }

    /// The .debs of `pkgs` in the private `debs/` directory: those already
    /// there with the archive's SHA-256 are kept, the others downloaded into
    /// `staging`, checked and moved in.
    fn download_verified(
        &self,
        pkgs: &[PackageInfo],
        staging: &Path,
    ) -> Result<Vec<PathBuf>, FetchError> {
        let debs = self.root.join("debs");
        let good = |p: &PackageInfo| {
            find_deb(&debs, &p.name).filter(|d| {
                store::FileSum::of(d).is_ok_and(|s| s.size == p.size && s.sha256 == p.sha256)
            })
        };
        let missing: Vec<&PackageInfo> = pkgs.iter().filter(|p| good(p).is_none()).collect();
        if !missing.is_empty() {
            let _lock = self.lock()?;
            // Only the holder of the apt lock downloads, so other download
            // directories under the apt root are left by killed processes.
            for e in std::fs::read_dir(&self.root)
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.file_name().to_string_lossy().starts_with(DOWNLOAD_PREFIX)
                    && e.path() != staging
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            std::fs::create_dir_all(staging).map_err(io(staging))?;
            let total: u64 = missing.iter().map(|p| p.size).sum();
            tracing::info!(
                "downloading {} ({} MB)",
                missing
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                total / 1_000_000
            );
            let mut c = self.cmd("apt-get");
            c.current_dir(staging)
                .args(["-q", "download"])
                .args(missing.iter().map(|p| format!("{}={}", p.name, p.version)));
            run(&mut c, DOWNLOAD_TIMEOUT)?;
            for p in missing {
                let deb = find_deb(staging, &p.name).ok_or_else(|| {
                    FetchError::BadPackage(format!("apt-get download left no {}_*.deb", p.name))
                })?;
                let sum = store::FileSum::of(&deb)?;
                if sum.sha256 != p.sha256 || sum.size != p.size {
                    return Err(FetchError::BadPackage(format!(
                        "{} does not match the archive's SHA-256/size",
                        deb.display()
                    )));
                }
                store::sync_tree(staging)?;
                if let Some(old) = find_deb(&debs, &p.name) {
                    std::fs::remove_file(&old).map_err(io(&old))?;
                }
                let name = deb.file_name().unwrap_or_default();
                let dst = debs.join(name);
                std::fs::rename(&deb, &dst).map_err(io(&dst))?;
            }
            store::sync_dir(&debs)?;
        }
        pkgs.iter()
            .map(|p| {
                good(p)
                    .ok_or_else(|| FetchError::BadPackage(format!("no verified {}_*.deb", p.name)))
            })
            .collect()
    }

    /// Download `pkgs` (their candidates) into the private `debs/`
    /// directory, those not there yet; returns their files in the order asked.
    pub(super) fn download_packages(&self, pkgs: &[String]) -> Result<Vec<PathBuf>, FetchError> {
        let infos = self.show(pkgs)?;
        if infos.len() != pkgs.len() {
            return Err(FetchError::NoPackage {
                what: format!("not all of {} have a candidate", pkgs.join(", ")),
                mirror: self.mirror.clone(),
            });
        }
        let staging = self
            .root
            .join(format!("{DOWNLOAD_PREFIX}{}", std::process::id()));
        let result = self.download_verified(&infos, &staging);
        let _ = std::fs::remove_dir_all(&staging);
        result
    }
}

/// The private apt configuration (read through APT_CONFIG).
fn private_config(root: &Path) -> String {
    let r = root.display();
    format!(
        "// Written by ktstr: apt sees only this, never the host's configuration.\n\
         Dir::Etc::Main \"/dev/null\";\n\
         Dir::Etc::Parts \"/dev/null\";\n\
         Dir::Etc::SourceList \"{r}/sources.list\";\n\
         Dir::Etc::SourceParts \"/dev/null\";\n\
         Dir::Etc::Preferences \"/dev/null\";\n\
         Dir::Etc::PreferencesParts \"/dev/null\";\n\
         Dir::Etc::Trusted \"/dev/null\";\n\
         Dir::Etc::TrustedParts \"/dev/null\";\n\
         Dir::Etc::netrc \"/dev/null\";\n\
         Dir::Etc::netrcparts \"/dev/null\";\n\
         Dir::State::Lists \"{r}/lists\";\n\
         Dir::State::status \"/dev/null\";\n\
         Dir::Cache \"{r}/cache\";\n\
         Dir::Log \"{r}/log\";\n\
         APT::Architecture \"amd64\";\n\
         APT::Architectures {{ \"amd64\"; }};\n\
         Acquire::Languages \"none\";\n\
         // Lists stay compressed on disk: trixie's are 56 MB otherwise.\n\
         Acquire::GzipIndexes \"true\";\n\
         Acquire::http::Timeout \"60\";\n\
         Acquire::https::Timeout \"60\";\n\
         Acquire::Retries \"2\";\n\
         // An index that cannot be fetched is an error, not a warning over\n\
         // stale lists (apt-get update exits 0 on an unreachable mirror).\n\
         APT::Update::Error-Mode \"any\";\n"
    )
}

/// `pkg | version | http://mirror/debian trixie-backports/main amd64 Packages`
/// -> `trixie-backports`.
fn suite_of_madison_line(line: &str) -> Option<String> {
    let src = line.split('|').nth(2)?;
    let dist = src.split_whitespace().nth(1)?;
    Some(dist.split('/').next()?.to_string())
}

/// A downloaded package already in the private `debs/` directory, without
/// contacting the archive (offline use of what was fetched before).
pub(super) fn cached_deb(pkg: &str) -> Option<PathBuf> {
    let root = crate::cache::root().ok()?.join("apt").join("debs");
    find_deb(&root, pkg)
}

fn find_deb(dir: &Path, pkg: &str) -> Option<PathBuf> {
    let prefix = format!("{pkg}_");
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
}

/// Unpack `debs` in `staging`, check the config, derive the vmlinux, record
/// the marker, and publish the result as `dir` (caller holds its lock).
fn install(debs: &[PathBuf], staging: &Path, dir: &Path, plan: &Plan) -> Result<(), FetchError> {
    let release = plan.release.as_str();
    let unpacked = staging.join("unpacked");
    std::fs::create_dir_all(&unpacked).map_err(io(&unpacked))?;
    for deb in debs {
        run(
            Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacked),
            UNPACK_TIMEOUT,
        )?;
    }
    let modules = unpacked.join("usr/lib/modules").join(release);
    let boot = unpacked.join("boot");
    let find = |names: &[PathBuf]| names.iter().find(|p| p.is_file()).cloned();
    let config = find(&[
        modules.join("config"),
        boot.join(format!("config-{release}")),
    ]);
    let vmlinuz = find(&[
        modules.join("vmlinuz"),
        boot.join(format!("vmlinuz-{release}")),
    ])
    .ok_or_else(|| FetchError::BadPackage(format!("no vmlinuz for {release} in {debs:?}")))?;
    let refused = |reason| FetchError::Refused {
        release: release.to_string(),
        reason,
    };
    if let Some(config) = &config {
        // Refuse before the expensive part, naming the config line.
        let text = std::fs::read_to_string(config).map_err(io(config))?;
        KernelConfig::parse(
            &text,
            &format!("of {release} (from {})", plan.packages[0].name),
        )
        .check_required()
        .map_err(refused)?;
    }
    let system_map = find(&[
        modules.join("System.map"),
        boot.join(format!("System.map-{release}")),
    ]);
    let out = staging.join("release");
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    for (src, name) in [
        (Some(&vmlinuz), "vmlinuz"),
        (config.as_ref(), "config"),
        (system_map.as_ref(), "System.map"),
    ] {
        if let Some(src) = src {
            let dst = out.join(name);
            std::fs::copy(src, &dst).map_err(io(&dst))?;
        }
    }
    tracing::info!("extracting vmlinux from {}", vmlinuz.display());
    let image = KernelImage::open(out.join("vmlinuz"))?;
    image.write_vmlinux(out.join("vmlinux"))?;
    if config.is_none() {
        let text = config_from_btf(release, image.elf_bytes()).map_err(refused)?;
        tracing::warn!(
            "the archive has no config for {release} (its linux-base package is missing); sched_ext and BTF were checked in the image's BTF, and ktstr wrote a partial config with only what that proves"
        );
        store::write_synced(&out.join("config"), text.as_bytes())?;
    }
    let marker = Marker::record(
        &out,
        Marker {
            release: release.to_string(),
            origin: Origin::Fetched,
            suite: Some(plan.suite.clone()),
            package_version: Some(plan.version.clone()),
            config_from_image: config.is_none(),
            debs: debs
                .iter()
                .filter_map(|d| d.file_name()?.to_str().map(str::to_string))
                .collect(),
            source: None,
            kernel_release: None,
            files: BTreeMap::new(),
        },
    )?;
    marker.write(&out)?;
    publish(&out, dir)?;
    Ok(())
}

/// First line of a config ktstr writes itself (no config in the archive).
pub const PARTIAL_CONFIG_HEADER: &str = "# ktstr: partial config";

/// A kernel shipped without its config: check sched_ext and BTF in the
/// image's own BTF, and return a config with only the options that proves
/// (`SCHED_CLASS_EXT` depends on these BPF options in Kconfig).
pub fn config_from_btf(release: &str, vmlinux: &[u8]) -> Result<String, ConfigError> {
    let source_name = format!("of {release} (none in the archive; checked in the image)");
    let btf = ktstr_walker::kernel::btf::KernelBtf::from_elf(vmlinux, release).map_err(|e| {
        ConfigError::Missing {
            source_name: source_name.clone(),
            option: "CONFIG_DEBUG_INFO_BTF",
            found: format!("no usable .BTF: {e}"),
            why: "BTF, from which ktstr reads struct layouts and BPF schedulers load",
        }
    })?;
    if btf.struct_size("sched_ext_ops").is_none() {
        return Err(ConfigError::Missing {
            source_name,
            option: "CONFIG_SCHED_CLASS_EXT",
            found: "no struct sched_ext_ops in the image's BTF".into(),
            why: "sched_ext itself",
        });
    }
    Ok(format!(
        "{PARTIAL_CONFIG_HEADER} for {release}: the Debian archive ships no config for it,\n\
         # so these are only the options its BTF proves (sched_ext_ops is there).\n\
         CONFIG_BPF=y\nCONFIG_BPF_SYSCALL=y\nCONFIG_BPF_JIT=y\n\
         CONFIG_DEBUG_INFO_BTF=y\nCONFIG_SCHED_CLASS_EXT=y\n"
    ))
}

/// Run a command with a wall-clock bound, returning stdout; failure
/// carries the stderr tail. Output goes to unnamed temporary files, so a
/// chatty command cannot block on a full pipe.
pub(super) fn run(cmd: &mut Command, timeout: Duration) -> Result<String, FetchError> {
    use std::io::{Read, Seek};
    let line = format!("{cmd:?}").replace('"', "");
    let fail = |status: String, stderr: String| FetchError::Command {
        cmd: line.clone(),
        status,
        stderr,
    };
    let tmp = |what: &str| {
        tempfile::tempfile().map_err(|e| fail(format!("no {what} file"), e.to_string()))
    };
    let (mut out, mut err) = (tmp("stdout")?, tmp("stderr")?);
    let mut child = cmd
        .stdout(
            out.try_clone()
                .map_err(|e| fail("dup".into(), e.to_string()))?,
        )
        .stderr(
            err.try_clone()
                .map_err(|e| fail("dup".into(), e.to_string()))?,
        )
        .spawn()
        .map_err(|e| fail("could not start".into(), e.to_string()))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(fail("wait failed".into(), e.to_string())),
        }
    };
    let read = |f: &mut std::fs::File| {
        let mut s = String::new();
        let _ = f.rewind();
        let _ = f.read_to_string(&mut s);
        s
    };
    let stderr = read(&mut err);
    let tail = || {
        let lines: Vec<&str> = stderr.lines().rev().take(6).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    match status {
        None => Err(fail(format!("killed after {}s", timeout.as_secs()), tail())),
        Some(s) if !s.success() => Err(fail(s.to_string(), tail())),
        Some(_) => Ok(read(&mut out)),
    }
}

/// Where `tool` is on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Fixture: names in the shape `apt-cache pkgnames linux-image-` printed
    // for trixie + trixie-backports on 2026-12-06 (abridged).
    const NAMES: &str = "linux-image-6.12.117+deb13-cloud-amd64\nlinux-image-6.12.117+deb13-cloud-amd64-dbg\nlinux-image-6.12.117+deb13-cloud-amd64-unsigned\nlinux-image-6.16.12+deb13-cloud-amd64\nlinux-image-6.16.3+deb13-cloud-amd64\nlinux-image-6.19.14+deb13-cloud-amd64\nlinux-image-6.19.6+deb13-cloud-amd64\nlinux-image-7.2.12+deb13-cloud-amd64\nlinux-image-7.3.4+deb13-cloud-amd64\nlinux-image-7.3.4+deb13-amd64\nlinux-image-cloud-amd64\n";

    #[test]
    fn versions_are_picked_by_prefix_at_component_boundaries() {
        let v = image_versions(NAMES.lines());
        assert_eq!(
            v,
            [
                "6.12.117+deb13",
                "6.16.3+deb13",
                "6.16.12+deb13",
                "6.19.6+deb13",
                "6.19.14+deb13",
                "7.2.12+deb13",
                "7.3.4+deb13"
            ]
        );
        assert_eq!(pick_version(&v, None).unwrap(), "7.3.4+deb13");
        assert_eq!(pick_version(&v, Some("6.16")).unwrap(), "6.16.12+deb13");
        assert_eq!(pick_version(&v, Some("6.16.3")).unwrap(), "6.16.3+deb13");
        assert_eq!(
            pick_version(&v, Some("6.19.14+deb13-cloud-amd64")).unwrap(),
            "6.19.14+deb13"
        );
        assert_eq!(pick_version(&v, Some("6.1")), None);
        assert_eq!(pick_version(&v, Some("6.16.1")), None);
        assert!(looks_like_version("6.16.12") && looks_like_version("7.3.4+deb13-cloud-amd64"));
        assert!(!looks_like_version("./vmlinux") && !looks_like_version("bzImage"));
    }

    // Fixture: `apt-cache show --no-all-versions` of a 6.19 meta package and
    // a 6.16 single package (fields abridged).
    const SHOW: &str = "Package: linux-image-6.19.14+deb13-cloud-amd64\nSource: linux-signed-amd64 (6.19.14+1~bpo13+1)\nVersion: 6.19.14-1~bpo13+1\nDepends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, kmod, linux-base-6.19.14+deb13-cloud-amd64 (= 6.19.14-1~bpo13+1), linux-binary-6.19.14+deb13-cloud-amd64 (= 6.19.14-1~bpo13+1), linux-modules-6.19.14+deb13-cloud-amd64 (= 6.19.14-1~bpo13+1)\nPre-Depends: linux-base (>= 4.12~)\nDescription: Linux for x86-64 cloud\n This package depends on the kernel.\nSize: 2072\nSHA256: 2126406a3db76e997398a742f2a42446ab79e1acd3b8a1fa0226953b2e362c33\n\nPackage: linux-image-6.16.12+deb13-cloud-amd64\nVersion: 6.16.12-1~bpo13+1\nDepends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool\nSize: 51193584\nSHA256: b56d926c1dc9bbdf151794753df57bd427af2398a033999016dcbbd211e8e461\n";

    #[test]
    fn a_split_release_brings_its_binary_and_base_but_not_its_modules() {
        let p = parse_show(SHOW);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].size, 2072);
        assert_eq!(
            release_packages("6.19.14+deb13-cloud-amd64", &p[0]),
            [
                "linux-image-6.19.14+deb13-cloud-amd64",
                "linux-binary-6.19.14+deb13-cloud-amd64",
                "linux-base-6.19.14+deb13-cloud-amd64"
            ]
        );
        assert_eq!(
            release_packages("6.16.12+deb13-cloud-amd64", &p[1]),
            ["linux-image-6.16.12+deb13-cloud-amd64"]
        );
        assert_eq!(
            suite_of_madison_line(
                "linux-image-6.16.12+deb13-cloud-amd64 | 6.16.12-1~bpo13+1 | http://deb.debian.org/debian trixie-backports/main amd64 Packages"
            )
            .as_deref(),
            Some("trixie-backports")
        );
    }

    #[test]
    fn a_mirror_with_a_newline_or_another_scheme_is_refused() {
        assert_eq!(
            validate_mirror("http://deb.debian.org/debian/", "test").unwrap(),
            "http://deb.debian.org/debian"
        );
        validate_mirror("https://mirror.example:8443/debian", "test").unwrap();
        for bad in [
            "http://a/debian trixie main\ndeb http://evil/ sid main",
            "http://a/debian\n",
            "http://a/ debian",
            "ftp://a/debian",
            "file:///srv/debian",
            "mirror+http://a/debian",
            "http:///debian",
            "[trusted=yes] http://a/debian",
            "",
        ] {
            assert!(validate_mirror(bad, "test").is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn apt_sees_the_private_configuration_only() {
        if which("apt-config").is_none() {
            return crate::testing::skip(
                "apt_sees_the_private_configuration_only",
                crate::testing::Need::Tool,
                "apt-config not found",
            );
        }
        let tmp = tempfile::tempdir().unwrap();
        let apt = Apt::with_root(
            tmp.path().join("apt"),
            "http://mirror.example/debian".into(),
        )
        .unwrap();
        let list = std::fs::read_to_string(tmp.path().join("apt/sources.list")).unwrap();
        assert_eq!(list.lines().count(), 2, "{list}");
        assert!(list.contains(" trixie main") && list.contains(" trixie-backports main"));
        let dump = run(apt.cmd("apt-config").arg("dump"), QUERY_TIMEOUT).unwrap();
        let root = tmp.path().join("apt");
        assert!(dump.contains("Dir::Etc::parts \"/dev/null\";"), "{dump}");
        assert!(dump.contains(&format!("Dir::State::lists \"{}/lists", root.display())));
        // Hooks the host's apt.conf.d may add must not run for ktstr.
        assert!(!dump.contains("Post-Invoke"), "{dump}");
        // And no setting from any host file: each file's first assignment
        // is absent (with its value) from what ktstr's apt sees.
        for f in std::fs::read_dir("/etc/apt/apt.conf.d")
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(f.path()).unwrap_or_default();
            let first = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with("//") && !l.starts_with('#'));
            if let Some((key, value)) = first.and_then(|l| l.split_once(' '))
                && !key.contains(['{', '}'])
                && !private_config(&root).contains(&format!("{key} "))
            {
                let value = value.trim_end_matches(';');
                assert!(
                    !dump
                        .lines()
                        .any(|l| l.eq_ignore_ascii_case(&format!("{key} {value};"))),
                    "{}: {key} {value} leaked into ktstr's apt",
                    f.path().display()
                );
            }
        }
    }

    #[test]
    fn a_command_past_its_bound_is_killed() {
        let t = Instant::now();
        let e = run(Command::new("sleep").arg("30"), Duration::from_millis(300)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(e.to_string().contains("killed after"), "{e}");
        let out = run(
            Command::new("sh").args(["-c", "head -c 300000 /dev/zero; echo err >&2"]),
            QUERY_TIMEOUT,
        )
        .unwrap();
        assert_eq!(out.len(), 300_000);
    }
}
