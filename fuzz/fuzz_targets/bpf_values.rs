//! Arbitrary bytes as a BPF program's BTF, a type id and a map value to
//! decode with them (the after-thaw decoding of a scheduler's globals):
//! never a panic, and bounded.
#![no_main]

use ktstr_walker::render::bpf::value::decode_raw;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<6>() else {
        return;
    };
    let id = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) % 64;
    let len = usize::from(u16::from_le_bytes([head[4], head[5]])).min(rest.len());
    let (btf, value) = rest.split_at(len);
    // The magic forced, so the parser's inner paths are reached.
    let mut raw = btf.to_vec();
    if raw.len() >= 2 {
        raw[0] = 0x9f;
        raw[1] = 0xeb;
    }
    if let Some(v) = decode_raw(&raw, id, value) {
        let _ = ktstr_walker::render::bpf::text(&v);
    }
});
