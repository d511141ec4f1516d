//! `ktstr kernel fetch`: the newest sched_ext-enabled Debian cloud kernel
//! from trixie-backports, fetched with apt's own tools into a private apt
//! state under the cache (the system's sources and lists are untouched).

use std::path::{Path, PathBuf};
use std::process::Command;

use ktstr_walker::kernel::image::{ImageError, KernelImage};

use super::config::{ConfigError, KernelConfig};
use super::sources;
use super::store::{self, COMPLETE_MARKER};

/// The suite that carries sched_ext kernels for Debian stable.
const SUITE: &str = "trixie-backports";
/// Package name parts: `linux-binary-<version>-cloud-amd64`.
const BINARY_PREFIX: &str = "linux-binary-";
const BASE_PREFIX: &str = "linux-base-";
const FLAVOUR_SUFFIX: &str = "-cloud-amd64";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

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
    /// The archive keyring is missing.
    #[error("{KEYRING} is missing: install the debian-archive-keyring package")]
    NoKeyring,
    /// An apt/dpkg command failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// The tail of its stderr.
        stderr: String,
    },
    /// No package matched.
    #[error("{what} in {SUITE}; check the mirror {mirror} or pin one with --release")]
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
        "cannot reach the package archive ({0}) and no kernel is cached under the kernel cache; connect to the network and run `ktstr kernel fetch` again"
    )]
    OfflineEmpty(String),
    /// Offline, and what is asked for was never downloaded.
    #[error("{0}")]
    Offline(String),
    /// A file operation in the cache failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The kernel image could not be turned into a vmlinux.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The kernel lacks a required option.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No cache directory.
    #[error(transparent)]
    Cache(#[from] crate::cache::NoCacheDir),
}

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Options of `ktstr kernel fetch`.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// A specific version (`7.3.4+deb13`) or release (`7.3.4+deb13-cloud-amd64`).
    pub release: Option<String>,
    /// Do not contact the archive: use the newest cached release.
    pub offline: bool,
}

/// Fetch (or find in the cache) a kernel; returns its release directory.
pub fn fetch(opts: &FetchOptions) -> Result<PathBuf, FetchError> {
    let kernels = crate::cache::kernels_dir()?;
    if let Some(v) = &opts.release {
        let dir = kernels.join(release_of(&version_of(v)));
        if store::is_complete(&dir) {
            return Ok(dir);
        }
    }
    if opts.offline {
        return store::newest_complete(&kernels)
            .ok_or_else(|| FetchError::OfflineEmpty("--offline".into()));
    }
    let apt = match Apt::prepare() {
        Ok(apt) => apt,
        Err(e @ (FetchError::MissingTool(_) | FetchError::NoMirror | FetchError::NoKeyring)) => {
            return Err(e);
        }
        Err(e) => return offline_fallback(&kernels, e),
    };
    if let Err(e) = apt.update() {
        return offline_fallback(&kernels, e);
    }
    let version = match &opts.release {
        Some(v) => version_of(v),
        None => apt.newest_version()?,
    };
    let dir = kernels.join(release_of(&version));
    if store::is_complete(&dir) {
        tracing::info!("kernel {} is already cached", dir.display());
        return Ok(dir);
    }
    let debs = apt.download(&version)?;
    install(&kernels, &debs, &dir)
}

fn offline_fallback(kernels: &Path, err: FetchError) -> Result<PathBuf, FetchError> {
    match store::newest_complete(kernels) {
        Some(dir) => {
            tracing::warn!("{err}; using the cached kernel {}", dir.display());
            Ok(dir)
        }
        None => Err(FetchError::OfflineEmpty(err.to_string())),
    }
}

/// `7.3.4+deb13-cloud-amd64` or `7.3.4+deb13` -> `7.3.4+deb13`.
pub(super) fn version_of(v: &str) -> String {
    v.strip_suffix(FLAVOUR_SUFFIX).unwrap_or(v).to_string()
}

