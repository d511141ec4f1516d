//! Kernel virtual -> guest physical translation for x86-64.
//!
//! Three mappings, tried in order: the kernel image
//! (`va - __START_KERNEL_map + phys_base`), the direct map
//! (`va - page_offset_base`), and for everything else (vmalloc, vmemmap,
//! modules, per-CPU chunks) a 4- or 5-level page-table walk from CR3.
//! Walk results are cached in a small fixed-size TLB.

use zerocopy::{FromBytes, IntoBytes};

use crate::mem::{GuestMem, MemError};

/// `__START_KERNEL_map`: the kernel image's virtual base.
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// `page_offset_base` without KASLR, 4-level paging.
pub const DEFAULT_PAGE_OFFSET_BASE: u64 = 0xffff_8880_0000_0000;
/// `page_offset_base` without KASLR, 5-level paging.
pub const DEFAULT_PAGE_OFFSET_BASE_L5: u64 = 0xff11_0000_0000_0000;
/// Direct-map size with 4-level paging (64 TiB).
pub const DIRECT_MAP_SIZE_L4: u64 = 64 << 40;
/// Direct-map size with 5-level paging (32 PiB).
pub const DIRECT_MAP_SIZE_L5: u64 = 32 << 50;
/// `KERNEL_IMAGE_SIZE` with KASLR (1 GiB); modules start right after.
pub const KERNEL_IMAGE_SIZE: u64 = 1 << 30;

/// Physical-address bits of a page-table entry (12..51).
const PHYS_MASK: u64 = 0x000f_ffff_ffff_f000;
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// CR3 bit that selects the user half of a PTI PGD pair.
const PTI_USER_PGD: u64 = 1 << 12;
const TLB_ENTRIES: usize = 16;

/// Paging depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Levels {
    /// 4-level paging (48-bit virtual addresses).
    Four,
    /// 5-level paging (57-bit virtual addresses, LA57).
    Five,
}

impl Levels {
    fn count(self) -> u8 {
        match self {
            Levels::Four => 4,
            Levels::Five => 5,
        }
    }
}

/// The root of a page-table walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTableRoot {
    /// CR3 as a vCPU holds it (PCID and flag bits are masked off).
    pub cr3: u64,
    /// Paging depth.
    pub levels: Levels,
    /// The kernel has page-table isolation: a CR3 taken in user mode points
    /// at the user PGD, the odd page of an 8 KiB pair; the walk uses the
    /// even (kernel) page.
    pub pti: bool,
}

/// What the translator needs to know about the guest kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranslatorConfig {
    /// `phys_base`: where the kernel image sits physically, minus its
    /// link-time address.
    pub phys_base: u64,
    /// `page_offset_base`: start of the direct map.
    pub page_offset_base: u64,
    /// Bytes of the direct map translated without a walk (0: every
    /// direct-map address is walked from `root`). Under KASLR, vmalloc and
    /// vmemmap follow the RAM's part of the direct map closely, so this
    /// must not exceed the RAM it maps (`max_pfn` pages; see
    /// [`crate::discover`]).
    pub direct_map_size: u64,
    /// Bytes of the kernel-image mapping from [`START_KERNEL_MAP`]
    /// translated without a walk (0: walked from `root`).
    pub kernel_image_size: u64,
    /// Root for page-table walks, when known.
    pub root: Option<PageTableRoot>,
}

impl Default for TranslatorConfig {
    /// No KASLR, 4-level paging, no page-table root.
    fn default() -> Self {
        Self {
            phys_base: 0,
            page_offset_base: DEFAULT_PAGE_OFFSET_BASE,
            direct_map_size: DIRECT_MAP_SIZE_L4,
            kernel_image_size: KERNEL_IMAGE_SIZE,
            root: None,
        }
    }
}

/// Why a kernel virtual address could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// Not a canonical address for the paging depth.
    #[error("{0:#x} is not a canonical address")]
    NotCanonical(u64),
    /// Needs a page-table walk but no root (CR3) is configured.
    #[error(
        "{0:#x} is outside the kernel image and direct map, and no page-table root (CR3) is known"
    )]
    NoRoot(u64),
    /// A page-table entry on the way is not present.
    #[error("{va:#x} is not mapped: entry not present at level {level}")]
    NotPresent {
        /// The address.
        va: u64,
        /// Paging level (5 = PML5 ... 1 = PTE).
        level: u8,
    },
    /// A page-table entry is malformed.
    #[error("{va:#x}: malformed page-table entry {entry:#x} at level {level}")]
    BadEntry {
        /// The address.
        va: u64,
        /// Paging level.
        level: u8,
        /// The entry.
        entry: u64,
    },
    /// Guest memory could not be read.
    #[error(transparent)]
    Mem(#[from] MemError),
}

