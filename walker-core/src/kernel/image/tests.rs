//! Synthetic bzImages: a fake boot sector and setup header around a payload
//! compressed here with each format's Rust encoder, wrapping a small
//! hand-made x86-64 ELF (a stand-in for a real vmlinux; the real Debian
//! kernel is covered by tests/tests/kernel_image.rs).

use std::io::Write;
use std::vec;
use std::vec::Vec;

use zerocopy::IntoBytes;

use super::*;
use crate::kernel::elfcore::testelf::{Ehdr, Phdr, Shdr, note};

const RELEASE: &str = "6.99.0-ktstr-test";
const PVH_ENTRY: u32 = 0x0100_0160;

/// A small x86-64 ELF with a PVH note, a `.rodata` holding a banner, and
/// some bulk so compressors have something to chew on.
fn fake_vmlinux() -> Vec<u8> {
    let notes = [
        note(b"Xen", 18, &PVH_ENTRY.to_le_bytes()),
        note(b"Linux", 0x100, b"6.99.0-ktstr-test\0"),
    ]
    .concat();
    let mut rodata = b"\0%s version %s (\0Linux version %s\0".to_vec();
    rodata.extend_from_slice(
        std::format!("Linux version {RELEASE} (builder@host) (gcc 14) #1 SMP\n\0").as_bytes(),
    );
    // Bulk: compressible text and less compressible pseudo-random bytes.
    let mut x = 0x1234_5678u32;
    for i in 0..400_000u32 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        rodata.push(if i % 3 == 0 {
            (x >> 16) as u8
        } else {
            b"sched_ext"[i as usize % 9]
        });
    }
    let shstrtab = b"\0.rodata\0.shstrtab\0";
    let notes_at = 64 + 56;
    let rodata_at = notes_at + notes.len();
    let shstr_at = rodata_at + rodata.len();
    let shdrs_at = (shstr_at + shstrtab.len()).next_multiple_of(8);
    let ehdr = Ehdr::x86_64(2, 1, shdrs_at as u64, 3);
    let phdr = Phdr {
        p_type: 4,
        flags: 4,
        offset: notes_at as u64,
        vaddr: 0xffff_ffff_8200_0000,
        paddr: 0x0200_0000,
        filesz: notes.len() as u64,
        memsz: notes.len() as u64,
        align: 4,
    };
    let shdrs = [
        Shdr::default(),
        Shdr {
            name: 1,
            sh_type: 1,
            addr: 0xffff_ffff_8220_0000,
            offset: rodata_at as u64,
            size: rodata.len() as u64,
            ..Shdr::default()
        },
        Shdr {
            name: 9,
            sh_type: 3,
            offset: shstr_at as u64,
            size: shstrtab.len() as u64,
            ..Shdr::default()
        },
    ];
    let mut elf = Vec::new();
    elf.extend_from_slice(ehdr.as_bytes());
    elf.extend_from_slice(phdr.as_bytes());
    elf.extend_from_slice(&notes);
    elf.extend_from_slice(&rodata);
    elf.extend_from_slice(shstrtab);
    elf.resize(shdrs_at, 0);
    for s in &shdrs {
        elf.extend_from_slice(s.as_bytes());
    }
    elf
}

/// `payload` with the kernel build's 4-byte little-endian size trailer.
fn with_size(mut payload: Vec<u8>, size: usize) -> Vec<u8> {
    payload.extend_from_slice(&(size as u32).to_le_bytes());
    payload
}

fn zstd(data: &[u8]) -> Vec<u8> {
    with_size(
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest),
        data.len(),
    )
}

/// A dictionary small enough that [`output_is_capped`] can set a limit
/// between the decoder's memory needs and the output size.
const SMALL_DICT: u32 = 64 << 10;

/// Like the kernel's `xz --check=crc32 --x86 --lzma2=...`.
fn xz(data: &[u8]) -> Vec<u8> {
    let mut opts = lzma_rust2::XzOptions::with_preset(6);
    opts.lzma_options.dict_size = SMALL_DICT;
    opts.set_check_sum_type(lzma_rust2::CheckType::Crc32);
    opts.prepend_pre_filter(lzma_rust2::FilterType::BcjX86, 0);
    let mut w = lzma_rust2::XzWriter::new(Vec::new(), opts).unwrap();
    w.write_all(data).unwrap();
    with_size(w.finish().unwrap(), data.len())
}

