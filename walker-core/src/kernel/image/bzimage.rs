//! The x86 boot protocol header of a bzImage and where its compressed
//! payload lies (Documentation/arch/x86/boot.rst).

use super::ImageError;

/// Offset of `setup_sects` (u8).
const SETUP_SECTS: usize = 0x1f1;
/// Offset of the `"HdrS"` magic.
const HEADER: usize = 0x202;
/// Offset of the boot protocol `version` (u16).
const VERSION: usize = 0x206;
/// Offset of `payload_offset` (u32); `payload_length` follows.
const PAYLOAD_OFFSET: usize = 0x248;
/// `payload_offset`/`payload_length` exist since boot protocol 2.08.
const MIN_VERSION: u16 = 0x0208;

/// Whether `bytes` carries the boot protocol magic at 0x202.
pub(super) fn is_bzimage(bytes: &[u8]) -> bool {
    bytes.get(HEADER..HEADER + 4) == Some(b"HdrS")
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// The compressed payload inside a bzImage, found through its setup header.
pub(super) fn payload(bytes: &[u8]) -> Result<&[u8], ImageError> {
    let need = PAYLOAD_OFFSET + 8;
    if bytes.len() < need {
        return Err(ImageError::Truncated {
            what: "boot setup header",
            need: need as u64,
            len: bytes.len() as u64,
        });
    }
    if !is_bzimage(bytes) {
        return Err(ImageError::BadBootMagic);
    }
    let version = bytes
        .get(VERSION..VERSION + 2)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u16::from_le_bytes);
    if version < MIN_VERSION {
        return Err(ImageError::OldBootProtocol { version });
    }
    // 0 means 4 for compatibility with ancient images.
    let setup_sects = match bytes.get(SETUP_SECTS).copied().unwrap_or(0) {
        0 => 4,
        n => u64::from(n),
    };
    let offset = le_u32(bytes, PAYLOAD_OFFSET).unwrap_or(0);
    let length = le_u32(bytes, PAYLOAD_OFFSET + 4).unwrap_or(0);
    // setup_sects <= 255, so this cannot overflow.
    let start = (setup_sects + 1) * 512 + u64::from(offset);
    let end = start + u64::from(length);
    let out_of_bounds = ImageError::PayloadOutOfBounds {
        start,
        length: u64::from(length),
        file_len: bytes.len() as u64,
    };
    if length == 0 {
        return Err(out_of_bounds);
    }
    usize::try_from(start)
        .ok()
        .zip(usize::try_from(end).ok())
        .and_then(|(s, e)| bytes.get(s..e))
        .ok_or(out_of_bounds)
}
