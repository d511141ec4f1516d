//! The whole capture over arbitrary guest memory, an arbitrary layout and
//! arbitrary symbol addresses: never a panic, and never more guest reads
//! than the bound stated below, derived from the capture's limits. What it
//! captured is then rendered (report and text), which must not panic
//! either.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use ktstr_walker::capture::storage::{Capacity, CaptureStorage};
use ktstr_walker::capture::bpf::{BpfMapRecord, BpfProgRecord};
use ktstr_walker::capture::{Consts, Limits, Target, capture};
use ktstr_walker::layout::Layout;
use ktstr_walker::mem::SliceMem;
use ktstr_walker::render::names::Names;
use ktstr_walker::render::bpf::{BpfLate, BpfLimits, BpfReport};
use ktstr_walker::render::{RenderContext, Report};
use ktstr_walker::symbols::Symbols;
use ktstr_walker::translate::{
    DEFAULT_PAGE_OFFSET_BASE, Levels, PageTableRoot, Translator, TranslatorConfig,
};
use ktstr_walker::walk::HashLimits;
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_list: 16,
    max_tasks: 32,
    hash: HashLimits {
        max_buckets: 64,
        max_entries: 8,
        max_chain: 8,
    },
    max_bytes: 1 << 20,
};
const MAX_CPUS: u32 = 4;
const MAX_NODES: u32 = 2;

/// Reads one virtual read may cost: a 5-level walk plus the read itself;
/// every structure read below is at most 512 bytes (one chunk, or 64
/// `__per_cpu_offset` entries), so it crosses at most one page boundary:
/// twice that.
const PER_READ: u64 = 2 * 6;

/// Cgroup records the fuzzed capture keeps.
const CGROUPS: u64 = 8;

/// Read bound, counted in virtual reads, then multiplied by [`PER_READ`].
/// A plan of n fields reads at most n chunks; when a plan that also covers
/// a list link fails, the narrower reads it replaces are done as before.
fn read_bound() -> u64 {
    let list = |n: u32| 2 * (u64::from(n) + 1);
    // A string: one try, then up to 16 pieces of 16 and 16 single bytes.
    let string = 1 + 16 + 16;
    // A DSQ: id/nr/seq/list.next (4 chunks), then id/nr/seq alone (3) and
    // the list head's links (2); per node its links and flags (3 chunks),
    // then the links (2) and the flags (1) alone.
    let dsq = 4 + 3 + 2 + 6 * u64::from(LIMITS.max_list);
    // + jiffies; the exit info (9 chunks), 7 globals, the backtrace (1),
    // the dump text (8 pages, then one in 64 pieces and 64 bytes), the
    // 6.16 event counters' base (1).
    let sched = 1 + 5 + string + 9 + 2 * string + 1 + 7 + 1 + (8 + 64 + 64) + 1;
    // The offsets batch and the CPU's own entry, rq (4 chunks), rq->scx
    // with the runnable and local DSQ heads (12) then alone (7), two DSQs,
    // the runnable list, the event counters (1).
    let per_cpu = 2 + 4 + 12 + 7 + 2 * dsq + list(LIMITS.max_list) + 1;
    let cpus = 1 + u64::from(MAX_CPUS) * per_cpu;
    let shared = 1
        + u64::from(MAX_NODES) * (1 + dsq)
        + 4
        + u64::from(LIMITS.hash.max_buckets) / 64
        + 1
        + u64::from(LIMITS.hash.max_entries) * (1 + dsq);
    // Per task: its plan (up to 29 chunks, links included), then its
    // links alone (2).
    let tasks = 2 + u64::from(LIMITS.max_tasks) * (29 + 2);
    // Per distinct cgroup (at most CGROUPS kept): css_set and cgroup
    // pointers, then up to 16 levels of parent, name pointer and a name in
    // up to 4 pieces.
    let cgroups = CGROUPS * (2 + 16 * (2 + 4));
    // map_idr's head and base; per node its shift and slots; per map its
    // header with its name (up to 13 chunks), its ops name (struct_ops); the
    // links' array and count, per link the link and the program, per
    // program 7 reads; per scheduler map its elem_size and values: one
    // read, or per entry and CPU its pointer, CPU offset and value, with
    // each byte of the room taken by at most one (entry, CPU).
    let maps = BPF_MAPS as u64;
    let links = u64::from(ktstr_walker::capture::bpf::MAX_LINKS);
    let bpf = 2
        + 2 * u64::from(ktstr_walker::capture::bpf::MAX_XA_NODES)
        + (maps + 1) * 13
        + maps
        + 2
        + links * 2
        + BPF_PROGS as u64 * 7
        + maps * 2
        + BPF_ROOM as u64 * 3;
    (sched + cpus + shared + tasks + cgroups + bpf) * PER_READ
}

