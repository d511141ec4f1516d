//! Decompressing a bzImage payload, with a hard cap on the output so a
//! hostile image cannot exhaust memory.
//!
//! The x86 build appends the uncompressed size as a 4-byte little-endian
//! trailer to every payload (`*_with_size` in arch/x86/boot/compressed);
//! gzip's own trailer ends with the same value (ISIZE). It is checked
//! against the limit before decompressing and against the result after.

use std::io::Write;
use std::string::{String, ToString};
use std::vec::Vec;

use super::ImageError;

/// Compression of a bzImage payload that this module can undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// `CONFIG_KERNEL_ZSTD` (Debian, Fedora, Arch ...).
    Zstd,
    /// `CONFIG_KERNEL_XZ` (with the x86 BCJ filter).
    Xz,
    /// `CONFIG_KERNEL_LZMA` (the legacy `.lzma` format).
    Lzma,
    /// `CONFIG_KERNEL_GZIP`.
    Gzip,
    /// `CONFIG_KERNEL_LZ4` (the lz4 "legacy" framing).
    Lz4,
}

impl Compression {
    /// The format's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
        }
    }

    /// The format of `payload`, recognised by its magic bytes.
    pub fn detect(payload: &[u8]) -> Result<Self, ImageError> {
        let starts = |magic: &[u8]| payload.starts_with(magic);
        if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Ok(Compression::Zstd)
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Ok(Compression::Xz)
        } else if starts(&[0x1f, 0x8b]) {
            Ok(Compression::Gzip)
        } else if starts(&LZ4_LEGACY_MAGIC) {
            Ok(Compression::Lz4)
        } else if starts(&[0x5d, 0x00]) {
            Ok(Compression::Lzma)
        } else if starts(b"BZh") {
            Err(ImageError::UnsupportedCompression { format: "bzip2" })
        } else if starts(&[0x89, b'L', b'Z', b'O']) {
            Err(ImageError::UnsupportedCompression { format: "lzo" })
        } else {
            let mut magic = [0u8; 6];
            for (m, b) in magic.iter_mut().zip(payload) {
                *m = *b;
            }
            Err(ImageError::UnknownCompression { magic })
        }
    }
}

