//! The shared-library closure of a dynamically linked program: its ELF
//! interpreter and every `DT_NEEDED` library, transitively, found the way
//! the dynamic loader would (RPATH/RUNPATH with `$ORIGIN`,
//! `LD_LIBRARY_PATH`, the system directories).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use goblin::elf::Elf;
use goblin::elf::header::EM_X86_64;

/// Bound on the closure's size: a loop in DT_NEEDED, or a pathological
/// program, stops here with an error rather than running away.
const MAX_LIBS: usize = 512;

/// Where the loader looks after RPATH/RUNPATH and `LD_LIBRARY_PATH`
/// (Debian/Ubuntu multiarch first, then the classic directories).
const SYSTEM_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
];

/// What a closure could not be built from.
#[derive(Debug, thiserror::Error)]
pub enum LibsError {
    /// A file could not be read.
    #[error("reading {path}: {err}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// A file is not an x86-64 ELF.
    #[error("{path} is not an x86-64 ELF executable or library: {why}")]
    NotElf {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A needed library is nowhere.
    #[error(
        "{needed} (needed by {by}) was not found in RPATH/RUNPATH, LD_LIBRARY_PATH or {dirs}; install it or add its directory to LD_LIBRARY_PATH"
    )]
    NotFound {
        /// The soname.
        needed: String,
        /// Who needs it.
        by: String,
        /// System directories searched.
        dirs: String,
    },
    /// More libraries than [`MAX_LIBS`].
    #[error("{0} needs more than {MAX_LIBS} shared libraries")]
    TooMany(String),
}

/// A program's runtime needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// `PT_INTERP`: the dynamic loader's path (it must sit there in the
    /// guest too) and the host file to copy.
    pub interp: Option<(String, PathBuf)>,
    /// soname -> host file, for every library needed directly or not.
    pub libs: BTreeMap<String, PathBuf>,
}

/// What one ELF file asks of the loader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deps {
    /// `PT_INTERP`, if any.
    pub interp: Option<String>,
    /// `DT_NEEDED` sonames, in order.
    pub needed: Vec<String>,
    /// RPATH/RUNPATH directories with `$ORIGIN` replaced by `origin`.
    pub search: Vec<PathBuf>,
}

fn deps(path: &Path) -> Result<Deps, LibsError> {
    let bytes = std::fs::read(path).map_err(|err| LibsError::Read {
        path: path.to_path_buf(),
        err,
    })?;
    let origin = path.parent().unwrap_or(Path::new("/"));
    parse_deps(&bytes, origin).map_err(|why| LibsError::NotElf {
        path: path.to_path_buf(),
        why,
    })
}

/// The loader needs of the ELF file `bytes`, found in directory `origin`
/// (for `$ORIGIN`); the error says why it is not an x86-64 ELF. Pure, for
/// the fuzzer.
pub fn parse_deps(bytes: &[u8], origin: &Path) -> Result<Deps, String> {
    let elf = Elf::parse(bytes).map_err(|e| e.to_string())?;
    if !elf.is_64 || elf.header.e_machine != EM_X86_64 {
        return Err("wrong class or machine".into());
    }
    let search = elf
        .rpaths
        .iter()
        .chain(&elf.runpaths)
        .flat_map(|p| p.split(':'))
        .filter(|p| !p.is_empty())
        .map(|p| PathBuf::from(p.replace("$ORIGIN", &origin.to_string_lossy())))
        .collect();
    Ok(Deps {
        interp: elf.interpreter.map(str::to_string),
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        search,
    })
}

/// An x86-64 ELF named `name` in `dirs` (a 32-bit library of the same
/// name in an earlier directory is passed over, as the loader does).
fn find(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| {
        std::fs::read(p)
            .ok()
            .and_then(|b| Elf::parse_header(&b).ok().map(|h| h.e_machine == EM_X86_64))
            .unwrap_or(false)
    })
}

/// The closure of `program`. A static program has an empty one.
pub fn closure(program: &Path) -> Result<Closure, LibsError> {
    let env_dirs: Vec<PathBuf> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .collect();
    let system: Vec<PathBuf> = SYSTEM_DIRS.iter().map(PathBuf::from).collect();
    let mut out = Closure::default();
    let mut queue = VecDeque::from([(program.to_path_buf(), program.display().to_string())]);
    while let Some((path, label)) = queue.pop_front() {
        let d = deps(&path)?;
        if let (None, Some(interp)) = (&out.interp, d.interp) {
            let host = std::fs::canonicalize(&interp).map_err(|err| LibsError::Read {
                path: PathBuf::from(&interp),
                err,
            })?;
            out.interp = Some((interp, host));
        }
        let dirs: Vec<PathBuf> = d
            .search
            .into_iter()
            .chain(env_dirs.iter().cloned())
            .chain(system.iter().cloned())
            .collect();
        for needed in d.needed {
            if out.libs.contains_key(&needed) {
                continue;
            }
            let found = find(&needed, &dirs).ok_or_else(|| LibsError::NotFound {
                needed: needed.clone(),
                by: label.clone(),
                dirs: SYSTEM_DIRS.join(", "),
            })?;
            if out.libs.len() >= MAX_LIBS {
                return Err(LibsError::TooMany(program.display().to_string()));
            }
            out.libs.insert(needed.clone(), found.clone());
            queue.push_back((found, needed));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary itself is a real dynamically linked program: its
    /// closure must hold libc and the loader, as `ldd` would say.
    #[test]
    fn closure_of_a_real_program() {
        let exe = std::env::current_exe().unwrap();
        let c = closure(&exe).unwrap();
        let (interp, host) = c.interp.expect("dynamically linked");
        assert!(interp.contains("ld-linux-x86-64"), "{interp}");
        assert!(host.is_file());
        assert!(c.libs.contains_key("libc.so.6"), "{:?}", c.libs);
        let ldd = std::process::Command::new("ldd")
            .arg(&exe)
            .output()
            .unwrap();
        let ldd = String::from_utf8_lossy(&ldd.stdout);
        for soname in c.libs.keys() {
            assert!(ldd.contains(soname.as_str()), "{soname} not in ldd:\n{ldd}");
        }
    }

    #[test]
    fn bad_programs_say_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let junk = tmp.path().join("junk");
        std::fs::write(&junk, b"#!/bin/sh\necho hi\n").unwrap();
        let e = closure(&junk).unwrap_err();
        assert!(
            matches!(&e, LibsError::NotElf { path, .. } if *path == junk),
            "{e}"
        );
        let missing = tmp.path().join("missing");
        let e = closure(&missing).unwrap_err();
        assert!(
            matches!(&e, LibsError::Read { path, err } if *path == missing && err.kind() == std::io::ErrorKind::NotFound),
            "{e}"
        );
    }
}
