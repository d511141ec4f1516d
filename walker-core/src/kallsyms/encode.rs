//! Kallsyms tables as `scripts/kallsyms` (6.4+) lays them out, for tests,
//! fuzzing seeds and synthetic guests.

use std::vec::Vec;

/// Which kernel's layout to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// 6.4 to 6.x: labels 8-byte aligned, `relative_base + offset`.
    Aligned,
    /// 7.x: labels at their natural alignment, PC-relative offsets, no
    /// relative base.
    Packed,
}

/// Symbols `(type, name, address)` sorted by address, encoded at kernel
/// virtual address `base` (8-byte aligned): the bytes of `.rodata` from
/// `kallsyms_num_syms` to `kallsyms_relative_base`. Two byte values that
/// no name uses become multi-character tokens, so that decoding expands
/// tokens rather than copying bytes.
pub fn encode(base: u64, syms: &[(u8, &str, u64)], style: Style) -> Vec<u8> {
    let mut used = [false; 256];
    for b in b"0123456789" {
        used[usize::from(*b)] = true;
    }
    for (t, n, _) in syms {
        used[usize::from(*t)] = true;
        for b in n.bytes() {
            used[usize::from(b)] = true;
        }
    }
    let mut tokens: Vec<Vec<u8>> = (0..256usize)
        .map(|i| {
            if used[i] {
                std::vec![i as u8]
            } else {
                std::vec![b'~', b'a' + (i % 26) as u8, b'A' + (i / 26 % 26) as u8]
            }
        })
        .collect();
    // Two real multi-character tokens, where names use them.
    let multi: [&[u8]; 2] = [b"scx_", b"_ids"];
    let free: Vec<usize> = (1..256).filter(|i| !used[*i]).take(2).collect();
    for (slot, tok) in free.iter().zip(multi) {
        tokens[*slot] = tok.to_vec();
    }
    let encode_name = |t: u8, n: &str| -> Vec<u8> {
        let full: Vec<u8> = core::iter::once(t).chain(n.bytes()).collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < full.len() {
            let hit = free
                .iter()
                .find(|s| full[i..].starts_with(&tokens[**s]))
                .copied();
            match hit {
                Some(s) => {
                    out.push(s as u8);
                    i += tokens[s].len();
                }
                None => {
                    out.push(full[i]);
                    i += 1;
                }
            }
        }
        out
    };
    // Up to 8 (Aligned) or to the next table's natural alignment (Packed).
    let align_to = |v: &mut Vec<u8>, natural: usize| {
        let a = if style == Style::Aligned { 8 } else { natural };
        while !(base as usize + v.len()).is_multiple_of(a) {
            v.push(0);
        }
    };
    let mut d = Vec::new();
    d.extend_from_slice(&(syms.len() as u32).to_le_bytes());
    align_to(&mut d, 1);
    let names_at = d.len();
    let mut markers = Vec::new();
    for (i, (t, n, _)) in syms.iter().enumerate() {
        if i % 256 == 0 {
            markers.push((d.len() - names_at) as u32);
        }
        let e = encode_name(*t, n);
        if e.len() > 0x7f {
            d.push(0x80 | (e.len() & 0x7f) as u8);
            d.push((e.len() >> 7) as u8);
        } else {
            d.push(e.len() as u8);
        }
        d.extend_from_slice(&e);
    }
    align_to(&mut d, 4);
    for m in markers {
        d.extend_from_slice(&m.to_le_bytes());
    }
    align_to(&mut d, 1);
    let table_at = d.len();
    let mut index = Vec::new();
    for t in &tokens {
        index.push((d.len() - table_at) as u16);
        d.extend_from_slice(t);
        d.push(0);
    }
    align_to(&mut d, 2);
    for i in index {
        d.extend_from_slice(&i.to_le_bytes());
    }
    align_to(&mut d, 4);
    let relative_base = syms.first().map_or(0, |s| s.2);
    for (_, _, a) in syms {
        let off = match style {
            Style::Aligned => a.wrapping_sub(relative_base),
            Style::Packed => a.wrapping_sub(base + d.len() as u64),
        };
        d.extend_from_slice(&(off as u32).to_le_bytes());
    }
    if style == Style::Aligned {
        align_to(&mut d, 8);
        d.extend_from_slice(&relative_base.to_le_bytes());
    } else {
        // kallsyms_seqs_of_names follows in 7.x: 3 bytes per symbol.
        d.extend(core::iter::repeat_n(0x01, syms.len() * 3));
    }
    d
}
