//! Everything a capture needs to know about a running guest kernel, found
//! from its memory, one vCPU's CR3/CR4 and the kernel's link-time
//! symbols: the KASLR slide, `phys_base`, `page_offset_base`, the
//! kernel's own page-table root, the runtime symbol addresses,
//! `nr_cpu_ids` and `nr_node_ids`. No guest cooperation, no kallsyms
//! file.
//!
//! How: the vmlinux's `linux_banner` bytes are looked for through the
//! vCPU's page tables at every 2 MiB step of the kernel-image mapping (the
//! only steps KASLR takes on x86-64); where they are found gives the slide
//! and, through the leaf, `phys_base`. Under PTI a vCPU frozen in user
//! mode holds the user half of the PGD pair, which does not map the
//! banner; the kernel half is tried too. The kernel's `init_top_pgt` then
//! replaces the vCPU's root, so the translation outlives the process
//! whose tables the vCPU happened to hold. Before anything is returned the
//! translation is checked: the banner read through the image mapping,
//! through the page tables from the kernel's root and through the direct
//! map must all equal the vmlinux's, and the `phys_base` variable must
//! equal the one found. Every step is bounded (at most
//! [`SLIDE_CANDIDATES`] candidate walks of at most five reads each).

use crate::mem::GuestMem;
use crate::symbols::Symbols;
use crate::translate::{
    DIRECT_MAP_SIZE_L4, DIRECT_MAP_SIZE_L5, KERNEL_IMAGE_SIZE, Levels, PageTableRoot,
    START_KERNEL_MAP, TranslateError, Translator, TranslatorConfig,
};

/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;
/// KASLR moves the kernel image in steps of `CONFIG_PHYSICAL_ALIGN`, at
/// least 2 MiB on x86-64.
pub const SLIDE_STEP: u64 = 2 << 20;
/// Slides tried: every step of the 1 GiB kernel-image mapping.
pub const SLIDE_CANDIDATES: u64 = KERNEL_IMAGE_SIZE / SLIDE_STEP;
/// Most CPUs believed (`NR_CPUS` is at most 8192 on x86-64).
pub const MAX_CPUS: u32 = 8192;
/// Most NUMA nodes believed (`1 << CONFIG_NODES_SHIFT`, at most 10).
pub const MAX_NODES: u32 = 1024;
/// Longest banner compared.
const BANNER_MAX: usize = 512;

/// The registers discovery needs from one vCPU of the paused guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuRegs {
    /// CR3 (PCID and flag bits are ignored).
    pub cr3: u64,
    /// CR4 (only LA57 is used).
    pub cr4: u64,
}

impl VcpuRegs {
    /// The page-table root these registers describe, before PTI is known.
    pub fn root(&self) -> PageTableRoot {
        PageTableRoot {
            cr3: self.cr3,
            levels: if self.cr4 & CR4_LA57 != 0 {
                Levels::Five
            } else {
                Levels::Four
            },
            pti: false,
        }
    }
}

/// What discovery needs from the vmlinux.
#[derive(Debug, Clone, Copy)]
pub struct KernelImage<'a> {
    /// Link-time addresses (from its `.symtab` or its kallsyms tables, see
    /// [`crate::kallsyms`]).
    pub symbols: &'a Symbols,
    /// The bytes of `linux_banner` in the vmlinux, without the NUL.
    pub banner: &'a [u8],
}

/// Why a guest kernel could not be discovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DiscoverError {
    /// The vmlinux's symbols lack one discovery needs.
    #[error("the vmlinux's symbols lack {0}")]
    MissingSymbol(&'static str),
    /// The banner is empty or does not start like a Linux banner.
    #[error("the vmlinux's linux_banner is not \"Linux version ...\"")]
    BadBanner,
    /// The banner is nowhere in the kernel-image mapping of the vCPU's
    /// page tables: another kernel, a CR3 that is not the guest's, or a
    /// vCPU that has no paging yet.
    #[error(
        "the vmlinux's linux_banner is not mapped at any of {slides} KASLR slides from CR3 {cr3:#x} \
         ({levels:?}-level paging, PTI halves tried: {pti_tried}): the memory, CR3 and vmlinux do not \
         belong to the same running kernel"
    )]
    BannerNotFound {
        /// The CR3 given.
        cr3: u64,
        /// Paging depth from CR4.
        levels: Levels,
        /// Whether the PTI kernel half was tried too.
        pti_tried: bool,
        /// Slides tried per root.
        slides: u64,
    },
    /// A value read from the guest is not what the kernel would hold.
    #[error("{what} reads {value:#x}: {why}")]
    Implausible {
        /// Which value.
        what: &'static str,
        /// What was read.
        value: u64,
        /// Why that cannot be.
        why: &'static str,
    },
    /// The translation found does not read the vmlinux's banner back.
    #[error("validation failed: linux_banner read through the {0} differs from the vmlinux's")]
    Mismatch(&'static str),
    /// A read that discovery needs failed.
    #[error("reading {what}: {source}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// Why it failed.
        source: TranslateError,
    },
}

