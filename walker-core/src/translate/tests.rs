use super::*;
use crate::mem::SliceMem;
use proptest::prelude::*;
use std::vec;
use std::vec::Vec;

/// Hand-built page tables in a flat physical memory.
struct Pt {
    mem: Vec<u8>,
    next: u64,
}

impl Pt {
    fn new() -> Self {
        Self {
            mem: vec![0; 8 << 20],
            next: 0x10_0000,
        }
    }
    fn page(&mut self) -> u64 {
        let p = self.next;
        self.next += 4096;
        p
    }
    fn get(&self, pa: u64) -> u64 {
        u64::from_le_bytes(self.mem[pa as usize..pa as usize + 8].try_into().unwrap())
    }
    fn set(&mut self, pa: u64, v: u64) {
        self.mem[pa as usize..pa as usize + 8].copy_from_slice(&v.to_le_bytes());
    }
    /// Map `va` -> `pa` with a leaf at `leaf` (1: 4K, 2: 2M, 3: 1G);
    /// returns the entry address at each level, top first.
    fn map(&mut self, root: u64, levels: u8, va: u64, pa: u64, leaf: u8) -> Vec<u64> {
        let mut table = root;
        let mut slots = Vec::new();
        for level in (leaf..=levels).rev() {
            let shift = 12 + 9 * (level as u64 - 1);
            let slot = table + ((va >> shift) & 0x1ff) * 8;
            slots.push(slot);
            if level == leaf {
                let ps = if leaf > 1 { PAGE_SIZE_BIT } else { 0 };
                self.set(slot, pa | ps | PRESENT | 2);
            } else {
                let e = self.get(slot);
                table = if e & PRESENT != 0 {
                    e & PHYS_MASK
                } else {
                    let t = self.page();
                    self.set(slot, t | PRESENT | 2);
                    t
                };
            }
        }
        slots
    }
}

fn translator(root: u64, levels: Levels) -> Translator {
    Translator::new(TranslatorConfig {
        root: Some(PageTableRoot {
            cr3: root,
            levels,
            pti: true,
        }),
        ..TranslatorConfig::default()
    })
}

const VMALLOC: u64 = 0xffff_c900_0012_3000;

#[test]
fn linear_maps_need_no_tables() {
    let mem = SliceMem::new(0, &[]);
    let mut t = Translator::new(TranslatorConfig {
        phys_base: 0x20_0000,
        ..TranslatorConfig::default()
    });
    assert_eq!(
        t.translate(&mem, 0xffff_ffff_8100_0010).unwrap(),
        0x120_0010
    );
    assert_eq!(
        t.translate(&mem, DEFAULT_PAGE_OFFSET_BASE + 0x1234)
            .unwrap(),
        0x1234
    );
    assert_eq!(
        t.translate(&mem, VMALLOC),
        Err(TranslateError::NoRoot(VMALLOC))
    );
    assert_eq!(
        per_cpu_addr(
            0xffff_ffff_8300_0000,
            0x7fff_0000_0000_0000u64.wrapping_neg()
        ),
        0xffff_ffff_8300_0000u64.wrapping_sub(0x7fff_0000_0000_0000)
    );
}

#[test]
fn every_leaf_size_at_four_and_five_levels() {
    for (levels, n, va) in [
        (Levels::Four, 4u8, VMALLOC),
        (Levels::Five, 5u8, 0xff7f_c900_0012_3000u64),
    ] {
        for (leaf, pa, off_mask) in [
            (1u8, 0x55_5000u64, 0xfffu64),
            (2, 0x60_0000, 0x1f_ffff),
            (3, 0x4000_0000, 0x3fff_ffff),
        ] {
            let mut pt = Pt::new();
            let root = pt.page();
            pt.map(root, n, va, pa, leaf);
            let mem = SliceMem::new(0, &pt.mem);
            let mut t = translator(root, levels);
            assert_eq!(
                t.translate(&mem, va).unwrap(),
                pa | (va & off_mask),
                "{levels:?} leaf {leaf}"
            );
        }
    }
}

#[test]
fn not_present_at_each_level_is_named() {
    for level in 1..=4u8 {
        let mut pt = Pt::new();
        let root = pt.page();
        let slots = pt.map(root, 4, VMALLOC, 0x55_5000, 1);
        pt.set(slots[(4 - level) as usize], 0);
        let mem = SliceMem::new(0, &pt.mem);
        let err = translator(root, Levels::Four)
            .translate(&mem, VMALLOC)
            .unwrap_err();
        assert_eq!(err, TranslateError::NotPresent { va: VMALLOC, level });
    }
}

