use super::*;
use crate::walk::test_mem::Scratch;
use std::vec::Vec;

const RHT: RhashtableLayout = RhashtableLayout {
    struct_size: 160,
    tbl: 0,
    nelems: None,
    key_len: None,
};
const BT: BucketTableLayout = BucketTableLayout {
    struct_size: 64,
    size: 0,
    buckets: 64,
    nest: Some(4),
    future_tbl: Some(48),
};
const RH: RhashHeadLayout = RhashHeadLayout {
    struct_size: 8,
    next: 0,
};
const HT: u64 = 0x1000;
const TBL: u64 = 0x2000;

/// A table of `size` buckets; `chains[i]` lists the entries (offsets) of
/// bucket i; each chain ends in that bucket's nulls marker; bucket lock
/// bits set on odd buckets.
fn table(size: u32, chains: &[&[u64]]) -> Scratch {
    let mut s = Scratch::new(0x20_0000);
    s.put(Scratch::va(HT), Scratch::va(TBL));
    s.put_u32(Scratch::va(TBL), size);
    for (i, chain) in chains.iter().enumerate() {
        let bucket = Scratch::va(TBL + 64 + 8 * i as u64);
        let nulls = bucket | 1;
        let lock = (i % 2) as u64;
        match chain.first() {
            Some(&first) => s.put(bucket, Scratch::va(first) | lock),
            None => s.put(bucket, 0),
        }
        for (j, &e) in chain.iter().enumerate() {
            let next = chain.get(j + 1).map_or(nulls, |&n| Scratch::va(n));
            s.put(Scratch::va(e), next);
        }
    }
    s
}

fn collect(s: &Scratch, limits: HashLimits) -> (WalkSummary, Vec<u64>) {
    let mut seen = Vec::new();
    let mut tr = Scratch::translator();
    let sum = walk_rhashtable(
        &s.mem(),
        &mut tr,
        (&RHT, &BT, &RH),
        Scratch::va(HT),
        limits,
        |_, e| {
            seen.push(e - Scratch::va(0));
            Step::Continue
        },
    );
    (sum, seen)
}

#[test]
fn chains_in_several_buckets_with_lock_bits_and_nulls() {
    let s = table(
        4,
        &[&[0x5000, 0x5100], &[0x6000], &[], &[0x7000, 0x7100, 0x7200]],
    );
    let (sum, seen) = collect(&s, HashLimits::default());
    assert_eq!(seen, [0x5000, 0x5100, 0x6000, 0x7000, 0x7100, 0x7200]);
    assert!(sum.complete(), "{sum:?}");
}

#[test]
fn many_buckets_span_several_batches() {
    let entries: Vec<u64> = (0..200).map(|i| 0x1_0000 + 0x40 * i).collect();
    let chains: Vec<&[u64]> = entries.iter().map(std::slice::from_ref).collect();
    let s = table(256, &chains);
    let (sum, seen) = collect(&s, HashLimits::default());
    assert_eq!(seen, entries);
    assert!(sum.complete());
}

#[test]
fn garbage_sizes_nesting_and_cycles_are_reported() {
    let mut s = table(4, &[&[0x5000]]);
    s.put_u32(Scratch::va(TBL), 3);
    assert!(matches!(
        collect(&s, HashLimits::default()).0.corrupt,
        Some(Corrupt {
            why: Broken::BadValue(3),
            ..
        })
    ));
    s.put_u32(Scratch::va(TBL), 1 << 20);
    assert!(collect(&s, HashLimits::default()).0.corrupt.is_some());
    let mut s = table(4, &[&[0x5000]]);
    s.put_u32(Scratch::va(TBL + 4), 1);
    assert!(matches!(
        collect(&s, HashLimits::default()).0.corrupt,
        Some(Corrupt {
            why: Broken::Nested,
            ..
        })
    ));
    let mut s = table(2, &[&[0x5000, 0x5100, 0x5200]]);
    s.put(Scratch::va(0x5200), Scratch::va(0x5100));
    let (sum, seen) = collect(&s, HashLimits::default());
    assert!(sum.cycle && seen.len() < 20);
    let mut s = table(2, &[&[0x5000, 0x5100]]);
    s.put(Scratch::va(0x5000), Scratch::va(0x9000_0000));
    let (sum, seen) = collect(&s, HashLimits::default());
    assert_eq!(seen, [0x5000]);
    assert!(matches!(
        sum.corrupt,
        Some(Corrupt {
            why: Broken::Unreadable(_),
            ..
        })
    ));
}

#[test]
fn bounds_truncate_chains_and_totals() {
    let s = table(2, &[&[0x5000, 0x5100, 0x5200], &[0x6000, 0x6100]]);
    let lim = HashLimits {
        max_chain: 2,
        ..HashLimits::default()
    };
    let (sum, seen) = collect(&s, lim);
    assert_eq!(seen, [0x5000, 0x5100, 0x6000, 0x6100]);
    assert!(sum.truncated);
    let lim = HashLimits {
        max_entries: 3,
        ..HashLimits::default()
    };
    let (sum, seen) = collect(&s, lim);
    assert_eq!(seen.len(), 3);
    assert!(sum.truncated);
}

#[test]
fn a_resize_in_progress_is_flagged() {
    let mut s = table(2, &[&[0x5000]]);
    s.put(Scratch::va(TBL + 48), Scratch::va(0x8000));
    let (sum, seen) = collect(&s, HashLimits::default());
    assert_eq!(seen, [0x5000]);
    assert!(sum.truncated);
}
