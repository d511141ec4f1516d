//! The BPF scheduler's state over a synthetic kernel (walker-core's
//! testkit): maps on `map_idr` as a real kernel's xarray holds them, a
//! sched_ext struct_ops map, its programs and their used maps, a program
//! BTF built here by hand (a fixture, standing in for clang's), laid out
//! with the compact layout and, when the fetched kernel is here, with the
//! layout of its real BTF. Hostile trees (cycles, wrong shifts, huge
//! counts, bad pointers) must end bounded, with the damage reported.

use ktstr_walker::Layout;
use ktstr_walker::capture::bpf::{BpfMapRecord, BpfProgRecord, MAP_ARRAY, MAP_STRUCT_OPS};
use ktstr_walker::capture::storage::{Capacity, CaptureStorage};
use ktstr_walker::capture::{CaptureBuf, Fault, Limits, capture};
use ktstr_walker::render::bpf::{BpfLate, BpfLimits, BpfReport, MapRead, Value};
use ktstr_walker::testkit::{
    MAP_HASH, MAP_RINGBUF, MapSpec, PerCpuStyle, SyntheticKernel, compact_layout,
};
use ktstr_walker::translate::Translator;

fn layouts() -> Vec<(&'static str, Layout)> {
    ktstr_tests::synthetic_layouts("capture_bpf")
}

/// Raw BTF of a `.bss` with `int counter` at 0 and `char label[8]` at 4,
/// and an enum `mode` at 12 (`MODE_A` = 0, `MODE_B` = 7): type 6 is the
/// DATASEC. Built field by field after the kernel's `struct btf_type`.
fn program_btf() -> Vec<u8> {
    let strings = b"\0int\0char\0counter\0label\0.bss\0mode_t\0MODE_A\0MODE_B\0mode\0";
    let off = |s: &str| {
        let needle = [s.as_bytes(), b"\0"].concat();
        strings
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .unwrap() as u32
    };
    let mut t: Vec<u32> = Vec::new();
    let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
    // 1: int, signed 32 bits.
    t.extend([off("int"), info(1, 0), 4, (1 << 24) | 32]);
    // 2: char, signed 8 bits.
    t.extend([off("char"), info(1, 0), 1, (1 << 24) | 8]);
    // 3: char[8].
    t.extend([0, info(3, 0), 0, 2, 1, 8]);
    // 4: var counter (int), global.
    t.extend([off("counter"), info(14, 0), 1, 1]);
    // 5: var label (char[8]).
    t.extend([off("label"), info(14, 0), 3, 1]);
    // 6: DATASEC .bss, 16 bytes, three variables.
    t.extend([off(".bss"), info(15, 3), 16, 4, 0, 4, 5, 4, 8, 8, 12, 4]);
    // 7: enum mode_t { MODE_A = 0, MODE_B = 7 }, 4 bytes.
    t.extend([
        off("mode_t"),
        info(6, 2),
        4,
        off("MODE_A"),
        0,
        off("MODE_B"),
        7,
    ]);
    // 8: var mode (mode_t).
    t.extend([off("mode"), info(14, 0), 7, 1]);
    let types: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut raw = Vec::new();
    raw.extend([0x9f, 0xeb, 1, 0]);
    for v in [
        24u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        raw.extend(v.to_le_bytes());
    }
    raw.extend(&types);
    raw.extend(strings);
    raw
}

/// What the scheduler fixture laid out.
struct Fixture {
    k: SyntheticKernel,
    bss: u64,
    hash: u64,
    big: u64,
    foreign: u64,
    ops: u64,
}

const OTHER_BTF: u64 = 0xffff_8880_0bad_0000;

