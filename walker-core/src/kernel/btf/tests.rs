//! Unit tests on hand-built BTF (fixtures made by the small encoder below,
//! in the format of include/uapi/linux/btf.h).

use super::*;
use std::vec;

/// A tiny BTF encoder: types are appended in id order (id 1 first).
#[derive(Default)]
struct Enc {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

const INT: u32 = 1;
const PTR: u32 = 2;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FWD: u32 = 7;
const TYPEDEF: u32 = 8;
const CONST: u32 = 10;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const DECL_TAG: u32 = 17;
const TYPE_TAG: u32 = 18;
const ENUM64: u32 = 19;

impl Enc {
    fn new() -> Self {
        Self {
            strings: vec![0],
            next_id: 1,
            ..Self::default()
        }
    }
    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        off
    }
    fn u32s(&mut self, v: &[u32]) {
        for x in v {
            self.types.extend_from_slice(&x.to_le_bytes());
        }
    }
    fn head(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, size_or_type: u32) -> u32 {
        let n = self.s(name);
        let info = (kind << 24) | vlen | if kflag { 1 << 31 } else { 0 };
        self.u32s(&[n, info, size_or_type]);
        let id = self.next_id;
        self.next_id += 1;
        id
    }
    fn int(&mut self, name: &str, size: u32) -> u32 {
        let id = self.head(name, INT, 0, false, size);
        self.u32s(&[size * 8]);
        id
    }
    fn ptr(&mut self, to: u32) -> u32 {
        self.head("", PTR, 0, false, to)
    }
    fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
        let id = self.head("", ARRAY, 0, false, 0);
        self.u32s(&[elem, index, n]);
        id
    }
    /// Members `(name, type, bit offset, bitfield size)`.
    fn record(
        &mut self,
        kind: u32,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let kflag = members.iter().any(|m| m.3 != 0);
        let id = self.head(name, kind, members.len() as u32, kflag, size);
        for &(n, t, off, bits) in members {
            let n = self.s(n);
            let off = if kflag { (bits << 24) | off } else { off };
            self.u32s(&[n, t, off]);
        }
        id
    }
    fn simple(&mut self, kind: u32, name: &str, to: u32) -> u32 {
        self.head(name, kind, 0, false, to)
    }
    fn enumeration(&mut self, name: &str, vals: &[(&str, u32)]) -> u32 {
        let id = self.head(name, ENUM, vals.len() as u32, false, 4);
        for &(n, v) in vals {
            let n = self.s(n);
            self.u32s(&[n, v]);
        }
        id
    }
    fn enum64(&mut self, name: &str, vals: &[(&str, u64)]) -> u32 {
        let id = self.head(name, ENUM64, vals.len() as u32, false, 8);
        for &(n, v) in vals {
            let n = self.s(n);
            self.u32s(&[n, v as u32, (v >> 32) as u32]);
        }
        id
    }
    fn var(&mut self, name: &str, ty: u32) -> u32 {
        let id = self.head(name, VAR, 0, false, ty);
        self.u32s(&[1]);
        id
    }
    fn datasec(&mut self, name: &str, vars: &[(u32, u32, u32)]) -> u32 {
        let id = self.head(name, DATASEC, vars.len() as u32, false, 4096);
        for &(v, off, size) in vars {
            self.u32s(&[v, off, size]);
        }
        id
    }
    fn decl_tag(&mut self, name: &str, to: u32) -> u32 {
        let id = self.head(name, DECL_TAG, 0, false, to);
        self.u32s(&[u32::MAX]);
        id
    }
    fn finish(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        let hdr_len = 24u32;
        for v in [
            hdr_len,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// A miniature kernel: `struct list_head`, a `struct rq` with `curr` in an
/// anonymous union and a nested `struct scx_rq`, two `struct task_struct`
/// definitions (a forward declaration and one lacking required members
/// besides the real one), a bitfield, typedef/const/type_tag chains, enums
/// and a per-CPU DATASEC.
fn mini_kernel() -> Vec<u8> {
    let mut e = Enc::new();
    let u32_t = e.int("unsigned int", 4);
    let u64_t = e.int("long long unsigned int", 8);
    let char_t = e.int("char", 1);
    let void_p = e.ptr(0);
    let list_head = e.record(
        STRUCT,
        "list_head",
        16,
        &[("next", void_p, 0, 0), ("prev", void_p, 64, 0)],
    );
    let list_td = e.simple(TYPEDEF, "list_t", list_head);
    let list_c = e.simple(CONST, "", list_td);
    let list_tt = e.simple(TYPE_TAG, "rcu", list_c);
    // scx_dispatch_q: list through typedef+const+type_tag.
    let dsq = e.record(
        STRUCT,
        "scx_dispatch_q",
        64,
        &[
            ("list", list_tt, 64, 0),
            ("nr", u32_t, 192, 0),
            ("seq", u32_t, 224, 0),
            ("id", u64_t, 256, 0),
        ],
    );
    let scx_rq = e.record(
        STRUCT,
        "scx_rq",
        128,
        &[
            ("local_dsq", dsq, 0, 0),
            ("runnable_list", list_head, 512, 0),
            ("nr_running", u32_t, 640, 0),
            ("flags", u32_t, 672, 0),
            ("cpu_released", u32_t, 704, 1), // a bitfield: never resolved
        ],
    );
    let _fwd_task = e.simple(FWD, "task_struct", 0);
    let task_p = e.ptr(_fwd_task);
    let anon = e.record(
        UNION,
        "",
        8,
        &[("donor", task_p, 0, 0), ("curr", task_p, 0, 0)],
    );
    let _rq = e.record(
        STRUCT,
        "rq",
        512,
        &[
            ("nr_running", u32_t, 0, 0),
            ("", anon, 64, 0),
            ("clock", u64_t, 128, 0),
            ("scx", scx_rq, 1024, 0),
        ],
    );
    let comm = e.array(char_t, u32_t, 16);
    let see = e.record(STRUCT, "sched_ext_entity", 32, &[("flags", u32_t, 0, 0)]);
    // An incomplete twin (no tgid) with more optional members, then the real one.
    let _twin = e.record(
        STRUCT,
        "task_struct",
        64,
        &[
            ("pid", u32_t, 0, 0),
            ("comm", comm, 64, 0),
            ("prio", u32_t, 32, 0),
            ("flags", u32_t, 320, 0),
        ],
    );
    let ti = e.record(
        STRUCT,
        "thread_info",
        24,
        &[("flags", u64_t, 0, 0), ("cpu", u32_t, 160, 0)],
    );
    let _task = e.record(
        STRUCT,
        "task_struct",
        4096,
        &[
            ("thread_info", ti, 0, 0),
            ("__state", u32_t, 192, 0),
            ("on_rq", u32_t, 224, 0),
            ("scx", see, 1024, 0),
            ("sched_class", void_p, 2048, 0),
            ("pid", u32_t, 8192, 0),
            ("tgid", u32_t, 8224, 0),
            ("comm", comm, 16384, 0),
        ],
    );
    e.decl_tag("kfunc", _task);
    e.enumeration(
        "scx_exit_kind",
        &[("SCX_EXIT_NONE", 0), ("SCX_EXIT_ERROR", 1024)],
    );
    e.enumeration("", &[("SCX_DSQ_LNODE_ITER_CURSOR", 1)]);
    e.enum64("scx_dsq_id_flags", &[("SCX_DSQ_LOCAL", (1 << 63) | 2)]);
    let rq_var = e.var("runqueues", _rq);
    let other = e.var("other_pcpu", u64_t);
    e.datasec(".data..percpu", &[(other, 0, 8), (rq_var, 4096, 512)]);
    e.finish()
}

fn mini() -> KernelBtf {
    KernelBtf::from_raw(&mini_kernel(), "fixture").expect("fixture parses")
}

/// Crafted BTF: `rq` holds 16 anonymous members of a struct that holds 16
/// anonymous members of the next, 16 levels deep, and no member the
/// layout looks for: a lookup without a work bound would visit 16^16
/// members.
#[test]
fn fanned_out_anonymous_members_cost_a_bounded_lookup() {
    let mut e = Enc::new();
    let int = e.int("int", 4);
    let mut inner = e.record(STRUCT, "", 4, &[("leaf", int, 0, 0)]);
    for _ in 0..16 {
        let members: Vec<(&str, u32, u32, u32)> = (0..16).map(|_| ("", inner, 0, 0)).collect();
        inner = e.record(STRUCT, "", 4, &members);
    }
    e.record(STRUCT, "rq", 4, &[("", inner, 0, 0)]);
    let btf = KernelBtf::from_raw(&e.finish(), "crafted").expect("parses");
    let t = std::time::Instant::now();
    let l = btf.layout();
    assert!(l.rq.is_none(), "rq has none of the members");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn anonymous_unions_nested_structs_and_qualifiers() {
    let l = mini().layout();
    let rq = l.rq.expect("rq");
    assert_eq!(
        (rq.struct_size, rq.nr_running, rq.curr, rq.clock, rq.scx),
        (512, 0, 8, 16, 128)
    );
    assert_eq!((rq.idle, rq.cpu), (None, None));
    let scx_rq = l.scx_rq.expect("scx_rq");
    assert_eq!(
        (scx_rq.runnable_list, scx_rq.nr_running, scx_rq.flags),
        (64, 80, 84)
    );
    assert_eq!(scx_rq.cpu_released, None, "bitfields are not byte members");
    let dsq = l.dsq.expect("dsq");
    assert_eq!((dsq.list, dsq.nr, dsq.seq, dsq.id), (8, 24, 28, 32));
    assert_eq!(l.list_head.map(|h| (h.next, h.prev)), Some((0, 8)));
}

#[test]
fn the_complete_duplicate_wins_and_alternative_paths_resolve() {
    let t = mini().layout().task.expect("task_struct");
    assert_eq!(t.struct_size, 4096);
    assert_eq!(
        (t.pid, t.tgid, t.comm, t.state, t.scx),
        (1024, 1028, 2048, 24, 128)
    );
    assert_eq!(
        t.cpu,
        Some(20),
        "cpu|thread_info.cpu falls back to the nested path"
    );
    assert_eq!(
        t.prio, None,
        "optional members of the rejected twin do not leak in"
    );
}

#[test]
fn missing_structs_and_members_are_reported() {
    let k = mini();
    let l = k.layout();
    let missing: Vec<&str> = l.missing_groups().collect();
    assert!(missing.contains(&"scx_sched") && missing.contains(&"rhashtable"));
    assert!(!missing.contains(&"rq"));
    // sched_ext_entity exists but lacks required members.
    assert!(missing.contains(&"sched_ext_entity"));
    let report = k.layout_report();
    let see = report
        .iter()
        .find(|r| r.group == "sched_ext_entity")
        .unwrap();
    assert!(see.struct_found && !see.resolved() && see.missing_required.contains(&"dsq"));
    let rq = report.iter().find(|r| r.group == "rq").unwrap();
    assert!(rq.resolved() && rq.missing_optional.contains(&"idle"));
}

#[test]
fn percpu_vars_and_enum_constants() {
    let k = mini();
    assert_eq!(k.percpu_var_offset("runqueues"), Some(4096));
    assert_eq!(k.percpu_var_offset("other_pcpu"), Some(0));
    assert_eq!(k.percpu_var_offset("nope"), None);
    assert_eq!(
        k.enum_value(Some("scx_exit_kind"), "SCX_EXIT_ERROR"),
        Some(1024)
    );
    assert_eq!(k.enum_value(None, "SCX_DSQ_LNODE_ITER_CURSOR"), Some(1));
    assert_eq!(
        k.enum_value(None, "SCX_DSQ_LOCAL"),
        Some(((1u64 << 63) | 2) as i64)
    );
    assert_eq!(k.enum_value(Some("scx_exit_kind"), "SCX_DSQ_LOCAL"), None);
    assert_eq!(k.struct_size("task_struct"), Some(4096));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let good = mini_kernel();
    assert!(matches!(
        KernelBtf::from_bytes(b"nonsense", "x"),
        Err(BtfError::UnknownFormat(_))
    ));
    for cut in [2, 10, 24, 40, good.len() / 2, good.len() - 3] {
        let _ = KernelBtf::from_raw(&good[..cut], "cut");
    }
    let mut bad = good.clone();
    bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes()); // type_off
    assert!(KernelBtf::from_raw(&bad, "bad").is_err());
    let mut elf = b"\x7fELF".to_vec();
    elf.extend_from_slice(&[0; 60]);
    assert!(matches!(
        KernelBtf::from_bytes(&elf, "elf"),
        Err(BtfError::Elf(..))
    ));
}