/// What discovery found: enough to build the capture's translator and
/// target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discovered {
    /// Runtime minus link-time address of the kernel image (0 without KASLR).
    pub slide: u64,
    /// `phys_base`.
    pub phys_base: u64,
    /// `page_offset_base`.
    pub page_offset_base: u64,
    /// The root walks start from: the kernel's `init_top_pgt` when it
    /// maps the kernel, else the vCPU's (kernel half under PTI); `None`
    /// when no CR3 was known ([`discover_from_symbols`]): then only the
    /// kernel image and the direct map can be read.
    pub root: Option<PageTableRoot>,
    /// Whether `root` is the kernel's `init_top_pgt` (else the vCPU's).
    pub kernel_root: bool,
    /// The vCPU's CR3 held the user half of a PTI pair.
    pub user_pti_root: bool,
    /// Runtime addresses of every symbol the vmlinux gave.
    pub symbols: Symbols,
    /// `nr_cpu_ids`.
    pub nr_cpu_ids: u32,
    /// `nr_node_ids` (1 when the kernel has no such symbol).
    pub nr_node_ids: u32,
    /// Bytes of the direct map the translator takes without a walk:
    /// `max_pfn` pages. KASLR puts vmalloc and vmemmap right after the
    /// RAM's part of the direct map region, so its nominal size would
    /// claim their addresses; 0 (every direct-map address walked) when
    /// `max_pfn` is unknown.
    pub direct_map_size: u64,
    /// Guest reads discovery made.
    pub reads: u64,
}

impl Discovered {
    /// The translator configuration for this guest: kernel-image and
    /// direct-map shortcuts plus walks from [`Discovered::root`].
    pub fn translator_config(&self) -> TranslatorConfig {
        TranslatorConfig {
            phys_base: self.phys_base,
            page_offset_base: self.page_offset_base,
            direct_map_size: self.direct_map_size,
            kernel_image_size: KERNEL_IMAGE_SIZE,
            root: self.root,
        }
    }

    /// A translator for this guest.
    pub fn translator(&self) -> Translator {
        Translator::new(self.translator_config())
    }
}

/// A translator that only walks page tables.
fn walk_only(root: PageTableRoot) -> Translator {
    Translator::new(TranslatorConfig {
        phys_base: 0,
        page_offset_base: 0,
        direct_map_size: 0,
        kernel_image_size: 0,
        root: Some(root),
    })
}

/// Counts reads for [`Discovered::reads`].
struct Counted<'m, M: ?Sized> {
    mem: &'m M,
    reads: core::cell::Cell<u64>,
}

impl<M: GuestMem + ?Sized> GuestMem for Counted<'_, M> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), crate::MemError> {
        self.reads.set(self.reads.get().saturating_add(1));
        self.mem.read(gpa, buf)
    }
}

/// Whether `va` reads back as `want` through `tr`.
fn reads_back<M: GuestMem + ?Sized>(mem: &M, tr: &mut Translator, va: u64, want: &[u8]) -> bool {
    let mut buf = [0u8; BANNER_MAX];
    let Some(buf) = buf.get_mut(..want.len()) else {
        return false;
    };
    tr.read_virt(mem, va, buf).is_ok() && buf == want
}