/// Like `lzma -9` reading a pipe: a .lzma header with unknown size and an
/// end marker.
fn lzma(data: &[u8]) -> Vec<u8> {
    let mut opts = lzma_rust2::LzmaOptions::with_preset(6);
    opts.dict_size = SMALL_DICT;
    let mut w = lzma_rust2::LzmaWriter::new_use_header(Vec::new(), &opts, None).unwrap();
    w.write_all(data).unwrap();
    with_size(w.finish().unwrap(), data.len())
}

/// gzip carries its own size trailer (ISIZE); the kernel adds none.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

/// lz4 legacy framing around lz4_flex blocks, in uneven chunks and with the
/// magic repeated once (as concatenated streams have it).
fn lz4(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x02, 0x21, 0x4c, 0x18];
    let (a, rest) = data.split_at(data.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    for (i, chunk) in [a, b, c].into_iter().enumerate() {
        if i == 2 {
            out.extend_from_slice(&[0x02, 0x21, 0x4c, 0x18]);
        }
        let block = lz4_flex::block::compress(chunk);
        out.extend_from_slice(&(block.len() as u32).to_le_bytes());
        out.extend_from_slice(&block);
    }
    with_size(out, data.len())
}

/// A bzImage around `payload`: boot sector, setup header (protocol 2.15),
/// `setup_sects` sectors of setup, then a pretend decompressor stub before
/// the payload, and some bytes after it.
fn bzimage(payload: &[u8], setup_sects: u8) -> Vec<u8> {
    let sects = if setup_sects == 0 {
        4
    } else {
        usize::from(setup_sects)
    };
    let stub = 0x300;
    let mut img = vec![0u8; (sects + 1) * 512];
    img[0x1f1] = setup_sects;
    img[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    img[0x248..0x24c].copy_from_slice(&(stub as u32).to_le_bytes());
    img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    img.extend(std::iter::repeat_n(0xcc, stub));
    img.extend_from_slice(payload);
    img.extend_from_slice(&[0x90; 64]);
    img
}

type Encoder = fn(&[u8]) -> Vec<u8>;
const FORMATS: [(Compression, Encoder); 5] = [
    (Compression::Zstd, zstd),
    (Compression::Xz, xz),
    (Compression::Lzma, lzma),
    (Compression::Gzip, gzip),
    (Compression::Lz4, lz4),
];

#[test]
fn extracts_every_supported_format() {
    let elf = fake_vmlinux();
    for (format, encode) in FORMATS {
        let img = bzimage(&encode(&elf), 27);
        let out = extract_vmlinux(&img).unwrap_or_else(|e| panic!("{format}: {e}"));
        assert!(
            out == elf,
            "{format}: extracted bytes differ from the ELF that was compressed"
        );
        let k = KernelImage::from_bytes(&img, DEFAULT_MAX_VMLINUX).unwrap();
        assert_eq!(
            k.kind(),
            ImageKind::BzImage {
                compression: format
            }
        );
        assert_eq!(k.release().as_deref(), Some(RELEASE), "{format}");
        assert_eq!(k.pvh_entry(), Some(PVH_ENTRY), "{format}");
    }
}

#[test]
fn setup_sects_zero_means_four() {
    let elf = fake_vmlinux();
    let img = bzimage(&gzip(&elf), 0);
    assert!(extract_vmlinux(&img).unwrap() == elf);
}

#[test]
fn elf_passes_through() {
    let elf = fake_vmlinux();
    let k = KernelImage::from_bytes(&elf, DEFAULT_MAX_VMLINUX).unwrap();
    assert_eq!(k.kind(), ImageKind::Elf);
    assert!(k.elf_bytes() == elf.as_slice());
    let mut arm = elf.clone();
    arm[18] = 183;
    assert!(matches!(
        KernelImage::from_bytes(&arm, DEFAULT_MAX_VMLINUX),
        Err(ImageError::NotX86_64Elf { .. })
    ));
}

#[test]
fn bad_headers_are_rejected() {
    let good = bzimage(&gzip(&fake_vmlinux()), 27);
    let mut no_magic = good.clone();
    no_magic[0x202] = b'X';
    assert!(matches!(
        extract_vmlinux(&no_magic),
        Err(ImageError::BadBootMagic)
    ));
    assert!(matches!(
        KernelImage::from_bytes(&no_magic, DEFAULT_MAX_VMLINUX),
        Err(ImageError::NotAKernel { .. })
    ));
    let mut old = good.clone();
    old[0x206..0x208].copy_from_slice(&0x0207u16.to_le_bytes());
    assert!(matches!(
        extract_vmlinux(&old),
        Err(ImageError::OldBootProtocol { version: 0x207 })
    ));
    let mut long = good.clone();
    long[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        extract_vmlinux(&long),
        Err(ImageError::PayloadOutOfBounds { .. })
    ));
    let mut empty = good.clone();
    empty[0x24c..0x250].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(
        extract_vmlinux(&empty),
        Err(ImageError::PayloadOutOfBounds { .. })
    ));
    assert!(matches!(
        extract_vmlinux(&good[..0x240]),
        Err(ImageError::Truncated { .. })
    ));
    assert!(matches!(
        extract_vmlinux(&[]),
        Err(ImageError::Truncated { .. })
    ));
}

