//! Kernel sources for `ktstr kernel build`: a tree the user points at, or
//! Debian's `linux-source-X.Y` package, downloaded with the private apt of
//! the fetcher and unpacked once under `<cache>/sources/<package>_<version>/`
//! (staging directory, marker last, atomic rename: as for kernels).
//!
//! Unpacking is done in-process with the `ar`, `tar` and `lzma-rust2`
//! crates: the package is an ar archive whose `data.tar.xz` holds
//! `usr/src/linux-source-X.Y.tar.xz`, streamed through both xz layers
//! without a temporary 150 MB file, and `tar` refuses paths that leave the
//! destination.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::BuildError;
use crate::kernel::fetch::Apt;
use crate::kernel::store::{self, COMPLETE_MARKER, ReleaseLock};

/// The Debian package holding the source of `major.minor`.
pub fn package_for(version: &str) -> Option<String> {
    let mut parts = version.split(['.', '+', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some(format!("linux-source-{major}.{minor}"))
}

/// A source tree and what identifies it in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTree {
    /// The tree (has `Makefile` and `Kconfig`).
    pub dir: PathBuf,
    /// How it was obtained, for the marker and messages
    /// (`linux-source-6.12 6.12.117-1`, or the tree's path).
    pub identity: String,
    /// Whether ktstr unpacked it (a cached package: a hit of its build is
    /// final) or the user gave it (always rebuilt: make is incremental).
    pub from_package: bool,
}

/// A tree the user gave: checked to be a kernel source tree.
pub fn user_tree(path: &Path) -> Result<SourceTree, BuildError> {
    let dir = path.canonicalize().map_err(super::io(path))?;
    if !dir.join("Makefile").is_file() || !dir.join("Kconfig").is_file() {
        return Err(BuildError::NotASourceTree(dir));
    }
    Ok(SourceTree {
        identity: dir.display().to_string(),
        dir,
        from_package: false,
    })
}

/// `sources/` under the cache.
pub fn sources_dir() -> Result<PathBuf, BuildError> {
    Ok(crate::cache::root()?.join("sources"))
}

/// The unpacked tree of `package` (`linux-source-6.12`): the newest one
/// already unpacked, else downloaded (apt's candidate) and unpacked now.
/// `offline` never contacts the archive.
pub fn debian_tree(package: &str, offline: bool) -> Result<SourceTree, BuildError> {
    let sources = sources_dir()?;
    std::fs::create_dir_all(&sources).map_err(super::io(&sources))?;
    store::sweep_stale_staging(&sources);
    if let Some(t) = unpacked(&sources, package) {
        return Ok(t);
    }
    let deb = match crate::kernel::fetch::cached_deb(package) {
        Some(deb) => deb,
        None if offline => {
            return Err(BuildError::Offline(format!(
                "--offline, and {package} was never downloaded"
            )));
        }
        None => {
            let apt = Apt::prepare().map_err(BuildError::fetch)?;
            apt.update().map_err(BuildError::fetch)?;
            let mut debs = apt
                .download_packages(&[package.to_string()])
                .map_err(BuildError::fetch)?;
            debs.pop().ok_or_else(|| BuildError::Unpack {
                path: PathBuf::from(package),
                reason: "apt downloaded nothing".into(),
            })?
        }
    };
    let name = deb_stem(&deb).ok_or_else(|| BuildError::Unpack {
        path: deb.clone(),
        reason: "not named <package>_<version>_<arch>.deb".into(),
    })?;
    let _lock = ReleaseLock::acquire(&sources, &name)?;
    if let Some(t) = unpacked(&sources, package) {
        return Ok(t);
    }
    let staging = store::staging_dir(&sources, &name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(super::io(&staging))?;
    }
    let result = (|| -> Result<(), BuildError> {
        tracing::info!(
            "unpacking {} (about 1.5 GB; once)",
            deb.file_name().unwrap_or_default().to_string_lossy()
        );
        unpack_source_deb(&deb, &staging)?;
        store::write_synced(&staging.join(COMPLETE_MARKER), name.as_bytes())?;
        let dir = sources.join(&name);
        std::fs::rename(&staging, &dir).map_err(super::io(&dir))?;
        store::sync_dir(&sources)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result?;
    unpacked(&sources, package).ok_or_else(|| BuildError::Unpack {
        path: deb,
        reason: "no linux-source-* directory in it".into(),
    })
}

/// `linux-source-6.12_6.12.117-1_all.deb` -> `linux-source-6.12_6.12.117-1`.
fn deb_stem(deb: &Path) -> Option<String> {
    let name = deb.file_name()?.to_str()?.strip_suffix(".deb")?;
    let (stem, _arch) = name.rsplit_once('_')?;
    stem.contains('_').then(|| stem.to_string())
}

/// The newest complete unpacked tree of `package` under `sources`.
fn unpacked(sources: &Path, package: &str) -> Option<SourceTree> {
    let prefix = format!("{package}_");
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(sources)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let version = name.strip_prefix(&prefix)?.to_string();
            let tree = e.path().join(package);
            (e.path().join(COMPLETE_MARKER).is_file() && tree.join("Makefile").is_file())
                .then_some((version, tree))
        })
        .collect();
    found.sort_by_key(|(v, _)| crate::kernel::version::version_key(v));
    let (version, dir) = found.pop()?;
    Some(SourceTree {
        dir,
        identity: format!("{package} {version}"),
        from_package: true,
    })
}

/// Unpack the kernel tarball inside a `linux-source-*` .deb into `dest`.
pub fn unpack_source_deb(deb: &Path, dest: &Path) -> Result<(), BuildError> {
    let bad = |reason: String| BuildError::Unpack {
        path: deb.to_path_buf(),
        reason,
    };
    let file = File::open(deb).map_err(super::io(deb))?;
    let mut ar = ar::Archive::new(BufReader::new(file));
    while let Some(member) = ar.next_entry() {
        let member = member.map_err(|e| bad(format!("not an ar archive: {e}")))?;
        let id = String::from_utf8_lossy(member.header().identifier()).into_owned();
        let data: Box<dyn Read> = match id.as_str() {
            "data.tar.xz" => Box::new(lzma_rust2::XzReader::new(member, true)),
            "data.tar" => Box::new(member),
            n if n.starts_with("data.tar") => {
                return Err(bad(format!("{n}: only xz-compressed data is supported")));
            }
            _ => continue,
        };
        let mut outer = tar::Archive::new(data);
        for entry in outer.entries().map_err(|e| bad(format!("data.tar: {e}")))? {
            let entry = entry.map_err(|e| bad(format!("data.tar: {e}")))?;
            let path = entry
                .path()
                .map_err(|e| bad(format!("data.tar: {e}")))?
                .into_owned();
            if !is_source_tarball(&path) {
                continue;
            }
            std::fs::create_dir_all(dest).map_err(super::io(dest))?;
            let inner = lzma_rust2::XzReader::new(BufReader::new(entry), true);
            tar::Archive::new(inner)
                .unpack(dest)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            return Ok(());
        }
        return Err(bad(
            "its data has no usr/src/linux-source-*.tar.xz".to_string()
        ));
    }
    Err(bad("no data.tar member".into()))
}

fn is_source_tarball(path: &Path) -> bool {
    path.parent()
        .is_some_and(|p| p.ends_with("usr/src") || p == Path::new("./usr/src"))
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("linux-source-") && n.ends_with(".tar.xz"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A `.tar.xz` of `files` (path, content).
    fn tar_xz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, p, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut w =
            lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1)).unwrap();
        w.write_all(&tar).unwrap();
        w.finish().unwrap()
    }

    /// A .deb in the shape of Debian's linux-source package (made here:
    /// the real one is 153 MB).
    fn deb(data: &[u8]) -> Vec<u8> {
        let mut a = ar::Builder::new(Vec::new());
        for (name, body) in [
            ("debian-binary", b"2.0\n".as_slice()),
            (
                "control.tar.xz",
                tar_xz(&[("./control", b"Package: x\n")]).as_slice(),
            ),
            ("data.tar.xz", data),
        ] {
            let h = ar::Header::new(name.as_bytes().to_vec(), body.len() as u64);
            a.append(&h, body).unwrap();
        }
        a.into_inner().unwrap()
    }

    #[test]
    fn the_inner_tarball_is_unpacked_through_both_xz_layers() {
        let inner = tar_xz(&[
            ("linux-source-6.12/Makefile", b"VERSION = 6\n"),
            ("linux-source-6.12/scripts/x.sh", b"#!/bin/sh\n"),
        ]);
        let data = tar_xz(&[
            ("./usr/share/doc/linux-source-6.12/copyright", b"GPL"),
            ("./usr/src/linux-source-6.12.tar.xz", &inner),
        ]);
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("linux-source-6.12_6.12.117-1_all.deb");
        std::fs::write(&p, deb(&data)).unwrap();
        let out = tmp.path().join("out");
        unpack_source_deb(&p, &out).unwrap();
        assert_eq!(
            std::fs::read(out.join("linux-source-6.12/Makefile")).unwrap(),
            b"VERSION = 6\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("linux-source-6.12/scripts/x.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "scripts stay executable");
        assert_eq!(
            deb_stem(&p).as_deref(),
            Some("linux-source-6.12_6.12.117-1")
        );
    }

    #[test]
    fn a_package_without_the_tarball_or_not_an_ar_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.deb");
        std::fs::write(&p, deb(&tar_xz(&[("./usr/src/README", b"no")]))).unwrap();
        let e = unpack_source_deb(&p, &tmp.path().join("o")).unwrap_err();
        assert!(
            matches!(&e, BuildError::Unpack { reason, .. } if reason.contains("no usr/src/linux-source")),
            "{e}"
        );
        std::fs::write(&p, b"not an archive at all").unwrap();
        let e = unpack_source_deb(&p, &tmp.path().join("o")).unwrap_err();
        assert!(matches!(e, BuildError::Unpack { .. }), "{e}");
    }

    #[test]
    fn versions_name_their_source_package() {
        assert_eq!(package_for("6.12").as_deref(), Some("linux-source-6.12"));
        assert_eq!(
            package_for("6.12.117+deb13").as_deref(),
            Some("linux-source-6.12")
        );
        assert_eq!(package_for("7"), None);
        assert_eq!(package_for("x.y"), None);
    }
}