pub(super) fn release_of(version: &str) -> String {
    format!("{version}{FLAVOUR_SUFFIX}")
}

/// Sort key of a package version like `7.3.4+deb13`: the numeric dotted
/// upstream part compares as numbers (7.3.4 > 7.2.12 > 6.19.14), the rest as
/// text. These package names carry only such versions.
pub fn version_key(v: &str) -> (Vec<u64>, String) {
    let (upstream, rest) = v.split_once('+').unwrap_or((v, ""));
    let nums = upstream
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    (nums, rest.to_string())
}

/// Versions of signed `linux-binary-<version>-cloud-amd64` packages among
/// `names` (unsigned twins and other flavours excluded).
pub fn binary_versions<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    names
        .into_iter()
        .filter_map(|n| {
            n.trim()
                .strip_prefix(BINARY_PREFIX)?
                .strip_suffix(FLAVOUR_SUFFIX)
        })
        .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

/// apt with a private state directory.
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
            Ok(m) if !m.is_empty() => m,
            _ => sources::debian_mirror(&sources::configured_sources(Path::new("/etc/apt")))
                .ok_or(FetchError::NoMirror)?
                .to_string(),
        };
        let root = crate::cache::root()?.join("apt");
        for d in ["lists/partial", "cache/archives/partial", "debs"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        let list = root.join("sources.list");
        let line = format!("deb [signed-by={KEYRING}] {mirror} {SUITE} main\n");
        std::fs::write(&list, line).map_err(io(&list))?;
        Ok(Self { root, mirror })
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let opt = |k: &str, v: &Path| format!("{k}={}", v.display());
        for o in [
            opt("Dir::Etc::SourceList", &self.root.join("sources.list")),
            "Dir::Etc::SourceParts=/dev/null".to_string(),
            opt("Dir::State::Lists", &self.root.join("lists")),
            opt("Dir::Cache", &self.root.join("cache")),
            "APT::Architecture=amd64".to_string(),
        ] {
            c.arg("-o").arg(o);
        }
        c
    }

    pub(super) fn update(&self) -> Result<(), FetchError> {
        tracing::info!("updating the package list of {SUITE} from {}", self.mirror);
        run(self.cmd("apt-get").args(["-q", "update"]))?;
        Ok(())
    }

    fn newest_version(&self) -> Result<String, FetchError> {
        let out = run(self.cmd("apt-cache").args(["pkgnames", BINARY_PREFIX]))?;
        let mut versions = binary_versions(out.lines());
        versions.sort_by_key(|v| version_key(v));
        versions.pop().ok_or_else(|| FetchError::NoPackage {
            what: format!("no {BINARY_PREFIX}<version>{FLAVOUR_SUFFIX} package"),
            mirror: self.mirror.clone(),
        })
    }

    /// Download the binary and base packages of `version` (once).
    fn download(&self, version: &str) -> Result<Vec<PathBuf>, FetchError> {
        let pkgs = [BINARY_PREFIX, BASE_PREFIX].map(|p| format!("{p}{version}{FLAVOUR_SUFFIX}"));
        self.download_packages(&pkgs)
    }

    /// Download `pkgs` of the suite into the private `debs/` directory,
    /// those not there yet; returns their files in the order asked.
    pub(super) fn download_packages(&self, pkgs: &[String]) -> Result<Vec<PathBuf>, FetchError> {
        let dir = self.root.join("debs");
        let missing: Vec<&String> = pkgs
            .iter()
            .filter(|p| find_deb(&dir, p).is_none())
            .collect();
        if !missing.is_empty() {
            tracing::info!("downloading {}", pkgs.join(" "));
            let mut c = self.cmd("apt-get");
            c.current_dir(&dir).args(["-q", "download"]).args(&missing);
            run(&mut c).map_err(|e| match e {
                FetchError::Command { stderr, .. } if stderr.contains("Unable to locate") => {
                    FetchError::NoPackage {
                        what: format!("no package {}", missing[0]),
                        mirror: self.mirror.clone(),
                    }
                }
                e => e,
            })?;
        }
        pkgs.iter()
            .map(|p| {
                find_deb(&dir, p).ok_or_else(|| {
                    FetchError::BadPackage(format!(
                        "apt-get download left no {p}_*.deb in {}",
                        dir.display()
                    ))
                })
            })
            .collect()
    }
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