#[test]
fn truncated_payloads_fail_cleanly() {
    let elf = fake_vmlinux();
    for (format, encode) in FORMATS {
        let full = encode(&elf);
        // Keep the size trailer but drop the second half of the stream.
        let mut cut = full[..full.len() / 2].to_vec();
        cut.extend_from_slice(&full[full.len() - 4..]);
        match extract_vmlinux(&bzimage(&cut, 27)) {
            Err(ImageError::Decompress { format: f, .. })
            | Err(ImageError::SizeMismatch { format: f, .. }) => {
                assert_eq!(f, format)
            }
            other => panic!("{format}: expected a decompression error, got {other:?}"),
        }
    }
}

#[test]
fn output_is_capped() {
    let elf = fake_vmlinux();
    for (format, encode) in FORMATS {
        let img = bzimage(&encode(&elf), 27);
        // The trailer alone exceeds the limit: refused before decompressing.
        assert!(
            matches!(
                extract_vmlinux_with_limit(&img, elf.len() - 1),
                Err(ImageError::TooLarge {
                    what: "declared uncompressed size" | "zstd window",
                    ..
                })
            ),
            "{format}"
        );
        // A trailer that lies low: decompression stops at the limit.
        let mut lying = encode(&elf);
        let n = lying.len();
        if format != Compression::Gzip {
            lying[n - 4..].copy_from_slice(&100u32.to_le_bytes());
            let limit = elf.len() / 2;
            match extract_vmlinux_with_limit(&bzimage(&lying, 27), limit) {
                Err(ImageError::TooLarge {
                    what: "decompressed payload",
                    size,
                    ..
                }) => {
                    assert!(size <= limit as u64, "{format}")
                }
                // ruzstd's encoder picks a window larger than this limit.
                Err(ImageError::TooLarge {
                    what: "zstd window",
                    ..
                }) if format == Compression::Zstd => {}
                other => panic!("{format}: expected TooLarge, got {other:?}"),
            }
            // Within the limit the lie is caught by the size check.
            assert!(
                matches!(
                    extract_vmlinux(&bzimage(&lying, 27)),
                    Err(ImageError::SizeMismatch { declared: 100, .. })
                ),
                "{format}"
            );
        }
    }
}

#[test]
fn huge_dictionaries_are_refused() {
    let elf = fake_vmlinux();
    for (format, encode) in [(Compression::Xz, xz as Encoder), (Compression::Lzma, lzma)] {
        let img = bzimage(&encode(&elf), 27);
        // Just under what a 64 KiB dictionary needs.
        assert!(
            matches!(
                KernelImage::from_bytes(&img, 60 << 10).map(|_| ()),
                Err(ImageError::TooLarge { .. } | ImageError::DictionaryTooLarge { .. })
            ),
            "{format}"
        );
    }
    // .lzma headers declaring a 1 GiB and a ~4 GiB dictionary: refused
    // before anything is allocated.
    for dict in [1u32 << 30, 0xffff_ff00] {
        let mut hostile = vec![0x5d];
        hostile.extend_from_slice(&dict.to_le_bytes());
        hostile.extend_from_slice(&[0xff; 8]);
        hostile.extend_from_slice(&[0; 16]);
        let img = bzimage(&with_size(hostile, 1 << 20), 27);
        match extract_vmlinux_with_limit(&img, 16 << 20) {
            Err(ImageError::DictionaryTooLarge {
                format: Compression::Lzma,
                ..
            }) => {}
            Err(ImageError::Decompress {
                format: Compression::Lzma,
                ..
            }) if dict == 0xffff_ff00 => {}
            other => panic!("dict {dict:#x}: {other:?}"),
        }
    }
}