/// The slide under which `root` maps the banner at link-time `banner_va`,
/// and the banner's guest-physical address.
fn find_slide<M: GuestMem + ?Sized>(
    mem: &M,
    root: PageTableRoot,
    banner_va: u64,
    banner: &[u8],
) -> Option<(u64, u64)> {
    let mut tr = walk_only(root);
    let end = START_KERNEL_MAP.wrapping_add(KERNEL_IMAGE_SIZE);
    // Slide 0 first: most guests run without KASLR.
    (0..SLIDE_CANDIDATES)
        .map(|k| k * SLIDE_STEP)
        .take_while(|s| banner_va.wrapping_add(*s) < end)
        .find_map(|slide| {
            let va = banner_va.wrapping_add(slide);
            let first = banner.get(..8)?;
            // One 8-byte read rejects most candidates before the whole banner.
            let pa = tr.translate(mem, va).ok()?;
            let mut head = [0u8; 8];
            mem.read(pa, &mut head).ok()?;
            (head == first && reads_back(mem, &mut tr, va, banner)).then_some((slide, pa))
        })
}

/// Find the running kernel in `mem` from one vCPU's registers and the
/// vmlinux it runs; see the module documentation.
pub fn discover<M: GuestMem + ?Sized>(
    mem: &M,
    vcpu: VcpuRegs,
    image: &KernelImage<'_>,
) -> Result<Discovered, DiscoverError> {
    let counted = Counted {
        mem,
        reads: core::cell::Cell::new(0),
    };
    let mem = &counted;
    let banner = image.banner;
    if !banner.starts_with(b"Linux version ") || banner.len() > BANNER_MAX {
        return Err(DiscoverError::BadBanner);
    }
    let found = locate_image(mem, vcpu, image)?;
    let banner_rt = found.banner_va.wrapping_add(found.slide);
    // The image mapping is linear: pa = va - __START_KERNEL_map + phys_base.
    let phys_base = found
        .banner_pa
        .wrapping_sub(banner_rt.wrapping_sub(START_KERNEL_MAP));
    let mut symbols = *image.symbols;
    slide_image_symbols(&mut symbols, found.slide);
    let mut image_tr = image_translator(phys_base);
    if !reads_back(mem, &mut image_tr, banner_rt, banner) {
        return Err(DiscoverError::Mismatch("kernel-image mapping"));
    }
    check_phys_base(mem, &mut image_tr, &symbols, phys_base)?;
    let page_offset_base = plausible_page_offset_base(read_symbol(
        mem,
        &mut image_tr,
        "page_offset_base",
        symbols.page_offset_base,
    )?)?;
    let levels = found.root.levels;
    let kernel_root = init_top_pgt(mem, &mut image_tr, &symbols, levels)
        .filter(|r| reads_back(mem, &mut walk_only(*r), banner_rt, banner));
    let root = kernel_root.unwrap_or(found.root);
    // Direct-map validation below needs the banner's page in the shortcut.
    let direct_map_size = match symbols.max_pfn {
        Some(va) => {
            let max_pfn =
                image_tr
                    .read_virt_pod(mem, va)
                    .map_err(|source| DiscoverError::Read {
                        what: "max_pfn",
                        source,
                    })?;
            direct_map_size(max_pfn, levels, found.banner_pa)?
        }
        None => 0,
    };
    let mut d = Discovered {
        slide: found.slide,
        phys_base,
        page_offset_base,
        root: Some(root),
        kernel_root: kernel_root.is_some(),
        user_pti_root: found.root.pti,
        symbols,
        nr_cpu_ids: 0,
        nr_node_ids: 1,
        direct_map_size,
        reads: 0,
    };
    let mut tr = d.translator();
    // Every way of reaching the banner agrees, or nothing is returned.
    if !reads_back(mem, &mut walk_only(root), banner_rt, banner) {
        return Err(DiscoverError::Mismatch("page tables"));
    }
    // Without max_pfn the direct map is walked: check it the same way.
    let direct = page_offset_base.wrapping_add(found.banner_pa);
    if !reads_back(mem, &mut tr, direct, banner) {
        return Err(DiscoverError::Mismatch("direct map"));
    }
    (d.nr_cpu_ids, d.nr_node_ids) = cpu_and_node_ids(mem, &mut tr, &symbols)?;
    d.reads = counted.reads.get();
    Ok(d)
}

/// The kernel's own page-table root (`init_top_pgt`), read through the
/// image mapping.
fn init_top_pgt<M: GuestMem + ?Sized>(
    mem: &M,
    image_tr: &mut Translator,
    symbols: &Symbols,
    levels: Levels,
) -> Option<PageTableRoot> {
    let pa = image_tr.translate(mem, symbols.init_top_pgt?).ok()?;
    Some(PageTableRoot {
        cr3: pa,
        levels,
        pti: false,
    })
}

