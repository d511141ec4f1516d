//! Translation and the bounded walks over arbitrary guest memory and
//! arbitrary roots, addresses and layouts: never a panic, and every walk
//! stays within a read bound derived from its step limits.
#![no_main]

use arbitrary::Arbitrary;
use ktstr_walker::layout::{BucketTableLayout, ListHeadLayout, RhashHeadLayout, RhashtableLayout};
use ktstr_walker::mem::{CountingMem, SliceMem};
use ktstr_walker::translate::{Levels, PageTableRoot, Translator, TranslatorConfig};
use ktstr_walker::walk::{HashLimits, Step, walk_list, walk_rhashtable};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    cr3: u16,
    five_level: bool,
    pti: bool,
    phys_base: u32,
    page_offset_base: u64,
    addrs: [u64; 4],
    max_steps: u8,
    /// Member offsets, up to 64 KiB: past the first page of a struct too.
    offsets: [u16; 8],
    mem: Vec<u8>,
}

/// Reads one translation may take: at most one per paging level.
const WALK_READS: u64 = 5;

fuzz_target!(|inp: Input| {
    let raw = SliceMem::new(0, &inp.mem);
    let config = TranslatorConfig {
        phys_base: u64::from(inp.phys_base),
        page_offset_base: inp.page_offset_base,
        root: Some(PageTableRoot {
            cr3: u64::from(inp.cr3) << 12,
            levels: if inp.five_level {
                Levels::Five
            } else {
                Levels::Four
            },
            pti: inp.pti,
        }),
        ..TranslatorConfig::default()
    };
    let mut tr = Translator::new(config);
    for &va in &inp.addrs {
        let _ = tr.translate(&raw, va);
        let mut buf = [0u8; 64];
        let _ = tr.read_virt(&raw, va, &mut buf);
    }

    let o = |i: usize| u32::from(inp.offsets[i]);
    let lh = ListHeadLayout {
        struct_size: 16,
        next: o(0),
        prev: o(1),
    };
    let steps = u64::from(inp.max_steps);
    let mem = CountingMem::new(raw, u64::MAX);
    let mut visited = 0u64;
    let s = walk_list(
        &mem,
        &mut tr,
        &lh,
        inp.addrs[0],
        u32::from(inp.max_steps),
        |tr, node| {
            visited += 1;
            let mut b = [0u8; 4];
            let _ = tr.read_virt(&raw, node, &mut b);
            if b[0] & 1 == 1 {
                Step::Skip
            } else {
                Step::Continue
            }
        },
    );
    assert!(u64::from(s.visited + s.skipped) == visited && visited <= steps);
    // Per step: next and prev (two reads at most), each translated.
    assert!(
        mem.reads() <= (steps + 1) * 2 * (1 + WALK_READS),
        "list: {} reads",
        mem.reads()
    );

    let limits = HashLimits {
        max_buckets: 256,
        max_entries: 64,
        max_chain: 16,
    };
    let rht = RhashtableLayout {
        struct_size: 160,
        tbl: o(2),
        nelems: None,
        key_len: None,
    };
    let bt = BucketTableLayout {
        struct_size: 64,
        size: o(3),
        buckets: o(4),
        nest: Some(o(5)),
        future_tbl: Some(o(6)),
    };
    let rh = RhashHeadLayout {
        struct_size: 8,
        next: o(7),
    };
    let mem = CountingMem::new(raw, u64::MAX);
    let s = walk_rhashtable(
        &mem,
        &mut tr,
        (&rht, &bt, &rh),
        inp.addrs[1],
        limits,
        |_, _| Step::Continue,
    );
    assert!(s.visited <= limits.max_entries);
    // tbl, size, nest, future_tbl; the bucket array in batches of 64
    // (each may cross pages: one translation per page); one per entry.
    let batches = u64::from(limits.max_buckets) / 64 * 3;
    let bound = (4 + batches + u64::from(limits.max_entries)) * (1 + WALK_READS);
    assert!(
        mem.reads() <= bound,
        "rhashtable: {} reads > {bound}",
        mem.reads()
    );
});
