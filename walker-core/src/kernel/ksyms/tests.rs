use std::vec::Vec;

use zerocopy::{Immutable, IntoBytes};

use super::*;
use crate::kernel::elfcore::testelf::{Ehdr, Shdr};

/// Lines shaped like a 7.x x86-64 /proc/kallsyms (addresses made up).
const KALLSYMS: &[u8] = b"ffffffff9a000000 T _text\n\
ffffffff9a000000 T _stext\n\
ffffffff9b2c3f00 D scx_tasks\n\
ffffffff9b2c4000 b scx_root\n\
ffffffff9c0a1e40 D runqueues\n\
ffffffff9a123450 t helper\n\
ffffffff9a223450 T helper\n\
ffffffff9a323450 t helper\n\
ffffffffc0a01000 t vfat_fill_super\t[vfat]\n\
this is not a symbol line\n\
ffffffff9a0 T\n\
zzzzzzzzzzzzzzzz T bad_addr\n\
1ffffffff9a000000 T too_long_addr\n\
ffffffff9a000000 TT two_letter_type\n\
ffffffff9a000000 T name extra junk\n\
ffffffff9a000000 T not_module notbracketed\n\
\xff\xfe\xfd garbage bytes\n\
\n\
ffffffff9b000000 D jiffies_64\r\n";

#[test]
fn kallsyms_lines_and_garbage() {
    let t = SymbolTable::parse_kallsyms(KALLSYMS, "test kallsyms").unwrap();
    assert_eq!(t.kind(), SymbolSource::Kallsyms);
    assert_eq!(t.get("_text"), Some(0xffff_ffff_9a00_0000));
    assert_eq!(t.get("scx_tasks"), Some(0xffff_ffff_9b2c_3f00));
    assert_eq!(t.get("scx_root"), Some(0xffff_ffff_9b2c_4000));
    assert_eq!(
        t.get("jiffies_64"),
        Some(0xffff_ffff_9b00_0000),
        "CRLF line"
    );
    assert_eq!(
        t.get("helper"),
        Some(0xffff_ffff_9a22_3450),
        "the global wins"
    );
    assert_eq!(
        t.get("vfat_fill_super"),
        None,
        "module symbols are not kept"
    );
    let st = t.stats();
    assert_eq!(st.lines, 18);
    assert_eq!(st.skipped, 8);
    assert_eq!(st.first_skipped_line, Some(10));
    assert_eq!(st.module_symbols, 1);
    assert_eq!(st.duplicates, 2);
    assert_eq!(st.symbols, 7);
    assert_eq!(t.len(), 7);
    let s = t.symbols();
    assert_eq!(s.runqueues, Some(0xffff_ffff_9c0a_1e40));
    assert_eq!(s.text, Some(0xffff_ffff_9a00_0000));
    assert_eq!(s.per_cpu_offset, None);
}

#[test]
fn hidden_addresses_are_reported() {
    let hidden =
        b"0000000000000000 T _text\n0000000000000000 D scx_tasks\n0000000000000000 t x [m]\n";
    let err = SymbolTable::parse_kallsyms(hidden, "/proc/kallsyms").unwrap_err();
    assert!(
        matches!(err, KsymsError::AddressesHidden { count: 2, .. }),
        "{err}"
    );
    assert!(std::format!("{err}").contains("kptr_restrict"));
}

#[test]
fn empty_garbage_and_stub_files_are_errors() {
    assert!(matches!(
        SymbolTable::parse_system_map(b"", "empty"),
        Err(KsymsError::NoSymbols { lines: 0, .. })
    ));
    assert!(matches!(
        SymbolTable::parse_system_map(b"hello\nworld\n", "junk"),
        Err(KsymsError::NoSymbols { lines: 2, .. })
    ));
    // The whole of Debian's placeholder System.map (linux-base package).
    let stub = b"ffffffffffffffff B The real System.map is in the linux-image-7.3.4+deb13-cloud-amd64-dbg package\n";
    let err = SymbolTable::parse_system_map(stub, "System.map").unwrap_err();
    assert!(
        matches!(err, KsymsError::StubSystemMap { ref note, .. } if note.ends_with("-dbg package")),
        "{err}"
    );
    // Arbitrary bytes never panic.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = SymbolTable::parse_kallsyms(&noise, "noise");
}

