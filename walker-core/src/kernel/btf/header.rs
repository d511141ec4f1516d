//! Our own check of the BTF header before btf-rs sees the data.
//!
//! btf-rs trusts `type_len`/`str_len` to size its caches (up to 16 MiB each
//! per parse); checking that both sections lie inside the input first keeps
//! what a few hostile bytes can make it allocate proportional to their size.

use std::format;
use std::string::String;

/// Bytes of the fixed part of `struct btf_header` (newer kernels may set
/// a larger `hdr_len`; the extra fields are not needed here).
const HEADER_LEN: u32 = 24;

/// Check magic, version, flags and that the type and string sections lie
/// within `bytes`. Returns `bytes` on success, or what is wrong.
pub(super) fn check(bytes: &[u8]) -> Result<&[u8], String> {
    let big_endian = match bytes.get(..2) {
        Some([0x9f, 0xeb]) => false,
        Some([0xeb, 0x9f]) => true,
        _ => return Err(String::from("no BTF magic 0xeB9F at the start")),
    };
    let word = |at: usize| -> Result<u32, String> {
        let raw: [u8; 4] = bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                format!(
                    "truncated: {} bytes, the header needs {HEADER_LEN}",
                    bytes.len()
                )
            })?;
        Ok(if big_endian {
            u32::from_be_bytes(raw)
        } else {
            u32::from_le_bytes(raw)
        })
    };
    let version = bytes.get(2).copied().unwrap_or_default();
    let flags = bytes.get(3).copied().unwrap_or_default();
    let hdr_len = word(4)?;
    let (type_off, type_len, str_off, str_len) = (word(8)?, word(12)?, word(16)?, word(20)?);
    if version != 1 {
        return Err(format!("BTF version {version}, only version 1 exists"));
    }
    if flags != 0 {
        return Err(format!("BTF header flags {flags:#x}, expected 0"));
    }
    let len = bytes.len() as u64;
    if hdr_len < HEADER_LEN || u64::from(hdr_len) > len {
        return Err(format!(
            "header length {hdr_len} outside {HEADER_LEN}..={len}"
        ));
    }
    for (name, off, size) in [("type", type_off, type_len), ("string", str_off, str_len)] {
        let start = u64::from(hdr_len) + u64::from(off);
        let end = start + u64::from(size);
        if end > len {
            return Err(format!(
                "{name} section {start}..{end} runs past the end of the data ({len} bytes)"
            ));
        }
    }
    let strings_start = u64::from(hdr_len) + u64::from(str_off);
    let first = usize::try_from(strings_start)
        .ok()
        .and_then(|at| bytes.get(at));
    if str_len == 0 || first != Some(&0) {
        return Err(String::from(
            "the string section does not start with the empty string",
        ));
    }
    Ok(bytes)
}
