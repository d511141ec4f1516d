//! The DT_NEEDED/PT_INTERP/RPATH reader behind the initramfs's library
//! closure, over arbitrary bytes and over a real dynamically linked ELF
//! with arbitrary bytes changed: an error value or a result, never a
//! panic.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use ktstr::initramfs::libs::parse_deps;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    /// (offset, xor) changes to a real program, offsets anywhere in it.
    Flip(Vec<(u32, u8)>),
}

/// A small real program of this machine: its own dynamic section,
/// interpreter and needed libraries.
fn real() -> &'static [u8] {
    static REAL: OnceLock<Vec<u8>> = OnceLock::new();
    REAL.get_or_init(|| std::fs::read("/bin/true").unwrap_or_default())
}

fuzz_target!(|inp: Input| {
    let bytes = match inp {
        Input::Raw(b) => b,
        Input::Flip(flips) => {
            let mut b = real().to_vec();
            let n = b.len().max(1);
            for (at, x) in flips.into_iter().take(32) {
                if let Some(v) = b.get_mut(at as usize % n) {
                    *v ^= x;
                }
            }
            b
        }
    };
    if let Ok(d) = parse_deps(&bytes, Path::new("/origin")) {
        assert!(d.search.iter().all(|p| !p.as_os_str().is_empty()));
    }
});