#[test]
fn require_names_source_and_remedy() {
    let map =
        SymbolTable::parse_system_map(b"ffffffff81000000 T _text\n", "build/System.map").unwrap();
    let err = map.require("scx_tasks").unwrap_err();
    assert_eq!(
        std::format!("{err}"),
        "symbol scx_tasks not found in build/System.map: pass --kallsyms FILE (the guest's /proc/kallsyms)"
    );
    assert_eq!(map.require("_text").unwrap(), 0xffff_ffff_8100_0000);
    let err = require(&map.symbols(), "scx_root", "vmlinux").unwrap_err();
    assert!(
        std::format!("{err}")
            .starts_with("symbol scx_root not found in vmlinux: pass --kallsyms FILE")
    );
}

#[test]
fn kaslr_slide_and_runtime_symbols() {
    let link = SymbolTable::parse_system_map(
        b"ffffffff81000000 T _text\n\
          ffffffff83000000 D scx_tasks\n\
          0000000000021e40 D runqueues\n\
          ffffffff84000000 D jiffies_64\n",
        "System.map",
    )
    .unwrap();
    let run = SymbolTable::parse_kallsyms(
        b"ffffffff9a000000 T _text\nffffffff9d000123 D jiffies_64\n",
        "kallsyms",
    )
    .unwrap();
    assert_eq!(kaslr_slide(&link, &run).unwrap(), 0x1900_0000);
    let s = runtime_symbols(&link, &run).unwrap();
    assert_eq!(s.text, Some(0xffff_ffff_9a00_0000));
    assert_eq!(
        s.scx_tasks,
        Some(0xffff_ffff_9c00_0000),
        "slid link-time address"
    );
    assert_eq!(
        s.runqueues,
        Some(0x21e40),
        "pre-6.15 per-CPU offset does not slide"
    );
    assert_eq!(
        s.jiffies_64,
        Some(0xffff_ffff_9d00_0123),
        "runtime table wins"
    );

    let odd = SymbolTable::parse_kallsyms(b"ffffffff9a000010 T _text\n", "other kallsyms").unwrap();
    assert!(matches!(
        kaslr_slide(&link, &odd),
        Err(KsymsError::KernelMismatch {
            slide: 0x1900_0010,
            ..
        })
    ));
    let no_text = SymbolTable::parse_kallsyms(b"ffffffff9a000010 T stext\n", "k").unwrap();
    assert!(matches!(
        kaslr_slide(&link, &no_text),
        Err(KsymsError::Missing { .. })
    ));
}

#[derive(IntoBytes, Immutable)]
#[repr(C)]
struct Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