fn fixture(layout: &Layout) -> Fixture {
    let mut k = SyntheticKernel::new(*layout, 2, PerCpuStyle::Absolute).unwrap();
    k.attach_scheduler("synth", 4).unwrap();
    let btf = k.bpf_btf(&program_btf()).unwrap();
    let spec = |id, map_type, name, value_size, max_entries, btf| MapSpec {
        id,
        map_type,
        name,
        value_size,
        max_entries,
        btf,
        value_type_id: 0,
        key_type_id: 0,
    };
    let bss = k
        .bpf_map(MapSpec {
            value_type_id: 6,
            ..spec(3, MAP_ARRAY, "synth.bss", 16, 1, btf)
        })
        .unwrap();
    let mut values = Vec::new();
    values.extend(42i32.to_le_bytes());
    values.extend(b"hi\0\0\0\0\0\0");
    values.extend(7u32.to_le_bytes());
    let at = k.bpf_values(bss);
    k.write(at, &values);
    let big = k.bpf_map(spec(4, MAP_ARRAY, "big", 1024, 32, btf)).unwrap();
    k.write(k.bpf_values(big) + 1024 * 31, b"last");
    // Owned through its BTF only: no program uses it. Two buckets: 1 and
    // 3 chain in the first (3 in front), 2 in the second.
    let entries: Vec<([u8; 4], [u8; 4])> = [(1, 10), (2, 20), (3, 30)]
        .map(|(k, v): (i32, i32)| (k.to_le_bytes(), v.to_le_bytes()))
        .to_vec();
    let refs: Vec<(&[u8], &[u8])> = entries.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let hash_spec = MapSpec {
        key_type_id: 1,
        value_type_id: 1,
        ..spec(5, MAP_HASH, "hash", 4, 100, btf)
    };
    let hash = k.bpf_hash(hash_spec, 2, &refs).unwrap();
    let foreign = k
        .bpf_map(spec(6, MAP_ARRAY, "other", 4, 1, OTHER_BTF))
        .unwrap();
    let rb = k
        .bpf_map(spec(70, MAP_RINGBUF, "rb", 0, 1 << 16, 0))
        .unwrap();
    let p1 = k.bpf_prog(10, "synth_enqueue", &[bss, big, rb]).unwrap();
    let p2 = k.bpf_prog(11, "synth_dispatch", &[bss]).unwrap();
    let ops = k
        .struct_ops_map(12, "synth_ops", "synth", &[p1, 0, p2, p1])
        .unwrap();
    // Index 70 needs a second level of nodes.
    k.map_idr(&[
        (3, bss),
        (4, big),
        (5, hash),
        (6, foreign),
        (70, rb),
        (12, ops),
    ])
    .unwrap();
    Fixture {
        k,
        bss,
        hash,
        big,
        foreign,
        ops,
    }
}

fn storage() -> CaptureStorage {
    CaptureStorage::new(Capacity::for_guest(2, 64))
}

fn run<'s>(k: &SyntheticKernel, store: &'s mut CaptureStorage) -> CaptureBuf<'s> {
    let mut buf = store.buf();
    capture(
        &k.mem(),
        &mut Translator::default(),
        &k.target(),
        &Limits::default(),
        &mut buf,
    );
    buf
}

fn map<'b>(buf: &'b CaptureBuf<'_>, addr: u64) -> &'b BpfMapRecord {
    buf.bpf_maps
        .as_slice()
        .iter()
        .find(|m| m.addr == addr)
        .unwrap_or_else(|| panic!("map {addr:#x} not captured"))
}

