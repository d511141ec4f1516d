//! Kernel images: a bzImage, a vmlinux ELF, or a kernel build directory,
//! turned into the vmlinux ELF bytes that a PVH loader and the symbol/BTF
//! readers need.
//!
//! A vmlinux is memory-mapped; a bzImage's payload is decompressed into
//! memory, with its size capped ([`DEFAULT_MAX_VMLINUX`]) so a hostile image
//! cannot exhaust memory.

mod bzimage;
mod decompress;
use super::elf;

use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;

pub use decompress::Compression;

/// Largest vmlinux a bzImage may decompress to by default. Distribution
/// kernels are < 100 MiB; debug builds with everything inlined stay well
/// under this.
pub const DEFAULT_MAX_VMLINUX: usize = 512 << 20;

/// Why a kernel image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading or writing a file failed.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A directory holds none of the files a kernel build leaves.
    #[error(
        "no kernel image in {}: looked for {}; build the kernel first or pass a bzImage or vmlinux path",
        dir.display(),
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and ")
    )]
    NotFoundInDir {
        /// The directory.
        dir: PathBuf,
        /// The paths that were tried, in order.
        tried: Vec<PathBuf>,
    },
    /// Neither an ELF nor a bzImage.
    #[error(
        "{} is neither a vmlinux ELF nor a bzImage (no \"HdrS\" boot header at 0x202); \
         it starts with {magic:02x?}",
        path.display()
    )]
    NotAKernel {
        /// The file.
        path: PathBuf,
        /// Its first bytes.
        magic: [u8; 4],
    },
    /// The data ends before something it must contain.
    #[error("truncated image: the {what} needs {need} bytes but only {len} are there")]
    Truncated {
        /// What was cut off.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes present.
        len: u64,
    },
    /// No boot protocol magic.
    #[error("no \"HdrS\" boot header magic at 0x202: not a bzImage")]
    BadBootMagic,
    /// Boot protocol too old to say where the payload is.
    #[error(
        "boot protocol {}.{:02} predates 2.08, which added payload_offset/payload_length: \
         cannot locate the compressed kernel; pass the build's vmlinux instead",
        version >> 8,
        version & 0xff
    )]
    OldBootProtocol {
        /// The header's `version` field.
        version: u16,
    },
    /// `payload_offset`/`payload_length` point outside the file.
    #[error(
        "the bzImage payload at {start:#x}+{length:#x} does not fit in the {file_len:#x}-byte \
         image: the file is truncated or corrupt"
    )]
    PayloadOutOfBounds {
        /// Payload start offset.
        start: u64,
        /// Payload length.
        length: u64,
        /// Image length.
        file_len: u64,
    },
    /// A payload format that is recognised but not supported.
    #[error(
        "the bzImage payload is {format}-compressed, which ktstr cannot decompress \
         (it reads zstd, xz, lzma, gzip and lz4): rebuild with CONFIG_KERNEL_ZSTD=y or pass the build's vmlinux"
    )]
    UnsupportedCompression {
        /// The format's name.
        format: &'static str,
    },
    /// Payload magic matches no known format.
    #[error(
        "the bzImage payload starts with {magic:02x?}, which is no compression format ktstr knows"
    )]
    UnknownCompression {
        /// The payload's first bytes.
        magic: [u8; 6],
    },
    /// The decompressor rejected the payload.
    #[error("cannot decompress the {format} payload: {detail}")]
    Decompress {
        /// The payload format.
        format: Compression,
        /// What the decompressor said.
        detail: String,
    },
    /// Something would exceed the size limit.
    #[error(
        "{what} of {size} bytes exceeds the limit of {limit} bytes: the image is corrupt, \
         or raise the limit if this kernel really is that large"
    )]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An xz/lzma dictionary would need more memory than the limit.
    #[error(
        "the {format} payload's dictionary needs more memory than the limit of {limit} bytes: \
         the image is corrupt, or raise the limit"
    )]
    DictionaryTooLarge {
        /// The payload format.
        format: Compression,
        /// The limit.
        limit: u64,
    },
    /// The output length disagrees with the payload's size trailer.
    #[error(
        "the {format} payload decompressed to {got} bytes but its trailer declares {declared}: corrupt image"
    )]
    SizeMismatch {
        /// The payload format.
        format: Compression,
        /// Size from the trailer.
        declared: u64,
        /// Size produced.
        got: u64,
    },
    /// The result is not an x86-64 ELF.
    #[error("{what} is not an x86-64 vmlinux: {detail}")]
    NotX86_64Elf {
        /// Which data (a path, or "the decompressed payload").
        what: String,
        /// What is wrong with it.
        detail: String,
    },
}

