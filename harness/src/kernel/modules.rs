//! KVM's own modules for a cached kernel: `irqbypass.ko`, `kvm.ko` and
//! `kvm-amd.ko` from the `linux-modules-<release>` package of the same
//! suite, so that kernel, booted as an L1 guest under QEMU TCG with an
//! emulated AMD CPU (SVM + NPT), can offer a real `/dev/kvm` to ktstr's
//! VMM (the nested tier: [`crate::nested`]).
//!
//! They are stored decompressed (the package ships `.ko.xz`; busybox's
//! `insmod` need not know xz) in `<release dir>/kvm-modules/`, complete
//! only once its marker is written, last, as for the kernel itself.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::fetch::{Apt, FetchError, UNPACK_TIMEOUT, cached_deb, run};
use super::store::COMPLETE_MARKER;
use crate::cache::io;

/// The modules, in the order they must be loaded (each needs the ones
/// before it).
pub const KVM_MODULES: [&str; 3] = ["irqbypass", "kvm", "kvm-amd"];

/// The subdirectory of a release directory that holds them.
pub const KVM_MODULES_DIR: &str = "kvm-modules";

/// Package name of a release's modules.
fn package(release: &str) -> String {
    format!("linux-modules-{release}")
}

/// The `.ko` files of [`KVM_MODULES`], in load order, if `release_dir`
/// has them complete.
pub fn cached_kvm_modules(release_dir: &Path) -> Option<Vec<PathBuf>> {
    let dir = release_dir.join(KVM_MODULES_DIR);
    if !dir.join(COMPLETE_MARKER).is_file() {
        return None;
    }
    let files: Vec<PathBuf> = KVM_MODULES
        .iter()
        .map(|m| dir.join(format!("{m}.ko")))
        .collect();
    files.iter().all(|f| f.is_file()).then_some(files)
}

/// Fetch the KVM modules of the kernel cached in `release_dir` (once; with
/// `offline`, only from a package downloaded before) and return them in
/// load order.
pub fn fetch_kvm_modules(release_dir: &Path, offline: bool) -> Result<Vec<PathBuf>, FetchError> {
    if let Some(files) = cached_kvm_modules(release_dir) {
        return Ok(files);
    }
    let release = release_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            FetchError::BadPackage(format!(
                "{} is not a release directory",
                release_dir.display()
            ))
        })?
        .to_string();
    let pkg = package(&release);
    let deb = match cached_deb(&pkg) {
        Some(deb) => deb,
        None if offline => {
            return Err(FetchError::Offline(format!(
                "--offline, and {pkg} was never downloaded: run `ktstr kernel fetch --kvm-modules` online once"
            )));
        }
        None => {
            let apt = Apt::prepare()?;
            // The lists of a kernel fetch may be older than the archive's
            // pool; an update keeps `apt-get download` from a stale URL.
            apt.update()?;
            let mut debs = apt.download_packages(std::slice::from_ref(&pkg))?;
            debs.pop()
                .ok_or_else(|| FetchError::BadPackage(format!("no {pkg} downloaded")))?
        }
    };
    // The release's lock: one writer of its kvm-modules at a time.
    let kernels = release_dir.parent().unwrap_or(release_dir);
    let _lock = super::store::ReleaseLock::acquire(kernels, &release)?;
    if let Some(files) = cached_kvm_modules(release_dir) {
        return Ok(files);
    }
    install(&deb, &release, release_dir)
}