/// Unpack `debs`, derive the vmlinux, check the config and move the result
/// to `dir` atomically: a directory without the marker is never used.
fn install(kernels: &Path, debs: &[PathBuf], dir: &Path) -> Result<PathBuf, FetchError> {
    std::fs::create_dir_all(kernels).map_err(io(kernels))?;
    let staging = kernels.join(format!(".staging-{}", std::process::id()));
    let unpacked = staging.join("unpacked");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&unpacked).map_err(io(&unpacked))?;
    let result = (|| {
        for deb in debs {
            run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacked))?;
        }
        let release = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let modules = unpacked.join("usr/lib/modules").join(release);
        let vmlinuz = first_existing(&[
            modules.join("vmlinuz"),
            unpacked.join(format!("boot/vmlinuz-{release}")),
        ])
        .ok_or_else(|| FetchError::BadPackage(format!("no vmlinuz for {release} in {debs:?}")))?;
        let config = first_existing(&[
            modules.join("config"),
            unpacked.join(format!("boot/config-{release}")),
        ])
        .ok_or_else(|| {
            FetchError::BadPackage(format!("no kernel config for {release} in {debs:?}"))
        })?;
        let out = staging.join("release");
        std::fs::create_dir_all(&out).map_err(io(&out))?;
        for (src, name) in [(&vmlinuz, "vmlinuz"), (&config, "config")] {
            let dst = out.join(name);
            std::fs::copy(src, &dst).map_err(io(&dst))?;
        }
        KernelConfig::open(&out.join("config"))?.check_required()?;
        tracing::info!("extracting vmlinux from {}", vmlinuz.display());
        KernelImage::open(out.join("vmlinuz"))?.write_vmlinux(out.join("vmlinux"))?;
        let marker = out.join(COMPLETE_MARKER);
        std::fs::write(&marker, format!("{release}\n")).map_err(io(&marker))?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::rename(&out, dir).map_err(io(dir))?;
        Ok(dir.to_path_buf())
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

fn first_existing(paths: &[PathBuf]) -> Option<PathBuf> {
    paths.iter().find(|p| p.is_file()).cloned()
}

/// Run a command, returning stdout; failure carries the stderr tail.
pub(super) fn run(cmd: &mut Command) -> Result<String, FetchError> {
    let line = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| FetchError::Command {
        cmd: line.clone(),
        status: "could not start".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        return Err(FetchError::Command {
            cmd: line,
            status: out.status.to_string(),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

    #[test]
    fn newest_signed_cloud_version_wins() {
        // Fixture: names in the shape `apt-cache pkgnames linux-binary-` prints.
        let names = [
            "linux-binary-unsigned-7.3.4+deb13-cloud-amd64",
            "linux-binary-6.19.14+deb13-cloud-amd64",
            "linux-binary-7.2.12+deb13-cloud-amd64",
            "linux-binary-7.3.4+deb13-cloud-amd64",
            "linux-binary-7.2.9+deb13-cloud-amd64",
            "linux-binary-7.3.4+deb13-amd64",
        ];
        let mut v = binary_versions(names);
        assert_eq!(v.len(), 4, "{v:?}");
        v.sort_by_key(|v| version_key(v));
        assert_eq!(
            v,
            [
                "6.19.14+deb13",
                "7.2.9+deb13",
                "7.2.12+deb13",
                "7.3.4+deb13"
            ]
        );
    }

    #[test]
    fn release_and_version_forms() {
        assert_eq!(version_of("7.3.4+deb13-cloud-amd64"), "7.3.4+deb13");
        assert_eq!(release_of("7.3.4+deb13"), "7.3.4+deb13-cloud-amd64");
    }
}