#[test]
fn zstd_window_beyond_limit_is_refused_before_allocation() {
    // Frame header: no single-segment flag, window descriptor 0xf8 (2^41 +
    // 7/8 of it): far beyond any limit.
    let payload = with_size(vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 0, 0, 0, 0], 16);
    assert!(matches!(
        extract_vmlinux(&bzimage(&payload, 27)),
        Err(ImageError::TooLarge {
            what: "zstd window",
            ..
        })
    ));
    // Single-segment frame whose content size (the window) is huge.
    let payload = with_size(
        vec![
            0x28, 0xb5, 0x2f, 0xfd, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0,
        ],
        16,
    );
    assert!(matches!(
        extract_vmlinux(&bzimage(&payload, 27)),
        Err(ImageError::TooLarge {
            what: "zstd window",
            ..
        })
    ));
}

#[test]
fn unsupported_and_unknown_formats_are_named() {
    for (magic, name) in [
        (&b"BZh91AY&SY"[..], "bzip2"),
        (&[0x89, b'L', b'Z', b'O', 0, 0x0d][..], "lzo"),
    ] {
        let err = extract_vmlinux(&bzimage(&with_size(magic.to_vec(), 100), 27)).unwrap_err();
        assert!(matches!(err, ImageError::UnsupportedCompression { format } if format == name));
        assert!(std::format!("{err}").contains(name));
    }
    let err =
        extract_vmlinux(&bzimage(&with_size(b"\x7fELF stuff".to_vec(), 100), 27)).unwrap_err();
    assert!(matches!(err, ImageError::UnknownCompression { magic } if &magic == b"\x7fELF s"));
}

#[test]
fn payload_that_is_not_an_elf_is_rejected() {
    let not_elf = vec![0xabu8; 4096];
    let err = extract_vmlinux(&bzimage(&gzip(&not_elf), 27)).unwrap_err();
    assert!(matches!(err, ImageError::NotX86_64Elf { .. }), "{err}");
}

#[test]
fn build_directory_lookup_and_caching() {
    let dir = tempfile::tempdir().unwrap();
    let err = KernelImage::open(dir.path()).unwrap_err();
    let msg = std::format!("{err}");
    assert!(matches!(err, ImageError::NotFoundInDir { ref tried, .. } if tried.len() == 2));
    assert!(
        msg.contains("vmlinux") && msg.contains("arch/x86/boot/bzImage"),
        "{msg}"
    );

    let elf = fake_vmlinux();
    let boot = dir.path().join("arch/x86/boot");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(boot.join("bzImage"), bzimage(&xz(&elf), 27)).unwrap();
    let k = KernelImage::open(dir.path()).unwrap();
    assert_eq!(k.source(), boot.join("bzImage"));
    assert_eq!(
        k.kind(),
        ImageKind::BzImage {
            compression: Compression::Xz
        }
    );
    // Caching the derived vmlinux makes the directory resolve to it.
    k.write_vmlinux(dir.path().join("vmlinux")).unwrap();
    let k2 = KernelImage::open(dir.path()).unwrap();
    assert_eq!(k2.kind(), ImageKind::Elf);
    assert_eq!(k2.source(), dir.path().join("vmlinux"));
    assert!(k2.elf_bytes() == elf.as_slice());

    std::fs::write(dir.path().join("junk"), b"#!/bin/sh\n").unwrap();
    assert!(matches!(
        KernelImage::open(dir.path().join("junk")),
        Err(ImageError::NotAKernel { magic, .. }) if &magic == b"#!/b"
    ));
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    let err = KernelImage::open(dir.path().join("empty")).unwrap_err();
    assert!(
        matches!(&err, ImageError::Io { source, .. } if source.to_string().contains("is empty")),
        "{err}"
    );
    assert!(matches!(
        KernelImage::open(dir.path().join("missing")),
        Err(ImageError::Io { .. })
    ));
}

#[test]
fn banner_release_skips_format_strings_and_junk() {
    assert_eq!(
        banner_release(b"xxLinux version %s\0Linux version 7.3.4 (a)"),
        Some("7.3.4".into())
    );
    assert_eq!(banner_release(b"Linux version \0Linux version "), None);
    let long = [&b"Linux version "[..], &[b'a'; 65]].concat();
    assert_eq!(banner_release(&long), None);
    assert_eq!(banner_release(b""), None);
}
