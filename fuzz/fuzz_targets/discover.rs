//! Discovery over arbitrary memory, registers and link-time symbols: never
//! a panic, and a bounded number of reads (every candidate slide costs at
//! most a walk, a head read and a banner read, per root).
#![no_main]

use arbitrary::Arbitrary;
use ktstr_walker::Symbols;
use ktstr_walker::discover::{KernelImage, SLIDE_CANDIDATES, VcpuRegs, discover};
use ktstr_walker::mem::{CountingMem, SliceMem};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    cr3: u32,
    cr4: u64,
    /// Link-time addresses, as offsets into the kernel image.
    syms: [u32; 8],
    banner_tail: Vec<u8>,
    mem: Vec<u8>,
}

/// Reads per candidate (walk of 5 levels, head, banner over two pages) times
/// two roots, plus validation.
const READ_BOUND: u64 = SLIDE_CANDIDATES * 2 * 20 + 200;

fuzz_target!(|inp: Input| {
    let mut symbols = Symbols::default();
    let names = [
        "linux_banner",
        "phys_base",
        "page_offset_base",
        "init_top_pgt",
        "nr_cpu_ids",
        "nr_node_ids",
        "max_pfn",
        "runqueues",
    ];
    for (name, off) in names.iter().zip(inp.syms) {
        symbols.set(name, 0xffff_ffff_8100_0000 + u64::from(off % (1 << 24)));
    }
    let mut banner = b"Linux version ".to_vec();
    banner.extend(inp.banner_tail.iter().take(100));
    let image = KernelImage {
        symbols: &symbols,
        banner: &banner,
    };
    let mem = CountingMem::new(SliceMem::new(0, &inp.mem), u64::MAX);
    let regs = VcpuRegs {
        cr3: u64::from(inp.cr3) << 12,
        cr4: inp.cr4,
    };
    let _ = discover(&mem, regs, &image);
    assert!(mem.reads() <= READ_BOUND, "{} reads", mem.reads());
});
