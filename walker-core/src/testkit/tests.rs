use super::*;
use crate::mem::GuestMem;

fn follow(k: &SyntheticKernel, head: u64, max: usize) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = k.read_u64(head);
    while at != head && out.len() < max {
        out.push(at);
        at = k.read_u64(at);
    }
    out
}

#[test]
fn compact_layout_has_every_group_and_nested_structs_fit() {
    let l = compact_layout();
    assert_eq!(l.missing_groups().count(), 0);
    let (rq, scx_rq, dsq) = (l.rq.unwrap(), l.scx_rq.unwrap(), l.dsq.unwrap());
    assert!(rq.scx + scx_rq.struct_size <= rq.struct_size);
    assert!(scx_rq.local_dsq + dsq.struct_size <= scx_rq.struct_size);
    assert_ne!(l.task.unwrap().pid, 0, "no member sits at offset 0");
}

#[test]
fn queues_and_lists_link_like_the_kernel() {
    for style in [PerCpuStyle::Absolute, PerCpuStyle::ZeroBased] {
        let mut k = SyntheticKernel::new(compact_layout(), 2, style).unwrap();
        assert_ne!(k.rq(0), k.rq(1));
        assert!(k.rq(1) >= DIRECT_MAP, "per-CPU rq lands in the direct map");
        let tasks: Vec<u64> = (0..3).map(|i| k.add_task(100 + i, "worker")).collect();
        let dsq = k.local_dsq(1);
        for &t in &tasks {
            k.enqueue(dsq, t);
        }
        let l = k.layout;
        let (e, d, n) = (l.entity.unwrap(), l.dsq.unwrap(), l.dsq_list_node.unwrap());
        let nodes = follow(&k, dsq + d.list as u64, 10);
        let expect: Vec<u64> = tasks
            .iter()
            .map(|t| k.entity(*t) + e.dsq_list as u64 + n.node as u64)
            .collect();
        assert_eq!(nodes, expect);
        assert_eq!(k.read_u32(dsq + d.nr as u64), 3);
        let on_list = follow(&k, k.sym("scx_tasks"), 10);
        assert_eq!(on_list.len(), 3);
        // The same bytes through GuestMem at the kit's physical address.
        let mut b = [0u8; 4];
        k.mem()
            .read(SyntheticKernel::pa(dsq + d.nr as u64), &mut b)
            .unwrap();
        assert_eq!(u32::from_le_bytes(b), 3);
    }
}

#[test]
fn user_dsqs_chain_in_buckets_and_end_in_nulls_markers() {
    let mut k = SyntheticKernel::new(compact_layout(), 1, PerCpuStyle::Absolute).unwrap();
    let sched = k.attach_scheduler("fixture", 4).unwrap();
    assert_eq!(k.read_u64(k.sym("scx_root")), sched);
    let a = k.add_user_dsq(sched, 1);
    let b = k.add_user_dsq(sched, 5);
    let l = k.layout;
    let hn = l.dsq.unwrap().hash_node.unwrap() as u64;
    let next = l.rhash_head.unwrap().next as u64;
    // Bucket 1 holds b then a (head insertion), then the odd nulls marker.
    assert_eq!(k.read_u64(b + hn + next), a + hn);
    assert_eq!(k.read_u64(a + hn + next) & 1, 1);
    assert_ne!(k.global_dsq(sched, 0), k.bypass_dsq(sched, 0));
}