impl core::fmt::Display for Compression {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// Every lz4 legacy chunk decompresses to at most 8 MiB.
const LZ4_LEGACY_CHUNK: usize = 8 << 20;
/// `LZ4_COMPRESSBOUND(8 MiB)`: no valid chunk is larger.
const LZ4_LEGACY_MAX_COMPRESSED: usize = LZ4_LEGACY_CHUNK + LZ4_LEGACY_CHUNK / 255 + 16;

/// A `Write` into a `Vec` that refuses to grow past `limit`.
struct Capped {
    out: Vec<u8>,
    limit: usize,
    hit_limit: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len().saturating_add(buf.len()) > self.limit {
            self.hit_limit = true;
            return Err(std::io::Error::other("decompressed size limit reached"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Decompress a bzImage `payload` of format `compression`, producing at most
/// `limit` bytes.
pub(super) fn decompress(
    payload: &[u8],
    compression: Compression,
    limit: usize,
) -> Result<Vec<u8>, ImageError> {
    let declared = payload
        .len()
        .checked_sub(4)
        .and_then(|at| payload.get(at..))
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or(ImageError::Truncated {
            what: "compressed payload",
            need: 4,
            len: payload.len() as u64,
        })?;
    let declared_len = usize::try_from(declared).unwrap_or(usize::MAX);
    if declared_len > limit {
        return Err(ImageError::TooLarge {
            what: "declared uncompressed size",
            size: u64::from(declared),
            limit: limit as u64,
        });
    }
    let mut sink = Capped {
        out: Vec::with_capacity(declared_len),
        limit,
        hit_limit: false,
    };
    let mem_limit_kib = u32::try_from(limit / 1024).unwrap_or(u32::MAX);
    let result = match compression {
        Compression::Zstd => {
            check_zstd_window(payload, limit)?;
            ruzstd::decoding::StreamingDecoder::new(payload)
                .map_err(std::io::Error::other)
                .and_then(|mut r| std::io::copy(&mut r, &mut sink))
        }
        Compression::Xz => std::io::copy(
            &mut lzma_rust2::XzReader::new_mem_limit(payload, false, mem_limit_kib),
            &mut sink,
        ),
        Compression::Lzma => lzma_rust2::LzmaReader::new_mem_limit(payload, mem_limit_kib, None)
            .and_then(|mut r| std::io::copy(&mut r, &mut sink)),
        Compression::Gzip => std::io::copy(&mut flate2::read::GzDecoder::new(payload), &mut sink),
        Compression::Lz4 => lz4_legacy(payload, &mut sink).map(|()| 0),
    };
    if let Err(e) = result {
        return Err(if sink.hit_limit {
            ImageError::TooLarge {
                what: "decompressed payload",
                size: sink.out.len() as u64,
                limit: limit as u64,
            }
        } else if e.kind() == std::io::ErrorKind::OutOfMemory {
            // lzma-rust2's verdict on a dictionary beyond `mem_limit_kib`.
            ImageError::DictionaryTooLarge {
                format: compression,
                limit: limit as u64,
            }
        } else {
            ImageError::Decompress {
                format: compression,
                detail: e.to_string(),
            }
        });
    }
    if sink.out.len() != declared_len {
        return Err(ImageError::SizeMismatch {
            format: compression,
            declared: u64::from(declared),
            got: sink.out.len() as u64,
        });
    }
    Ok(sink.out)
}

/// Refuse zstd frames whose window (which the decoder allocates up front)
/// exceeds `limit`. Frame header layout: RFC 8878 section 3.1.1.1.
fn check_zstd_window(payload: &[u8], limit: usize) -> Result<(), ImageError> {
    let bad = |detail: &str| ImageError::Decompress {
        format: Compression::Zstd,
        detail: detail.to_string(),
    };
    let fhd = *payload
        .get(4)
        .ok_or_else(|| bad("frame header is cut off"))?;
    let single_segment = fhd & 0x20 != 0;
    let window = if single_segment {
        // The window is the content size, stored after an optional dict id.
        let dict_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
        let fcs_len = [1usize, 2, 4, 8][usize::from(fhd >> 6)];
        let at = 5 + dict_len;
        let field = payload
            .get(at..at + fcs_len)
            .ok_or_else(|| bad("frame header is cut off"))?;
        let mut raw = [0u8; 8];
        for (r, b) in raw.iter_mut().zip(field) {
            *r = *b;
        }
        let fcs = u64::from_le_bytes(raw);
        if fcs_len == 2 { fcs + 256 } else { fcs }
    } else {
        let wd = *payload
            .get(5)
            .ok_or_else(|| bad("frame header is cut off"))?;
        let log = 10 + u32::from(wd >> 3);
        let base = 1u64 << log;
        base + (base / 8) * u64::from(wd & 7)
    };
    if window > limit as u64 {
        return Err(ImageError::TooLarge {
            what: "zstd window",
            size: window,
            limit: limit as u64,
        });
    }
    Ok(())
}

/// The lz4 legacy format the kernel uses (lib/decompress_unlz4.c): the
/// magic, then chunks of `[u32 LE compressed length][lz4 block]`, each
/// decompressing to at most 8 MiB; the magic may repeat (concatenated
/// streams), and the 4-byte size trailer ends the payload.
fn lz4_legacy(payload: &[u8], sink: &mut Capped) -> std::io::Result<()> {
    let bad = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    let mut rest = payload
        .strip_prefix(&LZ4_LEGACY_MAGIC[..])
        .ok_or_else(|| bad("missing lz4 legacy magic".into()))?;
    let mut chunk = Vec::new();
    let mut chunks = 0usize;
    // Each iteration consumes at least 4 bytes.
    while rest.len() >= 4 {
        if rest.len() == 4 && chunks > 0 {
            return Ok(()); // the size trailer
        }
        let (len_bytes, after) = rest.split_at(4);
        let len = u32::from_le_bytes(
            len_bytes
                .try_into()
                .map_err(|_| bad("short length".into()))?,
        );
        if len_bytes == LZ4_LEGACY_MAGIC {
            rest = after;
            continue;
        }
        let len = usize::try_from(len).map_err(|_| bad("chunk length overflows".into()))?;
        if len > LZ4_LEGACY_MAX_COMPRESSED {
            return Err(bad(std::format!(
                "chunk {chunks} claims {len} compressed bytes, more than an 8 MiB chunk can need"
            )));
        }
        let block = after.get(..len).ok_or_else(|| {
            bad(std::format!(
                "chunk {chunks} is cut off ({len} bytes claimed)"
            ))
        })?;
        if chunk.is_empty() {
            chunk.resize(LZ4_LEGACY_CHUNK, 0);
        }
        let n = lz4_flex::block::decompress_into(block, &mut chunk)
            .map_err(|e| bad(std::format!("chunk {chunks}: {e}")))?;
        sink.write_all(chunk.get(..n).unwrap_or_default())?;
        rest = after.get(len..).unwrap_or_default();
        chunks += 1;
    }
    if chunks == 0 {
        return Err(bad("no lz4 chunks".into()));
    }
    if rest.is_empty() {
        Ok(())
    } else {
        Err(bad(std::format!(
            "{} stray bytes after the last chunk",
            rest.len()
        )))
    }
}