/// BPF maps, programs and value bytes the fuzzed capture keeps (values
/// read in one piece stay within 512 bytes, as [`PER_READ`] assumes).
const BPF_MAPS: usize = 8;
const BPF_PROGS: usize = 4;
const BPF_ROOM: usize = 512;

#[derive(Arbitrary, Debug)]
struct Setup {
    nr_cpus: u8,
    nr_nodes: u8,
    root: Option<(u16, bool)>,
    symbols: [u32; 8],
    map_idr: u32,
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    // Offsets inside 16 KiB structs (task_struct and rq are larger than a
    // page), drawn from the input.
    let layout = Layout::build(|_, _, out| {
        for o in out.iter_mut() {
            *o = u
                .arbitrary::<Option<u16>>()
                .ok()
                .flatten()
                .map(|v| u32::from(v % 16384));
        }
        Some(16384)
    });
    let Ok(mem) = u.arbitrary::<&[u8]>() else {
        return;
    };
    // Symbols point into the direct map over the fuzzed memory.
    let mut symbols = Symbols::default();
    for (name, off) in Symbols::NAMES.iter().zip(setup.symbols) {
        symbols.set(
            name,
            DEFAULT_PAGE_OFFSET_BASE + u64::from(off) % (mem.len() as u64 + 1),
        );
    }
    symbols.map_idr = Some(DEFAULT_PAGE_OFFSET_BASE + u64::from(setup.map_idr) % (mem.len() as u64 + 1));
    let target = Target {
        layout: &layout,
        symbols: &symbols,
        nr_cpus: u32::from(setup.nr_cpus) % (MAX_CPUS + 1),
        nr_nodes: u32::from(setup.nr_nodes) % (MAX_NODES + 1),
        consts: Consts::default(),
    };
    let mut tr = Translator::new(TranslatorConfig {
        root: setup.root.map(|(cr3, five)| PageTableRoot {
            cr3: u64::from(cr3) << 12,
            levels: if five { Levels::Five } else { Levels::Four },
            pti: false,
        }),
        ..TranslatorConfig::default()
    });
    let mut storage = CaptureStorage::new(Capacity {
        cpus: 4,
        dsqs: 16,
        queued: 32,
        runnable: 32,
        tasks: 16,
        cgroups: CGROUPS as usize,
    });
    let (mut maps, mut progs, mut bytes) = (
        [BpfMapRecord::default(); BPF_MAPS],
        [BpfProgRecord::default(); BPF_PROGS],
        [0u8; BPF_ROOM],
    );
    let mut buf = storage.buf().with_bpf(&mut maps, &mut progs, &mut bytes);
    capture(&SliceMem::new(0, mem), &mut tr, &target, &LIMITS, &mut buf);
    let bound = read_bound();
    assert!(
        buf.health.reads <= bound,
        "{} reads > bound {bound}",
        buf.health.reads
    );
    let names = Names::default();
    let mut report = Report::from_capture(
        &buf,
        &RenderContext {
            layout: &layout,
            symbols: &symbols,
            names: &names,
            pause_ns: None,
            pause: None,
            symbolizer: None,
        },
    );
    let _ = report.to_text();
    // What the BPF section reads after a thaw (BTF, larger arrays, hash
    // chains) over the same memory, within small budgets, then rendered.
    let small = BpfLimits {
        map_bytes: 4096,
        total_bytes: 16384,
        btf_bytes: 4096,
    };
    let late = BpfLate::read(&buf, &layout, &SliceMem::new(0, mem), &mut tr, &small);
    report.bpf = BpfReport::build(&buf, Some(&late));
    let _ = report.to_text();
});