/// The kernel's `phys_base` variable agrees with where its image was found.
fn check_phys_base<M: GuestMem + ?Sized>(
    mem: &M,
    image_tr: &mut Translator,
    symbols: &Symbols,
    phys_base: u64,
) -> Result<(), DiscoverError> {
    let var: u64 = read_symbol(mem, image_tr, "phys_base", symbols.phys_base)?;
    if var != phys_base {
        return Err(DiscoverError::Implausible {
            what: "phys_base",
            value: var,
            why: "differs from where the kernel image was found",
        });
    }
    Ok(())
}

/// Where the vCPU's page tables map the vmlinux's banner.
struct ImageFound {
    /// The root that maps it (the kernel half under PTI).
    root: PageTableRoot,
    /// KASLR's slide of the kernel image.
    slide: u64,
    /// The banner's link-time address.
    banner_va: u64,
    /// The banner's guest-physical address.
    banner_pa: u64,
}

/// Find the banner through the vCPU's root, or under PTI through the
/// kernel half of its PGD pair.
fn locate_image<M: GuestMem + ?Sized>(
    mem: &M,
    vcpu: VcpuRegs,
    image: &KernelImage<'_>,
) -> Result<ImageFound, DiscoverError> {
    let banner_va = image
        .symbols
        .linux_banner
        .ok_or(DiscoverError::MissingSymbol("linux_banner"))?;
    let vcpu_root = vcpu.root();
    // Under PTI, a CR3 with bit 12 set may be the user half of the pair.
    let pti_tried = vcpu.cr3 & (1 << 12) != 0;
    let roots = [
        Some(vcpu_root),
        pti_tried.then_some(PageTableRoot {
            pti: true,
            ..vcpu_root
        }),
    ];
    roots
        .into_iter()
        .flatten()
        .find_map(|root| {
            find_slide(mem, root, banner_va, image.banner).map(|(slide, banner_pa)| ImageFound {
                root,
                slide,
                banner_va,
                banner_pa,
            })
        })
        .ok_or(DiscoverError::BannerNotFound {
            cr3: vcpu.cr3,
            levels: vcpu_root.levels,
            pti_tried,
            slides: SLIDE_CANDIDATES,
        })
}

/// A translator for the kernel-image mapping only.
fn image_translator(phys_base: u64) -> Translator {
    Translator::new(TranslatorConfig {
        phys_base,
        page_offset_base: 0,
        direct_map_size: 0,
        kernel_image_size: KERNEL_IMAGE_SIZE,
        root: None,
    })
}

/// The value of the variable at `sym`, or why it could not be read.
fn read_symbol<T, M>(
    mem: &M,
    tr: &mut Translator,
    what: &'static str,
    sym: Option<u64>,
) -> Result<T, DiscoverError>
where
    T: zerocopy::FromBytes + zerocopy::IntoBytes,
    M: GuestMem + ?Sized,
{
    let va = sym.ok_or(DiscoverError::MissingSymbol(what))?;
    tr.read_virt_pod(mem, va)
        .map_err(|source| DiscoverError::Read { what, source })
}

/// KASLR places the direct map on a PUD (1 GiB) boundary in the upper half.
fn plausible_page_offset_base(value: u64) -> Result<u64, DiscoverError> {
    if value >> 63 == 0 || value & ((1 << 30) - 1) != 0 {
        return Err(DiscoverError::Implausible {
            what: "page_offset_base",
            value,
            why: "not a 1 GiB-aligned kernel address",
        });
    }
    Ok(value)
}

/// The RAM's part of the direct map, `max_pfn` pages: it must fit the
/// paging mode's direct map and hold the kernel image.
fn direct_map_size(max_pfn: u64, levels: Levels, banner_pa: u64) -> Result<u64, DiscoverError> {
    let nominal = match levels {
        Levels::Four => DIRECT_MAP_SIZE_L4,
        Levels::Five => DIRECT_MAP_SIZE_L5,
    };
    max_pfn
        .checked_mul(4096)
        .filter(|b| (1..=nominal).contains(b) && *b > banner_pa)
        .ok_or(DiscoverError::Implausible {
            what: "max_pfn",
            value: max_pfn,
            why: "no direct map of that many pages holds the kernel",
        })
}

