//! A synthetic [`Layout`] for tests that do not have a real kernel at hand.
//!
//! Members are laid out in declaration order, 8-byte aligned, after an
//! 8-byte pad: deliberately unlike any real kernel, so a walker that
//! hard-codes an offset instead of reading the layout fails against it.

use std::vec::Vec;

use crate::layout::{Layout, Member};

/// Bytes an embedded member occupies; pointers and scalars take 8.
fn width(strukt: &str, member: &Member, sizes: &dyn Fn(&str) -> u32) -> u32 {
    match (strukt, member.name) {
        ("rq", "scx") => sizes("scx_rq"),
        ("scx_rq", "local_dsq" | "bypass_dsq") => sizes("scx_dispatch_q"),
        ("scx_sched_pcpu", "bypass_dsq") | ("scx_sched_pnode", "global_dsq") => {
            sizes("scx_dispatch_q")
        }
        ("scx_sched_pcpu", "event_stats") => sizes("scx_event_stats"),
        ("task_struct", "scx") => sizes("sched_ext_entity"),
        ("sched_ext_entity", "dsq_list") => sizes("scx_dsq_list_node"),
        ("scx_sched", "dsq_hash") => sizes("rhashtable"),
        ("scx_sched", "ops_name") | ("sched_ext_ops", "name") => 128,
        // bucket_table.buckets is a flexible array at the end.
        ("bucket_table", "buckets") => 0,
        ("xa_node", "slots") => 64 * 8,
        ("bpf_map", "name") | ("bpf_prog_aux", "name") => 16,
        // Flexible arrays: a struct_ops map's ops, an array map's values.
        ("bpf_struct_ops_map", "kvalue_data")
        | ("bpf_array", "value" | "pptrs")
        | ("htab_elem", "key") => 0,
        (_, "runnable_list" | "runnable_node" | "tasks_node" | "node" | "list" | "comm") => 16,
        _ => 8,
    }
}

fn offsets(strukt: &str, members: &[Member], sizes: &dyn Fn(&str) -> u32) -> (u32, Vec<u32>) {
    let pad = match strukt {
        "list_head" => 0,
        // They embed a `struct bpf_map` first, as the kernel's do.
        "bpf_array" | "bpf_struct_ops_map" | "bpf_htab" => sizes("bpf_map"),
        _ => 8,
    };
    let mut at = pad;
    // A flexible array member (width 0) goes after everything else.
    let mut offs: Vec<u32> = members
        .iter()
        .map(|m| {
            let o = at;
            at += width(strukt, m, sizes).next_multiple_of(8);
            o
        })
        .collect();
    for (o, m) in offs.iter_mut().zip(members) {
        if width(strukt, m, sizes) == 0 {
            *o = at;
        }
    }
    (at.max(8), offs)
}

fn struct_size(strukt: &str) -> u32 {
    let (_, _, members) = Layout::GROUPS
        .iter()
        .find(|(_, s, _)| *s == strukt)
        .copied()
        .unwrap_or(("", "", &[]));
    offsets(strukt, members, &struct_size).0
}

/// The synthetic layout: every group present, every optional member too.
pub fn compact_layout() -> Layout {
    Layout::build(|strukt, members, out| {
        let (size, offs) = offsets(strukt, members, &struct_size);
        for (slot, o) in out.iter_mut().zip(offs) {
            *slot = Some(o);
        }
        Some(size)
    })
}
