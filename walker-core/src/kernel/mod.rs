//! Knowledge that needs files (feature `embed`): BTF, symbol tables, a
//! vmlinux and ELF core files; kernel images (bzImage extraction) with
//! feature `images`.

pub mod btf;
pub(crate) mod elf;
pub mod elfcore;
#[cfg(feature = "images")]
pub mod image;
pub mod ksyms;
pub mod vmlinux;

use std::fs::File;
use std::io;
use std::path::Path;

/// Open `path` for reading if it is a regular file. A directory, a FIFO
/// (whose open would wait for a writer), a device or a socket is an
/// `InvalidInput` error that says which; the type is checked again on the
/// opened file, so a path swapped meanwhile cannot slip through. (Files in
/// /proc are regular files of size 0.)
pub fn open_regular(path: &Path) -> io::Result<File> {
    open_checked(path, false)
}

fn open_checked(path: &Path, need_bytes: bool) -> io::Result<File> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let refuse = |meta: &std::fs::Metadata| {
        let t = meta.file_type();
        let what = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else if need_bytes && meta.len() == 0 {
            "empty"
        } else {
            return Ok(());
        };
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            std::format!("is {what}, not a file with contents"),
        ))
    };
    refuse(&std::fs::metadata(path)?)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    refuse(&file.metadata()?)?;
    Ok(file)
}

/// Map `path` read-only if [`open_regular`] accepts it and it is not empty.
pub fn map_file(path: &Path) -> io::Result<memmap2::Mmap> {
    let file = open_checked(path, true)?;
    // SAFETY: the map is read-only and private to its owner. A file changed
    // by another process while mapped could show torn bytes (every parser
    // here is panic-free on any bytes) or raise SIGBUS if truncated; ktstr
    // writes its files once and replaces them by rename.
    unsafe { memmap2::Mmap::map(&file) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn only_regular_files_with_contents_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a plain syscall on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        for (p, says) in [
            (dir.path(), "is a directory"),
            (fifo.as_path(), "is a FIFO"),
            (Path::new("/dev/null"), "is a device"),
            (empty.as_path(), "is empty"),
        ] {
            let err = map_file(p).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{}", p.display());
            assert!(err.to_string().contains(says), "{}: {err}", p.display());
        }
        assert_eq!(&map_file(&file).unwrap()[..], b"x");
        assert!(
            open_regular(&empty).is_ok(),
            "/proc files are empty until read"
        );
    }
}
