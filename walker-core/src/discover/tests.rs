use super::*;
use crate::mem::SliceMem;
use std::vec;
use std::vec::Vec;

const MEM: usize = 8 << 20;
/// Physical load address of the synthetic kernel image (one 2 MiB page).
const LOAD: u64 = 0x40_0000;
const TEXT: u64 = 0xffff_ffff_8100_0000;
const BANNER: &[u8] = b"Linux version 9.9.9-test (ktstr@test) #1 SMP PREEMPT_DYNAMIC";
const POB: u64 = 0xff45_6780_0000_0000 & !((1 << 30) - 1);

/// A guest with page tables mapping a 2 MiB kernel image at `slide`.
struct Guest {
    mem: Vec<u8>,
    next: u64,
    root: u64,
    link: Symbols,
}

impl Guest {
    fn page(&mut self) -> u64 {
        let p = self.next;
        self.next += 0x2000;
        p
    }
    fn set(&mut self, pa: u64, v: u64) {
        self.mem[pa as usize..pa as usize + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn get(&self, pa: u64) -> u64 {
        u64::from_le_bytes(self.mem[pa as usize..pa as usize + 8].try_into().unwrap())
    }
    fn map_2m(&mut self, levels: u8, va: u64, pa: u64) {
        let mut table = self.root;
        for level in (2..=levels).rev() {
            let slot = table + ((va >> (12 + 9 * (u64::from(level) - 1))) & 0x1ff) * 8;
            if level == 2 {
                self.set(slot, pa | 0x83);
            } else if self.get(slot) & 1 == 0 {
                let t = self.page();
                self.set(slot, t | 3);
                table = t;
            } else {
                table = self.get(slot) & PHYS_MASK_T;
            }
        }
    }

    fn new(levels: Levels, slide: u64) -> Self {
        let mut g = Guest {
            mem: vec![0; MEM],
            next: 0x10_0000,
            root: 0,
            link: Symbols::default(),
        };
        g.root = g.page();
        let n = if levels == Levels::Five { 5 } else { 4 };
        g.map_2m(n, TEXT + slide, LOAD);
        let phys_base = LOAD.wrapping_sub(TEXT + slide - START_KERNEL_MAP);
        let img = LOAD as usize;
        g.mem[img..img + BANNER.len()].copy_from_slice(BANNER);
        g.set(LOAD + 0x1000, phys_base);
        g.set(LOAD + 0x1008, POB);
        g.mem[img + 0x1010..img + 0x1014].copy_from_slice(&4u32.to_le_bytes());
        g.mem[img + 0x1014..img + 0x1018].copy_from_slice(&2u32.to_le_bytes());
        g.set(LOAD + 0x1018, (MEM / 4096) as u64);
        // init_top_pgt: a copy of the root's top table.
        let top = g.mem[g.root as usize..g.root as usize + 4096].to_vec();
        g.mem[img + 0x2000..img + 0x3000].copy_from_slice(&top);
        for (name, off) in [
            ("linux_banner", 0),
            ("_text", 0),
            ("phys_base", 0x1000),
            ("page_offset_base", 0x1008),
            ("nr_cpu_ids", 0x1010),
            ("nr_node_ids", 0x1014),
            ("max_pfn", 0x1018),
            ("init_top_pgt", 0x2000),
        ] {
            g.link.set(name, TEXT + off);
        }
        // A per-CPU offset (pre-6.15 style) must not slide.
        g.link.runqueues = Some(0x3_4000);
        g
    }
    fn image(&self) -> KernelImage<'_> {
        KernelImage {
            symbols: &self.link,
            banner: BANNER,
        }
    }
}

const PHYS_MASK_T: u64 = 0x000f_ffff_ffff_f000;

fn regs(cr3: u64, levels: Levels) -> VcpuRegs {
    VcpuRegs {
        cr3,
        cr4: if levels == Levels::Five { CR4_LA57 } else { 0 },
    }
}

#[test]
fn finds_slide_phys_base_and_kernel_root_at_both_depths() {
    for levels in [Levels::Four, Levels::Five] {
        for slide in [0, 0x1e00_0000, 0x3d00_0000 - 0x20_0000] {
            let g = Guest::new(levels, slide);
            let mem = SliceMem::new(0, &g.mem);
            let d = discover(&mem, regs(g.root, levels), &g.image())
                .unwrap_or_else(|e| panic!("{levels:?} slide {slide:#x}: {e}"));
            assert_eq!(d.slide, slide);
            assert_eq!(
                d.phys_base,
                LOAD.wrapping_sub(TEXT + slide - START_KERNEL_MAP)
            );
            assert_eq!(d.page_offset_base, POB);
            assert_eq!((d.nr_cpu_ids, d.nr_node_ids), (4, 2));
            assert_eq!(d.direct_map_size, MEM as u64);
            assert!(d.kernel_root, "init_top_pgt maps the kernel");
            let root = d.root.unwrap();
            assert_eq!(root.cr3, LOAD + 0x2000);
            assert_eq!(root.levels, levels);
            assert_eq!(d.symbols.nr_cpu_ids, Some(TEXT + 0x1010 + slide));
            assert_eq!(d.symbols.runqueues, Some(0x3_4000), "per-CPU offsets stay");
            // The translator it describes reads the kernel's variables.
            let mut tr = d.translator();
            let v: u32 = tr.read_virt_pod(&mem, TEXT + slide + 0x1010).unwrap();
            assert_eq!(v, 4);
            assert!(d.reads > 0);
        }
    }
}

#[test]
fn a_user_pti_root_is_tried_as_its_kernel_half() {
    let g = Guest::new(Levels::Four, 0x60_0000);
    let mem = SliceMem::new(0, &g.mem);
    // The user PGD (root + 4 KiB) maps nothing of the kernel.
    let d = discover(&mem, regs(g.root | 0x1000 | 0x5, Levels::Four), &g.image()).unwrap();
    assert!(d.user_pti_root);
    assert_eq!(d.slide, 0x60_0000);
}

#[test]
fn nothing_fails_silently() {
    let g = Guest::new(Levels::Four, 0x20_0000);
    let mem = SliceMem::new(0, &g.mem);
    // Another kernel's banner.
    let other = KernelImage {
        symbols: &g.link,
        banner: b"Linux version 9.9.8-test (ktstr@test) #1 SMP PREEMPT_DYNAMIC",
    };
    assert!(matches!(
        discover(&mem, regs(g.root, Levels::Four), &other),
        Err(DiscoverError::BannerNotFound { .. })
    ));
    // Wrong paging depth.
    assert!(discover(&mem, regs(g.root, Levels::Five), &g.image()).is_err());
    // A CR3 that is not a page table.
    assert!(discover(&mem, regs(0x7f_f000, Levels::Four), &g.image()).is_err());
    // A phys_base variable that disagrees with where the image is.
    let mut bad = Guest::new(Levels::Four, 0x20_0000);
    bad.set(LOAD + 0x1000, 0x1234_0000);
    let mem = SliceMem::new(0, &bad.mem);
    assert!(matches!(
        discover(&mem, regs(bad.root, Levels::Four), &bad.image()),
        Err(DiscoverError::Implausible {
            what: "phys_base",
            ..
        })
    ));
    // nr_cpu_ids of 0.
    let mut bad = Guest::new(Levels::Four, 0);
    bad.set(LOAD + 0x1010, 0);
    let mem = SliceMem::new(0, &bad.mem);
    assert!(matches!(
        discover(&mem, regs(bad.root, Levels::Four), &bad.image()),
        Err(DiscoverError::Implausible {
            what: "nr_cpu_ids",
            ..
        })
    ));
    // No banner symbol.
    let mut syms = g.link;
    syms.linux_banner = None;
    let img = KernelImage {
        symbols: &syms,
        banner: BANNER,
    };
    assert_eq!(
        discover(&mem, regs(g.root, Levels::Four), &img),
        Err(DiscoverError::MissingSymbol("linux_banner"))
    );
}

#[test]
fn arbitrary_memory_is_an_error_not_a_panic() {
    let g = Guest::new(Levels::Four, 0);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = vec![0u8; 1 << 20];
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mem = SliceMem::new(0, &noise);
    for cr3 in [0, 0x1000, 0x8_0000, u64::MAX] {
        for levels in [Levels::Four, Levels::Five] {
            assert!(discover(&mem, regs(cr3, levels), &g.image()).is_err());
        }
    }
}

#[test]
fn runtime_symbols_alone_find_phys_base_by_its_own_value() {
    for slide in [0, 0x1e00_0000] {
        let g = Guest::new(Levels::Four, slide);
        let mem = SliceMem::new(0, &g.mem);
        let mut runtime = g.link;
        slide_image_symbols(&mut runtime, slide);
        let d = discover_from_symbols(&mem, &runtime).unwrap();
        assert_eq!(
            d.phys_base,
            LOAD.wrapping_sub(TEXT + slide - START_KERNEL_MAP)
        );
        assert_eq!((d.page_offset_base, d.nr_cpu_ids, d.root), (POB, 4, None));
        // Symbols of another boot: nothing reads back as itself.
        let mut other = runtime;
        slide_image_symbols(&mut other, 0x40_0000);
        assert!(discover_from_symbols(&mem, &other).is_err());
    }
}
