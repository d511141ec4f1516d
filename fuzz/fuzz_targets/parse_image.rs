//! Arbitrary bytes as a kernel image: never a panic, never more memory than
//! the limit allows.
//!
//! The first byte picks how the rest is used: as a whole file, or as a
//! payload inside a well-formed boot header (optionally behind one of the
//! compression magics) so the decompressors see the bytes.
#![no_main]

use ktstr_walker::kernel::image::{KernelImage, extract_vmlinux_with_limit};
use libfuzzer_sys::fuzz_target;

/// Small enough for many executions per second, large enough for real
/// decompressor paths (windows, dictionaries, lz4 chunks).
const LIMIT: usize = 16 << 20;

const MAGICS: [&[u8]; 6] = [
    &[],
    &[0x28, 0xb5, 0x2f, 0xfd],
    &[0xfd, b'7', b'z', b'X', b'Z', 0x00],
    &[0x1f, 0x8b, 0x08],
    &[0x02, 0x21, 0x4c, 0x18],
    &[0x5d, 0x00],
];

fn bzimage(mode: u8, rest: &[u8]) -> Vec<u8> {
    let magic = MAGICS[usize::from(mode >> 1) % MAGICS.len()];
    let payload_len = (magic.len() + rest.len()) as u32;
    let mut img = vec![0u8; 1024];
    img[0x1f1] = 1;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x24c..0x250].copy_from_slice(&payload_len.to_le_bytes());
    img.extend_from_slice(magic);
    img.extend_from_slice(rest);
    img
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let img = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        bzimage(mode, rest)
    };
    if let Ok(vmlinux) = extract_vmlinux_with_limit(&img, LIMIT) {
        assert!(vmlinux.len() <= LIMIT);
    }
    if let Ok(k) = KernelImage::from_bytes(&img, LIMIT) {
        assert!(k.elf_bytes().len() <= LIMIT.max(img.len()));
        let _ = k.release();
        let _ = k.pvh_entry();
        let _ = k.kind();
    }
});