/// Counters of the translator's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TranslateStats {
    /// Page-table walks done.
    pub walks: u64,
    /// Translations answered by the TLB.
    pub tlb_hits: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct TlbEntry {
    /// `va` of the page start; valid when `shift != 0`.
    va: u64,
    pa: u64,
    shift: u8,
}

/// Translates x86-64 kernel virtual addresses to guest-physical ones.
#[derive(Debug, Clone)]
pub struct Translator {
    config: TranslatorConfig,
    tlb: [TlbEntry; TLB_ENTRIES],
    tlb_next: usize,
    stats: TranslateStats,
}

impl Default for Translator {
    fn default() -> Self {
        Self::new(TranslatorConfig::default())
    }
}

impl Translator {
    /// A translator for a kernel described by `config`.
    pub fn new(config: TranslatorConfig) -> Self {
        Self {
            config,
            tlb: [TlbEntry::default(); TLB_ENTRIES],
            tlb_next: 0,
            stats: TranslateStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TranslatorConfig {
        &self.config
    }

    /// Work counters so far.
    pub fn stats(&self) -> TranslateStats {
        self.stats
    }

    /// Forget cached walks (the guest ran and may have changed its tables).
    pub fn flush(&mut self) {
        self.tlb = [TlbEntry::default(); TLB_ENTRIES];
    }

    /// Guest-physical address of kernel virtual `va`.
    pub fn translate<M: GuestMem + ?Sized>(
        &mut self,
        mem: &M,
        va: u64,
    ) -> Result<u64, TranslateError> {
        self.translate_span(mem, va).map(|(pa, _)| pa)
    }

    /// Guest-physical address of `va`, and how many bytes from `va` on are
    /// physically contiguous with it (to the end of the page or mapping).
    fn translate_span<M: GuestMem + ?Sized>(
        &mut self,
        mem: &M,
        va: u64,
    ) -> Result<(u64, u64), TranslateError> {
        if let Some(span) = self.linear_span(va) {
            return Ok(span);
        }
        let root = self.config.root.ok_or(TranslateError::NoRoot(va))?;
        if let Some(e) = self
            .tlb
            .iter()
            .find(|e| e.shift != 0 && va >> e.shift == e.va >> e.shift)
        {
            self.stats.tlb_hits += 1;
            let off = va & ((1u64 << e.shift) - 1);
            return Ok((e.pa | off, (1u64 << e.shift) - off));
        }
        self.stats.walks += 1;
        let (pa_base, shift) = walk(mem, root, va)?;
        let size = 1u64 << shift;
        let slot = self.tlb_next % TLB_ENTRIES;
        self.tlb_next = self.tlb_next.wrapping_add(1);
        if let Some(e) = self.tlb.get_mut(slot) {
            *e = TlbEntry {
                va: va & !(size - 1),
                pa: pa_base,
                shift,
            };
        }
        let off = va & (size - 1);
        Ok((pa_base | off, size - off))
    }

    /// Fill `buf` from kernel virtual `va`, crossing pages as needed.
    #[inline]
    pub fn read_virt<M: GuestMem + ?Sized>(
        &mut self,
        mem: &M,
        va: u64,
        buf: &mut [u8],
    ) -> Result<(), TranslateError> {
        // Fast path, inlined into every reader: the whole buffer lies in
        // the kernel image or the direct map, one guest read, no loop.
        if buf.is_empty() {
            return Ok(());
        }
        if let Some((pa, left)) = self.linear_span(va)
            && left >= buf.len() as u64
        {
            return Ok(mem.read(pa, buf)?);
        }
        self.read_virt_paged(mem, va, buf)
    }

    /// `(guest-physical address, bytes left in the mapping)` of `va` when it
    /// lies in the kernel image or the direct map; no page-table walk.
    #[inline]
    fn linear_span(&self, va: u64) -> Option<(u64, u64)> {
        let c = &self.config;
        if let Some(off) = va
            .checked_sub(START_KERNEL_MAP)
            .filter(|o| *o < c.kernel_image_size)
        {
            return Some((off.wrapping_add(c.phys_base), c.kernel_image_size - off));
        }
        va.checked_sub(c.page_offset_base)
            .filter(|o| *o < c.direct_map_size)
            .map(|off| (off, c.direct_map_size - off))
    }

    /// [`Translator::read_virt`] one physically contiguous piece at a time.
    fn read_virt_paged<M: GuestMem + ?Sized>(
        &mut self,
        mem: &M,
        va: u64,
        buf: &mut [u8],
    ) -> Result<(), TranslateError> {
        let mut done = 0usize;
        // Each round reads at least one byte, so this ends after at most
        // buf.len() rounds (in practice one per page).
        while done < buf.len() {
            let at = va
                .checked_add(done as u64)
                .ok_or(TranslateError::NotCanonical(va))?;
            let (pa, span) = self.translate_span(mem, at)?;
            let n = usize::try_from(span)
                .unwrap_or(usize::MAX)
                .min(buf.len() - done);
            let chunk = buf
                .get_mut(done..done + n)
                .ok_or(TranslateError::NotCanonical(at))?;
            mem.read(pa, chunk)?;
            done += n;
        }
        Ok(())
    }

    /// Read a plain-old-data value at kernel virtual `va`.
    #[inline]
    pub fn read_virt_pod<T: FromBytes + IntoBytes, M: GuestMem + ?Sized>(
        &mut self,
        mem: &M,
        va: u64,
    ) -> Result<T, TranslateError> {
        let mut v = T::new_zeroed();
        self.read_virt(mem, va, v.as_mut_bytes())?;
        Ok(v)
    }

    /// `__per_cpu_offset[cpu]`, read from the array at `per_cpu_offset`.
    pub fn read_per_cpu_offset<M: GuestMem + ?Sized>(
        &mut self,
        mem: &M,
        per_cpu_offset: u64,
        cpu: u32,
    ) -> Result<u64, TranslateError> {
        let va = per_cpu_offset.wrapping_add(u64::from(cpu) * 8);
        self.read_virt_pod::<u64, M>(mem, va)
    }
}

/// Address of a per-CPU variable on one CPU: `sym + __per_cpu_offset[cpu]`,
/// wrapping. Works for both conventions: on <= 6.14 kernels `sym` is an
/// offset from `__per_cpu_start` (= 0) and the offset is the CPU's area
/// address; on >= 6.15 `sym` is an absolute kernel-image address and the
/// offset is the (negative, wrapped) distance from it to the CPU's area.
pub const fn per_cpu_addr(sym: u64, per_cpu_offset: u64) -> u64 {
    sym.wrapping_add(per_cpu_offset)
}

/// Whether `va` is canonical for the paging depth.
fn canonical(va: u64, levels: Levels) -> bool {
    let bits = match levels {
        Levels::Four => 48,
        Levels::Five => 57,
    };
    let top = (va as i64) >> (bits - 1);
    top == 0 || top == -1
}

/// Walk the tables from `root`: the leaf's physical base and size shift.
fn walk<M: GuestMem + ?Sized>(
    mem: &M,
    root: PageTableRoot,
    va: u64,
) -> Result<(u64, u8), TranslateError> {
    if !canonical(va, root.levels) {
        return Err(TranslateError::NotCanonical(va));
    }
    let mut table = root.cr3 & PHYS_MASK;
    if root.pti {
        table &= !PTI_USER_PGD;
    }
    // One iteration per level: at most five reads.
    for level in (1..=root.levels.count()).rev() {
        let shift = 12 + 9 * (level - 1);
        let index = (va >> shift) & 0x1ff;
        let mut raw = [0u8; 8];
        mem.read(table + index * 8, &mut raw)?;
        let entry = u64::from_le_bytes(raw);
        if entry & PRESENT == 0 {
            return Err(TranslateError::NotPresent { va, level });
        }
        let large = entry & PAGE_SIZE_BIT != 0;
        match (level, large) {
            (1, _) => return Ok((entry & PHYS_MASK, 12)),
            (2 | 3, true) => {
                let size_mask = (1u64 << shift) - 1;
                // Bits 13..shift-1 are reserved in a large leaf (bit 12 is PAT).
                if entry & PHYS_MASK & size_mask & !(1 << 12) != 0 {
                    return Err(TranslateError::BadEntry { va, level, entry });
                }
                return Ok((entry & PHYS_MASK & !size_mask, shift));
            }
            (4 | 5, true) => return Err(TranslateError::BadEntry { va, level, entry }),
            _ => table = entry & PHYS_MASK,
        }
    }
    Err(TranslateError::NotPresent { va, level: 0 })
}

#[cfg(test)]
mod tests;