#[test]
fn garbage_entries_are_errors() {
    // PS set at PML4.
    let mut pt = Pt::new();
    let root = pt.page();
    let slots = pt.map(root, 4, VMALLOC, 0x55_5000, 1);
    let e = pt.get(slots[0]);
    pt.set(slots[0], e | PAGE_SIZE_BIT);
    let mem = SliceMem::new(0, &pt.mem);
    assert!(matches!(
        translator(root, Levels::Four).translate(&mem, VMALLOC),
        Err(TranslateError::BadEntry { level: 4, .. })
    ));
    // Reserved bits in a 2 MiB leaf.
    let mut pt = Pt::new();
    let root = pt.page();
    let slots = pt.map(root, 4, VMALLOC, 0x60_0000, 2);
    pt.set(slots[2], 0x60_0000 | 0x4000 | PAGE_SIZE_BIT | PRESENT);
    let mem = SliceMem::new(0, &pt.mem);
    assert!(matches!(
        translator(root, Levels::Four).translate(&mem, VMALLOC),
        Err(TranslateError::BadEntry { level: 2, .. })
    ));
    // A table pointer outside memory.
    let mut pt = Pt::new();
    let root = pt.page();
    let slots = pt.map(root, 4, VMALLOC, 0x55_5000, 1);
    pt.set(slots[0], 0x7_0000_0000 | PRESENT);
    let mem = SliceMem::new(0, &pt.mem);
    assert!(matches!(
        translator(root, Levels::Four).translate(&mem, VMALLOC),
        Err(TranslateError::Mem(_))
    ));
    // Non-canonical.
    assert_eq!(
        translator(root, Levels::Four).translate(&mem, 0x8000_0000_0000_0000),
        Err(TranslateError::NotCanonical(0x8000_0000_0000_0000))
    );
}

#[test]
fn pti_user_cr3_and_pcid_bits_are_masked() {
    let mut pt = Pt::new();
    pt.next = 0x20_0000; // 8 KiB-aligned PGD pair
    let root = pt.page();
    pt.page();
    pt.map(root, 4, VMALLOC, 0x55_5000, 1);
    let mem = SliceMem::new(0, &pt.mem);
    let cr3 = root | PTI_USER_PGD | 0x5; // user PGD, PCID 5
    assert_eq!(
        translator(cr3, Levels::Four)
            .translate(&mem, VMALLOC)
            .unwrap(),
        0x55_5000
    );
    let mut no_pti = translator(cr3, Levels::Four);
    no_pti.config.root = Some(PageTableRoot {
        cr3,
        levels: Levels::Four,
        pti: false,
    });
    assert!(
        no_pti.translate(&mem, VMALLOC).is_err(),
        "the user PGD page is empty"
    );
}

#[test]
fn tlb_hits_agree_with_walks_until_flushed() {
    let mut pt = Pt::new();
    let root = pt.page();
    let slots = pt.map(root, 4, VMALLOC, 0x55_5000, 1);
    let mut t = translator(root, Levels::Four);
    {
        let mem = SliceMem::new(0, &pt.mem);
        assert_eq!(t.translate(&mem, VMALLOC + 8).unwrap(), 0x55_5008);
        assert_eq!(t.translate(&mem, VMALLOC + 16).unwrap(), 0x55_5010);
    }
    assert_eq!(
        t.stats(),
        TranslateStats {
            walks: 1,
            tlb_hits: 1
        }
    );
    pt.set(slots[3], 0x66_6000 | PRESENT);
    let mem = SliceMem::new(0, &pt.mem);
    t.flush();
    assert_eq!(t.translate(&mem, VMALLOC).unwrap(), 0x66_6000);
    // More distinct pages than TLB entries: answers stay right.
    for i in 0..40u64 {
        pt.map(
            root,
            4,
            VMALLOC + 0x10_0000 + i * 4096,
            0x70_0000 + i * 4096,
            1,
        );
    }
    let mem = SliceMem::new(0, &pt.mem);
    for round in 0..2 {
        for i in 0..40u64 {
            let got = t
                .translate(&mem, VMALLOC + 0x10_0000 + i * 4096 + 3)
                .unwrap();
            assert_eq!(got, 0x70_0000 + i * 4096 + 3, "round {round} page {i}");
        }
    }
}