/// An ELF with `.strtab`, `.symtab` (`with_symtab`) and `.shstrtab`,
/// written by hand.
fn elf_with_symtab(with_symtab: bool) -> Vec<u8> {
    let strtab = b"\0_text\0scx_tasks\0local_helper\0undefined_sym\0";
    let global = |t: u8| (1 << 4) | t;
    let syms = [
        Sym {
            name: 0,
            info: 0,
            other: 0,
            shndx: 0,
            value: 0,
            size: 0,
        },
        Sym {
            name: 1,
            info: global(0),
            other: 0,
            shndx: 1,
            value: 0xffff_ffff_8100_0000,
            size: 0,
        },
        Sym {
            name: 7,
            info: global(1),
            other: 0,
            shndx: 1,
            value: 0xffff_ffff_8330_0000,
            size: 16,
        },
        Sym {
            name: 17,
            info: 2,
            other: 0,
            shndx: 1,
            value: 0xffff_ffff_8100_1000,
            size: 8,
        },
        Sym {
            name: 30,
            info: global(0),
            other: 0,
            shndx: 0,
            value: 0,
            size: 0,
        },
        Sym {
            name: 1,
            info: 3,
            other: 0,
            shndx: 1,
            value: 0xffff_ffff_8100_0000,
            size: 0,
        }, // STT_SECTION
    ];
    let sym_bytes: Vec<u8> = syms.iter().flat_map(|s| s.as_bytes().to_vec()).collect();
    let shstrtab = b"\0.strtab\0.symtab\0.shstrtab\0";
    let strtab_at = 64;
    let symtab_at = strtab_at + strtab.len();
    let shstr_at = symtab_at + sym_bytes.len();
    let shdrs_at = (shstr_at + shstrtab.len()).next_multiple_of(8);
    let mut shdrs = std::vec![
        Shdr::default(),
        Shdr {
            name: 1,
            sh_type: 3,
            offset: strtab_at as u64,
            size: strtab.len() as u64,
            ..Shdr::default()
        },
    ];
    if with_symtab {
        shdrs.push(Shdr {
            name: 9,
            sh_type: 2,
            offset: symtab_at as u64,
            size: sym_bytes.len() as u64,
            link: 1,
            entsize: 24,
            ..Shdr::default()
        });
    }
    shdrs.push(Shdr {
        name: 17,
        sh_type: 3,
        offset: shstr_at as u64,
        size: shstrtab.len() as u64,
        ..Shdr::default()
    });
    let mut ehdr = Ehdr::x86_64(2, 0, shdrs_at as u64, shdrs.len() as u16);
    ehdr.phoff = 0;
    let mut elf = Vec::new();
    elf.extend_from_slice(ehdr.as_bytes());
    elf.extend_from_slice(strtab);
    elf.extend_from_slice(&sym_bytes);
    elf.extend_from_slice(shstrtab);
    elf.resize(shdrs_at, 0);
    for s in &shdrs {
        elf.extend_from_slice(s.as_bytes());
    }
    elf
}

#[test]
fn symtab_from_elf() {
    let t = SymbolTable::from_elf(&elf_with_symtab(true), "vmlinux").unwrap();
    assert_eq!(t.kind(), SymbolSource::Symtab);
    assert_eq!(t.get("_text"), Some(0xffff_ffff_8100_0000));
    assert_eq!(t.get("scx_tasks"), Some(0xffff_ffff_8330_0000));
    assert_eq!(t.get("local_helper"), Some(0xffff_ffff_8100_1000));
    assert_eq!(t.get("undefined_sym"), None);
    assert_eq!(t.len(), 3);
    let err = SymbolTable::from_elf(&elf_with_symtab(false), "/boot/vmlinux").unwrap_err();
    assert_eq!(
        std::format!("{err}"),
        "no .symtab in /boot/vmlinux (stripped vmlinux): pass --kallsyms or --system-map"
    );
    assert!(matches!(
        SymbolTable::from_elf(b"\x7fELF", "short"),
        Err(KsymsError::Elf { .. })
    ));
}

#[test]
fn files_are_read_with_a_cap_and_named_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("kallsyms");
    std::fs::write(&p, KALLSYMS).unwrap();
    let t = SymbolTable::open_kallsyms(&p).unwrap();
    assert_eq!(t.source(), p.display().to_string());
    let p = dir.path().join("vmlinux");
    std::fs::write(&p, elf_with_symtab(true)).unwrap();
    assert_eq!(
        SymbolTable::open_elf(&p).unwrap().get("_text"),
        Some(0xffff_ffff_8100_0000)
    );
    let missing = dir.path().join("nope");
    let err = SymbolTable::open_system_map(&missing).unwrap_err();
    assert!(matches!(err, KsymsError::Io { .. }));
    assert!(std::format!("{err}").contains("nope"));
}