/// `nr_cpu_ids`, and `nr_node_ids` where the kernel has it (else 1), each
/// within what x86-64 kernels allow.
fn cpu_and_node_ids<M: GuestMem + ?Sized>(
    mem: &M,
    tr: &mut Translator,
    symbols: &Symbols,
) -> Result<(u32, u32), DiscoverError> {
    let nr_cpu_ids: u32 = read_symbol(mem, tr, "nr_cpu_ids", symbols.nr_cpu_ids)?;
    if !(1..=MAX_CPUS).contains(&nr_cpu_ids) {
        return Err(DiscoverError::Implausible {
            what: "nr_cpu_ids",
            value: u64::from(nr_cpu_ids),
            why: "not between 1 and NR_CPUS (8192)",
        });
    }
    let nr_node_ids: u32 = match symbols.nr_node_ids {
        Some(_) => read_symbol(mem, tr, "nr_node_ids", symbols.nr_node_ids)?,
        None => 1,
    };
    if !(1..=MAX_NODES).contains(&nr_node_ids) {
        return Err(DiscoverError::Implausible {
            what: "nr_node_ids",
            value: u64::from(nr_node_ids),
            why: "not between 1 and 1024",
        });
    }
    Ok((nr_cpu_ids, nr_node_ids))
}

/// Most physical load offsets tried by [`discover_from_symbols`]: 64 GiB
/// of guest memory in 2 MiB steps.
pub const PHYS_BASE_CANDIDATES: u64 = (64 << 30) / SLIDE_STEP;

/// The translation for a guest whose runtime symbols are known (a kallsyms
/// file of the same boot) but no vCPU register is: `phys_base` is the
/// offset at which the `phys_base` variable, read through the kernel-image
/// mapping, holds itself (tried at 0 first, then every 2 MiB step, at
/// most [`PHYS_BASE_CANDIDATES`]); `page_offset_base`, `nr_cpu_ids` and
/// `max_pfn` are then read through that mapping. Without a root, what is
/// neither in the image nor in the direct map (vmalloc'ed memory) cannot
/// be read, and faults say so.
pub fn discover_from_symbols<M: GuestMem + ?Sized>(
    mem: &M,
    symbols: &Symbols,
) -> Result<Discovered, DiscoverError> {
    let counted = Counted {
        mem,
        reads: core::cell::Cell::new(0),
    };
    let mem = &counted;
    let var = symbols
        .phys_base
        .ok_or(DiscoverError::MissingSymbol("phys_base"))?;
    // The variable's physical address moves with phys_base by the same
    // amount, so only the right candidate reads back as itself.
    let phys_base = (0..PHYS_BASE_CANDIDATES)
        .map(|k| k * SLIDE_STEP)
        .chain((1..PHYS_BASE_CANDIDATES).map(|k| (k * SLIDE_STEP).wrapping_neg()))
        .find(|p| image_translator(*p).read_virt_pod::<u64, _>(mem, var).ok() == Some(*p))
        .ok_or(DiscoverError::Implausible {
            what: "phys_base",
            value: 0,
            why: "no 2 MiB load offset reads the phys_base variable back as itself",
        })?;
    let mut tr = image_translator(phys_base);
    let page_offset_base = plausible_page_offset_base(read_symbol(
        mem,
        &mut tr,
        "page_offset_base",
        symbols.page_offset_base,
    )?)?;
    let (nr_cpu_ids, nr_node_ids) = cpu_and_node_ids(mem, &mut tr, symbols)?;
    let direct_map_size = match symbols.max_pfn {
        Some(_) => {
            read_symbol::<u64, _>(mem, &mut tr, "max_pfn", symbols.max_pfn)?.saturating_mul(4096)
        }
        // Without KASLR the direct map's nominal size holds nothing else.
        None => DIRECT_MAP_SIZE_L4,
    };
    Ok(Discovered {
        slide: 0,
        phys_base,
        page_offset_base,
        root: None,
        kernel_root: false,
        user_pti_root: false,
        symbols: *symbols,
        nr_cpu_ids,
        nr_node_ids,
        direct_map_size,
        reads: counted.reads.get(),
    })
}

/// Move link-time kernel-image addresses by `slide`; per-CPU offsets of
/// kernels before 6.15 (below `__START_KERNEL_map`) do not move.
pub fn slide_image_symbols(symbols: &mut Symbols, slide: u64) {
    for name in Symbols::NAMES {
        if let Some(a) = symbols.get(name)
            && a >= START_KERNEL_MAP
        {
            symbols.set(name, a.wrapping_add(slide));
        }
    }
}

#[cfg(test)]
mod tests;