#[test]
fn the_scheduler_maps_programs_and_globals_are_found() {
    for (name, layout) in layouts() {
        let f = fixture(&layout);
        let mut store = storage();
        let buf = run(&f.k, &mut store);
        assert_eq!(buf.health.bpf, Fault::None, "{name}");
        let w = buf.bpf.walk;
        assert_eq!(
            (w.entries, w.truncated, w.fault),
            (6, false, Fault::None),
            "{name}"
        );
        assert!(buf.bpf.found_ops, "{name}");
        let ids: Vec<u64> = buf
            .bpf_maps
            .as_slice()
            .iter()
            .map(|m| m.idr_index)
            .collect();
        assert_eq!(ids, [3, 4, 5, 6, 12, 70], "{name}: index order");
        let ops = map(&buf, f.ops);
        assert!(
            ops.sched_ops && ops.owned && ops.map_type == MAP_STRUCT_OPS,
            "{name}"
        );
        // p1 is linked twice, an empty slot is skipped.
        let progs: Vec<(u32, String)> = buf
            .bpf_progs
            .as_slice()
            .iter()
            .map(|p: &BpfProgRecord| {
                (
                    p.id,
                    ktstr_walker::capture::kernel_str(&p.name)
                        .unwrap()
                        .to_string(),
                )
            })
            .collect();
        assert_eq!(
            progs,
            [(10, "synth_enqueue".into()), (11, "synth_dispatch".into())],
            "{name}"
        );
        let owned: Vec<u32> = buf
            .bpf_maps
            .as_slice()
            .iter()
            .filter(|m| m.owned)
            .map(|m| m.id)
            .collect();
        assert_eq!(owned, [3, 4, 5, 12, 70], "{name}: not the foreign map");
        assert!(!map(&buf, f.foreign).owned);
        let bss = map(&buf, f.bss);
        let bytes = buf
            .bpf_bytes(bss.values.expect("bss read while paused"))
            .unwrap();
        assert_eq!(&bytes[..4], &42i32.to_le_bytes(), "{name}");
        let big = map(&buf, f.big);
        assert_eq!(
            (big.values, big.over_budget),
            (None, Some(32 * 1024)),
            "{name}"
        );

        // Paused only: the maps are listed, the globals need the BTF.
        let r = BpfReport::build(&buf, None).unwrap();
        assert_eq!(r.struct_ops.as_ref().unwrap().name, "synth_ops");
        let m3 = r.maps.iter().find(|m| m.id == 3).unwrap();
        assert_eq!((m3.read.clone(), m3.globals.len()), (MapRead::Paused, 0));
        let rb = r.maps.iter().find(|m| m.id == 70).unwrap();
        assert_eq!(
            (rb.map_type.as_str(), rb.size_bytes),
            ("ringbuf", Some(1 << 16))
        );
        let hash = r.maps.iter().find(|m| m.id == 5).unwrap();
        assert!(
            matches!(&hash.read, MapRead::Skipped(w) if w.contains("hash")),
            "{hash:?}"
        );

        // After the thaw: the BTF names the globals, the big array is read.
        let mem = f.k.mem();
        let mut tr = Translator::default();
        let late = BpfLate::read(&buf, &layout, &mem, &mut tr, &BpfLimits::default());
        let r = BpfReport::build(&buf, Some(&late)).unwrap();
        let m3 = r.maps.iter().find(|m| m.id == 3).unwrap();
        let globals: Vec<(&str, &Value)> = m3
            .globals
            .iter()
            .map(|g| (g.name.as_str(), &g.value))
            .collect();
        assert_eq!(
            globals,
            [
                ("counter", &Value::Int(42)),
                ("label", &Value::Str("hi".into())),
                ("mode", &Value::Enum("MODE_B".into())),
            ],
            "{name}"
        );
        let big = r.maps.iter().find(|m| m.id == 4).unwrap();
        assert_eq!(big.read, MapRead::AfterThaw, "{name}");
        // The hash map's entries, bucket by bucket, keys and values typed.
        let hash = r.maps.iter().find(|m| m.id == 5).unwrap();
        assert_eq!(hash.read, MapRead::AfterThaw, "{name}");
        let pairs: Vec<(&Value, &Value)> = hash.pairs.iter().map(|p| (&p.key, &p.value)).collect();
        let int = Value::Int;
        assert_eq!(
            pairs,
            [
                (&int(3), &int(30)),
                (&int(1), &int(10)),
                (&int(2), &int(20))
            ],
            "{name}"
        );
        assert_eq!(&late.values[&f.big][31 * 1024..31 * 1024 + 4], b"last");
        assert!(
            r.bytes_after_thaw >= 32 * 1024 && r.bytes_paused == 16,
            "{r:?}"
        );
        // A tighter after-thaw budget skips it, and says so.
        let tight = BpfLimits {
            map_bytes: 1024,
            ..BpfLimits::default()
        };
        let late = BpfLate::read(&buf, &layout, &mem, &mut tr, &tight);
        let r = BpfReport::build(&buf, Some(&late)).unwrap();
        let big = r.maps.iter().find(|m| m.id == 4).unwrap();
        assert_eq!(big.read, MapRead::Skipped("32768 bytes over budget".into()));
        // A BTF over its budget is not read: the globals stay unnamed, said.
        let small = BpfLimits {
            btf_bytes: 16,
            ..BpfLimits::default()
        };
        let late = BpfLate::read(&buf, &layout, &mem, &mut tr, &small);
        let r = BpfReport::build(&buf, Some(&late)).unwrap();
        let m3 = r.maps.iter().find(|m| m.id == 3).unwrap();
        assert!(m3.globals.is_empty(), "{m3:?}");
        assert!(
            m3.fault
                .as_deref()
                .is_some_and(|f| f.contains("over the 16 byte budget")),
            "{m3:?}"
        );
    }
}