/// What a kernel image was before it became a vmlinux ELF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// A bzImage whose payload was decompressed.
    BzImage {
        /// The payload's compression.
        compression: Compression,
    },
    /// Already a vmlinux ELF.
    Elf,
}

#[derive(Debug)]
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// A kernel as a vmlinux ELF, whatever form it was given in.
#[derive(Debug)]
pub struct KernelImage {
    source: PathBuf,
    kind: ImageKind,
    elf: Storage,
}

/// What [`KernelImage::source`] says for images built from bytes.
const IN_MEMORY: &str = "(in-memory image)";

impl KernelImage {
    /// Open a bzImage, a vmlinux ELF, or a kernel build directory
    /// (`<dir>/vmlinux`, else `<dir>/arch/x86/boot/bzImage`), decompressing
    /// at most [`DEFAULT_MAX_VMLINUX`] bytes.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ImageError> {
        Self::open_with_limit(path, DEFAULT_MAX_VMLINUX)
    }

    /// [`KernelImage::open`] with a different decompression limit.
    pub fn open_with_limit(path: impl AsRef<Path>, max_vmlinux: usize) -> Result<Self, ImageError> {
        let path = path.as_ref();
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ImageError::Io { path: p, source }
        };
        let meta = std::fs::metadata(path).map_err(io(path))?;
        let file_path = if meta.is_dir() {
            let tried = [path.join("vmlinux"), path.join("arch/x86/boot/bzImage")];
            match tried.iter().find(|p| p.is_file()) {
                Some(p) => p.clone(),
                None => {
                    return Err(ImageError::NotFoundInDir {
                        dir: path.to_path_buf(),
                        tried: tried.to_vec(),
                    });
                }
            }
        } else {
            path.to_path_buf()
        };
        let map = crate::kernel::map_file(&file_path).map_err(io(&file_path))?;
        if map.starts_with(b"\x7fELF") {
            if let Some(detail) = elf::not_x86_64_elf(&map) {
                return Err(ImageError::NotX86_64Elf {
                    what: file_path.display().to_string(),
                    detail,
                });
            }
            return Ok(Self {
                source: file_path,
                kind: ImageKind::Elf,
                elf: Storage::Mapped(map),
            });
        }
        if !bzimage::is_bzimage(&map) {
            return Err(not_a_kernel(file_path, &map));
        }
        let (vmlinux, compression) = extract(&map, max_vmlinux)?;
        Ok(Self {
            source: file_path,
            kind: ImageKind::BzImage { compression },
            elf: Storage::Owned(vmlinux),
        })
    }

    /// An image from bytes already in memory (a bzImage or a vmlinux ELF,
    /// which is copied), decompressing at most `max_vmlinux` bytes.
    pub fn from_bytes(bytes: &[u8], max_vmlinux: usize) -> Result<Self, ImageError> {
        let source = PathBuf::from(IN_MEMORY);
        if bytes.starts_with(b"\x7fELF") {
            if let Some(detail) = elf::not_x86_64_elf(bytes) {
                return Err(ImageError::NotX86_64Elf {
                    what: String::from(IN_MEMORY),
                    detail,
                });
            }
            return Ok(Self {
                source,
                kind: ImageKind::Elf,
                elf: Storage::Owned(bytes.to_vec()),
            });
        }
        if !bzimage::is_bzimage(bytes) {
            return Err(not_a_kernel(source, bytes));
        }
        let (vmlinux, compression) = extract(bytes, max_vmlinux)?;
        Ok(Self {
            source,
            kind: ImageKind::BzImage { compression },
            elf: Storage::Owned(vmlinux),
        })
    }

    /// The vmlinux ELF.
    pub fn elf_bytes(&self) -> &[u8] {
        match &self.elf {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }

    /// What the image was given as.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// The file the image came from (inside a build directory, the file
    /// that was found there).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The kernel release (`uname -r`), from the `Linux version <release> `
    /// banner in the image's `.rodata` (or anywhere in the ELF if it has no
    /// such section).
    pub fn release(&self) -> Option<String> {
        let bytes = self.elf_bytes();
        elf::section(bytes, ".rodata")
            .and_then(banner_release)
            .or_else(|| banner_release(bytes))
    }

    /// The 32-bit PVH entry point (`XEN_ELFNOTE_PHYS32_ENTRY`), present when
    /// the kernel was built with `CONFIG_PVH`.
    pub fn pvh_entry(&self) -> Option<u32> {
        const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
        elf::notes(self.elf_bytes())
            .into_iter()
            .find(|n| n.name == b"Xen" && n.n_type == XEN_ELFNOTE_PHYS32_ENTRY)
            .and_then(|n| match n.desc.len() {
                4 => n.desc.try_into().ok().map(u32::from_le_bytes),
                // Some kernels emit the entry as a 64-bit value.
                8 => n
                    .desc
                    .try_into()
                    .ok()
                    .map(u64::from_le_bytes)
                    .and_then(|v| u32::try_from(v).ok()),
                _ => None,
            })
    }

    /// Write the vmlinux ELF to `path` (via a temporary file and a rename,
    /// so readers never see a partial file), e.g. to cache a bzImage's
    /// decompressed vmlinux.
    pub fn write_vmlinux(&self, path: impl AsRef<Path>) -> Result<(), ImageError> {
        let path = path.as_ref();
        let mut tmp_name = std::ffi::OsString::from(path.as_os_str());
        tmp_name.push(std::format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        let result = std::fs::write(&tmp, self.elf_bytes())
            .map_err(|source| ImageError::Io {
                path: tmp.clone(),
                source,
            })
            .and_then(|()| {
                std::fs::rename(&tmp, path).map_err(|source| ImageError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Decompress a bzImage's payload into the vmlinux ELF, producing at most
/// [`DEFAULT_MAX_VMLINUX`] bytes.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, ImageError> {
    extract_vmlinux_with_limit(bzimage, DEFAULT_MAX_VMLINUX)
}

/// [`extract_vmlinux`] with an explicit output limit in bytes.
pub fn extract_vmlinux_with_limit(
    bzimage: &[u8],
    max_vmlinux: usize,
) -> Result<Vec<u8>, ImageError> {
    extract(bzimage, max_vmlinux).map(|(v, _)| v)
}

fn extract(bzimage: &[u8], limit: usize) -> Result<(Vec<u8>, Compression), ImageError> {
    let payload = bzimage::payload(bzimage)?;
    let compression = Compression::detect(payload)?;
    let vmlinux = decompress::decompress(payload, compression, limit)?;
    if let Some(detail) = elf::not_x86_64_elf(&vmlinux) {
        return Err(ImageError::NotX86_64Elf {
            what: std::format!("the {compression}-decompressed bzImage payload"),
            detail,
        });
    }
    Ok((vmlinux, compression))
}

fn not_a_kernel(source: PathBuf, bytes: &[u8]) -> ImageError {
    let mut magic = [0u8; 4];
    for (m, b) in magic.iter_mut().zip(bytes) {
        *m = *b;
    }
    ImageError::NotAKernel {
        path: source,
        magic,
    }
}

/// `<release>` from the first `Linux version <release> ` in `bytes`.
fn banner_release(bytes: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    /// `__NEW_UTS_LEN`: the longest release the kernel can report.
    const MAX_RELEASE: usize = 64;
    let mut rest = bytes;
    // Each round consumes at least one byte.
    while let Some(at) = rest.windows(BANNER.len()).position(|w| w == BANNER) {
        let after = rest.get(at + BANNER.len()..)?;
        let len = after
            .iter()
            .take(MAX_RELEASE + 1)
            .position(|&b| b == b' ' || b == 0)
            .unwrap_or(MAX_RELEASE + 1);
        let token = after.get(..len)?;
        if (1..=MAX_RELEASE).contains(&len)
            && token.iter().all(u8::is_ascii_graphic)
            && !token.contains(&b'%')
        {
            return core::str::from_utf8(token).ok().map(String::from);
        }
        rest = after;
    }
    None
}

#[cfg(test)]
mod tests;
