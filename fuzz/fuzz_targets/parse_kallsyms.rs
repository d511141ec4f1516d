//! The kallsyms finder over arbitrary bytes, and over well-formed tables
//! (both layouts) with arbitrary bytes changed: never a panic, and a table
//! that is found decodes or fails as a value.
#![no_main]

use std::ops::ControlFlow;

use arbitrary::Arbitrary;
use ktstr_walker::kallsyms::Kallsyms;
use ktstr_walker::kallsyms::encode::{Style, encode};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Symbols of the well-formed table (names from these bytes).
    names: Vec<(u8, u16)>,
    packed: bool,
    /// Bytes before the table (keeps 4-byte alignment when packed).
    pad: u8,
    /// (offset, xor) changes to the table.
    flips: Vec<(u32, u8)>,
    /// Or arbitrary bytes instead of a table.
    raw: Option<Vec<u8>>,
    /// Where the bytes are said to be (any alignment).
    base_skew: u8,
}

const BASE: u64 = 0xffff_ffff_8220_0000;

fuzz_target!(|inp: Input| {
    let data = match inp.raw {
        Some(raw) => raw,
        None => {
            let names: Vec<(u8, String, u64)> = inp
                .names
                .iter()
                .take(600)
                .enumerate()
                .map(|(i, (t, n))| {
                    let kind = b"tTdDbBrR"[usize::from(*t) % 8];
                    (
                        kind,
                        format!("s{n}_{i}"),
                        0xffff_ffff_8100_0000 + 16 * i as u64,
                    )
                })
                .collect();
            if names.is_empty() {
                return;
            }
            let refs: Vec<(u8, &str, u64)> =
                names.iter().map(|(t, n, a)| (*t, n.as_str(), *a)).collect();
            let style = if inp.packed {
                Style::Packed
            } else {
                Style::Aligned
            };
            let pad = usize::from(inp.pad) * if inp.packed { 4 } else { 8 };
            let mut d = vec![0x5a; pad];
            d.extend(encode(BASE + pad as u64, &refs, style));
            for (at, x) in inp.flips.iter().take(16) {
                let n = d.len();
                if let Some(b) = d.get_mut(*at as usize % n) {
                    *b ^= x;
                }
            }
            d
        }
    };
    let base = BASE.wrapping_add(u64::from(inp.base_skew % 8));
    if let Ok(k) = Kallsyms::find(&data, base) {
        let mut n = 0u32;
        let _ = k.for_each(|_, name, _| {
            assert!(!name.is_empty() || n < k.len());
            n += 1;
            ControlFlow::Continue(())
        });
        assert!(n <= k.len());
        let _ = k.symbols();
        let _ = k.locations();
    }
});