#[test]
fn hostile_trees_and_counts_end_bounded_and_say_so() {
    let layout = compact_layout();
    // A leaf slot pointing back at the root node: the shift check refuses it.
    let mut f = fixture(&layout);
    let head = f.k.xa_head();
    f.k.xa_set_slot(head, 63, head);
    let mut store = storage();
    let buf = run(&f.k, &mut store);
    assert_eq!(buf.bpf.walk.fault, Fault::Corrupt(head - 2));
    assert_eq!(
        buf.bpf.walk.entries, 6,
        "the rest of the tree is still read"
    );

    // A leaf node whose slot points at itself.
    let mut f = fixture(&layout);
    let head = f.k.xa_head();
    let xn = layout.xa_node.unwrap();
    let leaf = f.k.read_u64(head - 2 + u64::from(xn.slots));
    f.k.xa_set_slot(leaf, 1, leaf);
    let mut store = storage();
    let buf = run(&f.k, &mut store);
    assert!(
        matches!(buf.bpf.walk.fault, Fault::Corrupt(_)),
        "{:?}",
        buf.bpf.walk
    );

    // An unreadable map pointer: that map faults, the others are read.
    let mut f = fixture(&layout);
    let head = f.k.xa_head();
    let leaf = f.k.read_u64(head - 2 + u64::from(xn.slots));
    f.k.xa_set_slot(leaf, 9, 0xffff_8890_0000_0000);
    let mut store = storage();
    let buf = run(&f.k, &mut store);
    let bad = map(&buf, 0xffff_8890_0000_0000);
    assert_eq!(bad.fault, Fault::Unreadable(0xffff_8890_0000_0000));
    assert!(buf.bpf.found_ops);

    // A huge link count is capped: what follows the links array is read
    // as links (garbage programs may show), within the cap.
    let mut f = fixture(&layout);
    let so = layout.struct_ops_map.unwrap();
    f.k.write_u32(f.ops + u64::from(so.funcs_cnt), u32::MAX);
    let mut store = storage();
    let buf = run(&f.k, &mut store);
    let ids: Vec<u32> = buf.bpf_progs.as_slice().iter().map(|p| p.id).collect();
    assert_eq!(&ids[..2], &[10, 11], "{ids:?}");
    assert!(
        buf.health.reads < 4 * 256 + 1000,
        "{} reads",
        buf.health.reads
    );
    // A huge used-map count is capped at the kernel's MAX_USED_MAPS.
    let mut f = fixture(&layout);
    let aux = layout.prog_aux.unwrap();
    let p = layout.bpf_prog.unwrap();
    let prog = buf.bpf_progs.as_slice()[0].addr;
    let a = f.k.read_u64(prog + u64::from(p.aux));
    f.k.write_u32(a + u64::from(aux.used_map_cnt), u32::MAX);
    let mut store = storage();
    let buf = run(&f.k, &mut store);
    assert_eq!(buf.bpf_progs.as_slice()[0].used_map_cnt, u32::MAX);
    assert!(map(&buf, f.bss).owned);

    // More maps than room: the walk stops, truncated, and the report says so.
    let f = fixture(&layout);
    let (mut maps, mut progs, mut bytes) = (
        [BpfMapRecord::default(); 2],
        [BpfProgRecord::default(); 4],
        [0u8; 64],
    );
    let mut store = storage();
    let mut buf = store.buf().with_bpf(&mut maps, &mut progs, &mut bytes);
    capture(
        &f.k.mem(),
        &mut Translator::default(),
        &f.k.target(),
        &Limits::default(),
        &mut buf,
    );
    assert!(buf.bpf.walk.truncated);
    assert_eq!(buf.bpf_maps.dropped(), 1);
    let r = BpfReport::build(&buf, None).unwrap();
    assert!(r.faults.iter().any(|f| f.contains("truncated")), "{r:?}");

    // A hash chain that loops: the walk stops at its link bound, says so.
    let mut f = fixture(&layout);
    let mut store = storage();
    let buf = run(&f.k, &mut store);
    let h = layout.bpf_htab.unwrap();
    let b = layout.htab_bucket.unwrap();
    let buckets = f.k.read_u64(f.hash + u64::from(h.buckets));
    let first = f.k.read_u64(buckets + u64::from(b.head));
    f.k.write_u64(first, first);
    let mut tr = Translator::default();
    let late = BpfLate::read(&buf, &layout, &f.k.mem(), &mut tr, &BpfLimits::default());
    let r = BpfReport::build(&buf, Some(&late)).unwrap();
    let hash = r.maps.iter().find(|m| m.id == 5).unwrap();
    assert!(
        hash.fault
            .as_deref()
            .is_some_and(|w| w.contains("chain links followed")),
        "{hash:?}"
    );
    assert_eq!(hash.pairs.len(), 64);
    assert_eq!(hash.more_pairs, (1 << 16) - 64);
    // A bucket count that is no power of two is refused.
    f.k.write_u32(f.hash + u64::from(h.n_buckets), 3);
    let late = BpfLate::read(&buf, &layout, &f.k.mem(), &mut tr, &BpfLimits::default());
    let r = BpfReport::build(&buf, Some(&late)).unwrap();
    let hash = r.maps.iter().find(|m| m.id == 5).unwrap();
    assert!(
        hash.fault
            .as_deref()
            .is_some_and(|w| w.contains("power of two")),
        "{hash:?}"
    );

    // No map_idr symbol: the pass says what it lacked.
    let mut f = fixture(&layout);
    f.k.symbols.map_idr = None;
    let mut store = storage();
    let buf = run(&f.k, &mut store);
    assert_eq!(buf.health.bpf, Fault::MissingSymbol("map_idr"));
}
