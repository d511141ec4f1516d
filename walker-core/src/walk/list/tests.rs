use super::*;
use crate::walk::test_mem::Scratch;
use std::format;
use std::vec;
use std::vec::Vec;

const LH: ListHeadLayout = ListHeadLayout {
    struct_size: 16,
    next: 0,
    prev: 8,
};
const HEAD: u64 = 0x1000;

/// A well-formed circular list: head at 0x1000, nodes at 0x2000 + 0x100*i.
fn list(n: u64) -> (Scratch, Vec<u64>) {
    let mut s = Scratch::new(0x10_0000);
    let head = Scratch::va(HEAD);
    let nodes: Vec<u64> = (0..n).map(|i| Scratch::va(0x2000 + 0x100 * i)).collect();
    let mut all = vec![head];
    all.extend(&nodes);
    for (i, &a) in all.iter().enumerate() {
        s.put(a, all[(i + 1) % all.len()]);
        s.put(a + 8, all[(i + all.len() - 1) % all.len()]);
    }
    (s, nodes)
}

fn collect(s: &Scratch, max: u32, skip: &[u64]) -> (WalkSummary, Vec<u64>) {
    let mut seen = Vec::new();
    let mut tr = Scratch::translator();
    let sum = walk_list(&s.mem(), &mut tr, &LH, Scratch::va(HEAD), max, |_, n| {
        if skip.contains(&n) {
            return Step::Skip;
        }
        seen.push(n);
        Step::Continue
    });
    (sum, seen)
}

#[test]
fn empty_and_long_lists() {
    let (s, _) = list(0);
    let (sum, seen) = collect(&s, 10, &[]);
    assert!(seen.is_empty() && sum.complete());
    let (s, nodes) = list(500);
    let (sum, seen) = collect(&s, 1000, &[]);
    assert_eq!(seen, nodes);
    assert_eq!((sum.visited, sum.bad_prev), (500, 0));
    assert!(sum.complete());
}

#[test]
fn the_step_bound_truncates() {
    let (s, nodes) = list(50);
    let (sum, seen) = collect(&s, 10, &[]);
    assert_eq!(seen, nodes[..10]);
    assert!(sum.truncated && !sum.complete());
}

#[test]
fn cursors_are_skipped_not_counted() {
    let (s, nodes) = list(5);
    let (sum, seen) = collect(&s, 10, &[nodes[1], nodes[3]]);
    assert_eq!(seen, [nodes[0], nodes[2], nodes[4]]);
    assert_eq!((sum.visited, sum.skipped), (3, 2));
}

#[test]
fn a_cycle_that_misses_the_head_is_found() {
    // rho: node 4 points back to node 2.
    let (mut s, nodes) = list(6);
    s.put(nodes[4], nodes[2]);
    let (sum, seen) = collect(&s, 1000, &[]);
    assert!(sum.cycle, "{sum:?}");
    assert!(
        seen.len() < 20,
        "stopped soon after entering the cycle: {}",
        seen.len()
    );
    // Self-loop.
    let (mut s, nodes) = list(3);
    s.put(nodes[0], nodes[0]);
    assert!(collect(&s, 1000, &[]).0.cycle);
}

#[test]
fn corrupt_pointers_end_the_walk_with_the_reason() {
    for (bad, want) in [
        (0u64, "Null"),
        (Scratch::va(0x2003), "Misaligned"),
        (Scratch::va(0x7000_0000), "Unreadable"),
    ] {
        let (mut s, nodes) = list(4);
        s.put(nodes[1], bad);
        let (sum, seen) = collect(&s, 100, &[]);
        assert_eq!(seen, nodes[..2], "{want}");
        let c = sum.corrupt.expect("corrupt");
        assert!(format!("{:?}", c.why).starts_with(want), "{c:?}");
    }
}

#[test]
fn a_broken_prev_is_counted_not_fatal() {
    let (mut s, nodes) = list(3);
    s.put(nodes[1] + 8, nodes[2]);
    let (sum, seen) = collect(&s, 10, &[]);
    assert_eq!((seen.len(), sum.bad_prev), (3, 1));
}

#[test]
fn an_unreadable_head_reads_nothing() {
    let s = Scratch::new(0x100);
    let (sum, seen) = collect(&s, 10, &[]);
    assert!(seen.is_empty() && sum.corrupt.is_some());
}

#[test]
fn a_visitor_may_bring_the_links_or_end_the_walk() {
    // The visitor reads each node's links with its own read, and reports
    // an unreadable node as walk_list would.
    let (mut s, nodes) = list(4);
    s.put(nodes[2], Scratch::va(0x7000_0000));
    let mem = s.mem();
    let mut tr = Scratch::translator();
    let mut seen = Vec::new();
    let sum = walk_list_with(&mem, &mut tr, &LH, Scratch::va(HEAD), None, 100, |tr, n| {
        let link = read_link(&mem, tr, &LH, n)?;
        seen.push(n);
        Ok((Step::Continue, link))
    });
    assert_eq!(seen, nodes[..3]);
    let c = sum.corrupt.expect("corrupt");
    assert_eq!(c.at, Scratch::va(0x7000_0000));
    assert!(matches!(c.why, Broken::Unreadable(_)), "{c:?}");
    assert_eq!(sum.visited, 3);
}
