use std::format;
use std::string::String;
use std::vec::Vec;

use super::encode::{Style, encode};
use super::*;

const BASE: u64 = 0xffff_ffff_8220_0000;

fn names(n: usize) -> Vec<(u8, String, u64)> {
    (0..n)
        .map(|i| {
            let name = match i {
                3 => "scx_tasks".into(),
                7 => "nr_cpu_ids".into(),
                300 => "runqueues".into(),
                _ => format!("sym_{i}_{}", "x".repeat(i % 150)),
            };
            (
                b"tTdDbr"[i % 6],
                name,
                0xffff_ffff_8100_0000 + 16 * i as u64,
            )
        })
        .collect()
}

fn table(n: usize, pad: usize) -> (Vec<u8>, Vec<(u8, String, u64)>) {
    table_in(n, pad, Style::Aligned)
}

fn table_in(n: usize, pad: usize, style: Style) -> (Vec<u8>, Vec<(u8, String, u64)>) {
    let syms = names(n);
    let refs: Vec<(u8, &str, u64)> = syms.iter().map(|(t, s, a)| (*t, s.as_str(), *a)).collect();
    // Unrelated data around the tables, as in .rodata.
    let mut d = std::vec![0x5au8; pad];
    d.extend(encode(BASE + pad as u64, &refs, style));
    d.extend(std::vec![0xa5u8; 100]);
    (d, syms)
}

#[test]
fn finds_and_decodes_every_symbol() {
    for (n, style, pad) in [
        (1, Style::Aligned, 4096),
        (255, Style::Aligned, 4096),
        (256, Style::Aligned, 4096),
        (257, Style::Aligned, 4096),
        (1000, Style::Aligned, 4096),
        (1, Style::Packed, 4100),
        (257, Style::Packed, 4100),
        (1000, Style::Packed, 4096),
    ] {
        let (d, syms) = table_in(n, pad, style);
        let k = Kallsyms::find(&d, BASE).unwrap_or_else(|e| panic!("{n} symbols: {e}"));
        assert_eq!(k.len() as usize, n);
        let mut seen = Vec::new();
        k.for_each(|t, name, a| {
            seen.push((t, String::from_utf8(name.to_vec()).unwrap(), a));
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(seen, syms);
        assert_eq!(k.locations().num_syms, BASE + pad as u64);
        match style {
            Style::Aligned => assert_eq!(k.encoding(), Encoding::RelativeBase(syms[0].2)),
            Style::Packed => assert_eq!(k.encoding(), Encoding::PcRelative),
        }
    }
}

#[test]
fn symbols_fills_the_known_names() {
    let (d, syms) = table(400, 64);
    let k = Kallsyms::find(&d, BASE).unwrap();
    let s = k.symbols().unwrap();
    assert_eq!(s.scx_tasks, Some(syms[3].2));
    assert_eq!(s.nr_cpu_ids, Some(syms[7].2));
    assert_eq!(s.runqueues, Some(syms[300].2));
    assert_eq!(s.scx_root, None);
    assert_eq!(k.lookup("sym_9_xxxxxxxxx").unwrap(), Some(syms[9].2));
    assert_eq!(k.lookup("nope").unwrap(), None);
}

#[test]
fn damaged_tables_are_errors_not_panics() {
    let (d, _) = table(600, 256);
    let k = Kallsyms::find(&d, BASE).unwrap();
    let loc = k.locations();
    // Each table damaged in turn: the count, a marker, a token index entry.
    for va in [
        loc.num_syms,
        loc.markers + 4,
        loc.token_index + 20,
        loc.names + 1,
    ] {
        let mut bad = d.clone();
        let at = (va - BASE) as usize;
        bad[at] ^= 0x40;
        let r = Kallsyms::find(&bad, BASE);
        if let Ok(k) = r {
            // A damaged name may still parse; then it decodes or fails cleanly.
            let _ = k.for_each(|_, _, _| ControlFlow::Continue(()));
        }
    }
    // Truncated anywhere.
    for cut in (0..d.len()).step_by(97) {
        let _ = Kallsyms::find(&d[..cut], BASE);
    }
    assert!(Kallsyms::find(&d[..loc.token_table as usize - BASE as usize], BASE).is_err());
}

#[test]
fn a_misaligned_base_finds_nothing_rather_than_garbage() {
    let (d, _) = table(300, 64);
    assert!(Kallsyms::find(&d, BASE + 4).is_err());
}