#[test]
fn reads_cross_pages_mapped_apart() {
    let mut pt = Pt::new();
    let root = pt.page();
    pt.map(root, 4, VMALLOC, 0x55_5000, 1);
    pt.map(root, 4, VMALLOC + 0x1000, 0x44_4000, 1);
    pt.mem[0x55_5ffc..0x55_6000].copy_from_slice(b"abcd");
    pt.mem[0x44_4000..0x44_4004].copy_from_slice(b"efgh");
    let mem = SliceMem::new(0, &pt.mem);
    let mut t = translator(root, Levels::Four);
    let mut buf = [0u8; 8];
    t.read_virt(&mem, VMALLOC + 0xffc, &mut buf).unwrap();
    assert_eq!(&buf, b"abcdefgh");
    let v: u64 = t.read_virt_pod(&mem, VMALLOC + 0xffc).unwrap();
    assert_eq!(v, u64::from_le_bytes(*b"abcdefgh"));
    let mut big = [0u8; 0x1800];
    assert!(matches!(
        t.read_virt(&mem, VMALLOC + 0x1000, &mut big),
        Err(TranslateError::NotPresent { level: 1, .. })
    ));
}

/// Reference walk written independently of `walk`, for the property test.
fn reference(mem: &[u8], cr3: u64, va: u64) -> Option<u64> {
    let rd = |pa: u64| -> Option<u64> {
        let s = mem.get(pa as usize..pa as usize + 8)?;
        Some(u64::from_le_bytes(s.try_into().ok()?))
    };
    let sext = ((va as i64) << 16 >> 16) as u64;
    if sext != va {
        return None;
    }
    let pml4 = rd((cr3 & PHYS_MASK & !PTI_USER_PGD) + ((va >> 39) & 511) * 8)?;
    if pml4 & 1 == 0 || pml4 & 0x80 != 0 {
        return None;
    }
    let pdpt = rd((pml4 & PHYS_MASK) + ((va >> 30) & 511) * 8)?;
    if pdpt & 1 == 0 {
        return None;
    }
    if pdpt & 0x80 != 0 {
        return (pdpt & PHYS_MASK & 0x3fff_e000 == 0)
            .then_some((pdpt & 0x000f_ffff_c000_0000) | (va & 0x3fff_ffff));
    }
    let pd = rd((pdpt & PHYS_MASK) + ((va >> 21) & 511) * 8)?;
    if pd & 1 == 0 {
        return None;
    }
    if pd & 0x80 != 0 {
        return (pd & PHYS_MASK & 0x1f_e000 == 0)
            .then_some((pd & 0x000f_ffff_ffe0_0000) | (va & 0x1f_ffff));
    }
    let pte = rd((pd & PHYS_MASK) + ((va >> 12) & 511) * 8)?;
    (pte & 1 != 0).then_some((pte & PHYS_MASK) | (va & 0xfff))
}

proptest! {
    #[test]
    fn random_tables_never_panic_and_agree_with_reference(
        entries in proptest::collection::vec(any::<u64>(), 4 * 512),
        picks in proptest::collection::vec((0usize..4 * 512, 0u64..4), 0..64),
        va in any::<u64>(),
    ) {
        // Four 4 KiB tables at 0x0, 0x1000, 0x2000, 0x3000 whose entries are
        // random, with some steered to point at the other tables so walks
        // go deep.
        let mut mem = vec![0u8; 0x4000];
        for (i, e) in entries.iter().enumerate() {
            mem[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
        }
        for (slot, table) in picks {
            let e = (table << 12) | (entries[slot] & 0xfff & !0x80) | 1;
            mem[slot * 8..slot * 8 + 8].copy_from_slice(&e.to_le_bytes());
        }
        let m = SliceMem::new(0, &mem);
        let mut t = translator(0, Levels::Four);
        let got = t.translate(&m, va);
        let direct = va.checked_sub(DEFAULT_PAGE_OFFSET_BASE).is_some_and(|o| o < DIRECT_MAP_SIZE_L4)
            || va >= START_KERNEL_MAP;
        if !direct {
            prop_assert_eq!(got.ok(), reference(&mem, 0, va));
            // A second lookup (possibly a TLB hit) gives the same answer.
            prop_assert_eq!(t.translate(&m, va).ok(), got.ok());
        }
    }
}