/// Unpack `deb` into a staging directory, decompress the modules next to
/// it, write the marker and move the result into place.
fn install(deb: &Path, release: &str, release_dir: &Path) -> Result<Vec<PathBuf>, FetchError> {
    let staging = release_dir.join(format!(".kvm-modules-staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    let unpacked = staging.join("unpacked");
    std::fs::create_dir_all(&unpacked).map_err(io(&unpacked))?;
    let result = (|| {
        tracing::info!("unpacking {}", deb.display());
        run(
            std::process::Command::new("dpkg-deb")
                .arg("-x")
                .arg(deb)
                .arg(&unpacked),
            UNPACK_TIMEOUT,
        )?;
        let tree = unpacked
            .join("usr/lib/modules")
            .join(release)
            .join("kernel");
        let out = staging.join("out");
        std::fs::create_dir_all(&out).map_err(io(&out))?;
        for m in KVM_MODULES {
            let src = find_module(&tree, m).ok_or_else(|| {
                FetchError::BadPackage(format!(
                    "no {m}.ko(.xz) under {} in {}",
                    tree.display(),
                    deb.display()
                ))
            })?;
            let dst = out.join(format!("{m}.ko"));
            let bytes = read_module(&src)?;
            std::fs::write(&dst, bytes).map_err(io(&dst))?;
        }
        let marker = out.join(COMPLETE_MARKER);
        std::fs::write(&marker, format!("{release}\n")).map_err(io(&marker))?;
        let dir = release_dir.join(KVM_MODULES_DIR);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        std::fs::rename(&out, &dir).map_err(io(&dir))?;
        cached_kvm_modules(release_dir)
            .ok_or_else(|| FetchError::BadPackage(format!("{} incomplete", dir.display())))
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}

/// `<name>.ko` or `<name>.ko.xz` anywhere under `tree` (bounded: a
/// module tree is a few levels deep).
fn find_module(tree: &Path, name: &str) -> Option<PathBuf> {
    let wanted = [format!("{name}.ko"), format!("{name}.ko.xz")];
    let mut dirs = vec![(tree.to_path_buf(), 0u32)];
    while let Some((dir, depth)) = dirs.pop() {
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = e.path();
            if path.is_dir() && depth < 8 {
                dirs.push((path, depth + 1));
            } else if e
                .file_name()
                .to_str()
                .is_some_and(|n| wanted.iter().any(|w| w == n))
            {
                return Some(path);
            }
        }
    }
    None
}

/// A module's bytes, decompressed when it is `.xz`.
fn read_module(path: &Path) -> Result<Vec<u8>, FetchError> {
    let raw = std::fs::read(path).map_err(io(path))?;
    if path.extension().is_some_and(|e| e == "xz") {
        let mut out = Vec::new();
        lzma_rust2::XzReader::new(raw.as_slice(), true)
            .read_to_end(&mut out)
            .map_err(|e| FetchError::BadPackage(format!("{}: {e}", path.display())))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn xz_modules_are_decompressed_and_found_anywhere_in_the_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("kernel/arch/x86/kvm");
        std::fs::create_dir_all(&dir).unwrap();
        let body = b"\x7fELF a module".repeat(100);
        let mut w =
            lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1)).unwrap();
        w.write_all(&body).unwrap();
        std::fs::write(dir.join("kvm-amd.ko.xz"), w.finish().unwrap()).unwrap();
        std::fs::write(dir.join("kvm.ko"), b"plain").unwrap();
        let amd = find_module(&tmp.path().join("kernel"), "kvm-amd").unwrap();
        assert_eq!(read_module(&amd).unwrap(), body);
        let kvm = find_module(&tmp.path().join("kernel"), "kvm").unwrap();
        assert_eq!(read_module(&kvm).unwrap(), b"plain");
        assert!(find_module(&tmp.path().join("kernel"), "irqbypass").is_none());
    }

    #[test]
    fn a_modules_dir_without_its_marker_is_not_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(KVM_MODULES_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        for m in KVM_MODULES {
            std::fs::write(dir.join(format!("{m}.ko")), b"x").unwrap();
        }
        assert!(cached_kvm_modules(tmp.path()).is_none());
        std::fs::write(dir.join(COMPLETE_MARKER), b"r\n").unwrap();
        let files = cached_kvm_modules(tmp.path()).unwrap();
        assert!(files[0].ends_with("irqbypass.ko") && files[2].ends_with("kvm-amd.ko"));
    }
}
