//! What the host knows about a guest kernel, and the capture itself:
//! shared by `ktstr dump` (an ELF core) and the live VM backends.
//!
//! [`GuestKernel`] is loaded once per kernel (BTF layout, enum names, HZ);
//! [`GuestKernel::capture_into`] reads the few counts a capture needs
//! (`nr_cpu_ids`, `nr_node_ids`) from memory and copies what the capture
//! reads (while the guest is paused); [`GuestKernel::render`] decodes and
//! formats, once it runs again.

use anyhow::{Result, bail};
use ktstr_walker::capture::storage::{Capacity, CaptureStorage};
use ktstr_walker::capture::{CaptureBuf, Capturer, Consts, Limits, Target};
use ktstr_walker::kernel::btf::KernelBtf;
use ktstr_walker::layout::Layout;
use ktstr_walker::render::{Names, RenderContext, Report};
use ktstr_walker::translate::{Levels, PageTableRoot, Translator, TranslatorConfig};
use ktstr_walker::{GuestMem, Symbols};

use crate::kernel::Kernel;

/// Most CPUs a capture reads (`nr_cpu_ids` from guest memory is bounded by it).
pub const MAX_CPUS: u32 = 8192;
/// Task capacity of a capture.
pub const MAX_TASKS: usize = 1 << 16;
/// CR4.LA57: 5-level paging.
const CR4_LA57: u64 = 1 << 12;

/// A kernel's layout and names, from its BTF and config.
pub struct GuestKernel {
    layout: Layout,
    /// The capture's reads, planned once for the monitor's many samples
    /// and the frozen capture.
    capturer: Capturer,
    consts: Consts,
    names: Names,
}

impl GuestKernel {
    /// Read `kernel`'s BTF.
    pub fn load(kernel: &Kernel) -> Result<GuestKernel> {
        let source = kernel.image.source().display().to_string();
        let btf = KernelBtf::from_elf(kernel.image.elf_bytes(), &source)?;
        let hz = kernel
            .config
            .as_ref()
            .and_then(|c| c.get("CONFIG_HZ"))
            .and_then(|v| v.parse().ok());
        let layout = btf.layout();
        Ok(GuestKernel {
            capturer: Capturer::new(&layout),
            layout,
            consts: btf.consts(),
            names: Names::from_btf(&btf, hz),
        })
    }

    /// The layout the walker uses.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Capture the sched_ext state of the (paused) guest into `storage`
    /// (made or remade to fit the guest; a monitor samples ten times a
    /// second, so buffers are reused). `symbols` are runtime addresses of
    /// this boot. Nothing is decoded or formatted: see [`GuestKernel::render`].
    pub fn capture_into<'s>(
        &self,
        storage: &'s mut Option<CaptureStorage>,
        mem: &impl GuestMem,
        tr: &mut Translator,
        symbols: &Symbols,
    ) -> Result<CaptureBuf<'s>> {
        let read_u32 = |tr: &mut Translator, sym: Option<u64>| {
            sym.and_then(|a| tr.read_virt_pod::<u32, _>(mem, a).ok())
        };
        let nr_cpus = match read_u32(tr, symbols.nr_cpu_ids) {
            Some(n) if (1..=MAX_CPUS).contains(&n) => n,
            Some(n) => {
                bail!("nr_cpu_ids reads {n}: the memory, symbols and kernel do not belong together")
            }
            None => bail!("cannot read nr_cpu_ids: symbols from another boot or kernel?"),
        };
        let nr_nodes = read_u32(tr, symbols.nr_node_ids)
            .filter(|n| (1..=1024).contains(n))
            .unwrap_or(1);
        let target = Target {
            layout: &self.layout,
            symbols,
            nr_cpus,
            nr_nodes,
            consts: self.consts,
        };
        let capacity = Capacity::for_guest(nr_cpus as usize, MAX_TASKS);
        let storage = match storage.take() {
            Some(s) if s.capacity() == capacity => storage.insert(s),
            _ => storage.insert(CaptureStorage::new(capacity)),
        };
        let mut buf = storage.buf();
        self.capturer
            .capture_raw(mem, tr, &target, &Limits::default(), &mut buf);
        Ok(buf)
    }

    /// The report of a capture, decoded first; `pause_ns` is how long the
    /// guest was paused for it, when known.
    pub fn render(
        &self,
        buf: &mut CaptureBuf<'_>,
        symbols: &Symbols,
        pause_ns: Option<u64>,
    ) -> Report {
        self.capturer.decode(buf);
        let ctx = RenderContext {
            layout: &self.layout,
            symbols,
            names: &self.names,
            pause_ns,
        };
        Report::from_capture(buf, &ctx)
    }
}

/// The page-table root of a vCPU from its CR3 and CR4, before PTI is
/// known (see [`translator`]).
pub fn root(cr3: u64, cr4: Option<u64>) -> PageTableRoot {
    PageTableRoot {
        cr3,
        levels: if cr4.is_some_and(|c| c & CR4_LA57 != 0) {
            Levels::Five
        } else {
            Levels::Four
        },
        pti: false,
    }
}

/// A translator that only walks page tables from `root`.
fn walk_only(root: PageTableRoot) -> Translator {
    Translator::new(TranslatorConfig {
        kernel_image_size: 0,
        direct_map_size: 0,
        root: Some(root),
        ..TranslatorConfig::default()
    })
}

/// The translator for this guest: with a page-table root, `phys_base` and
/// `page_offset_base` are read through the page tables (KASLR-proof);
/// without one, the no-KASLR values are assumed.
pub fn translator(
    mem: &impl GuestMem,
    symbols: &Symbols,
    root: Option<PageTableRoot>,
) -> Translator {
    let Some(root) = root else {
        tracing::warn!("no page-table root: assuming a kernel booted with nokaslr");
        return Translator::default();
    };
    // A vCPU frozen in user mode under PTI holds the user root (the kernel
    // root with bit 12 set), which does not map kernel data; without PTI,
    // bit 12 is just part of the root's address. The root that maps
    // `phys_base` is the kernel's.
    let pti = PageTableRoot { pti: true, ..root };
    let maps_kernel = |r: PageTableRoot| {
        symbols
            .phys_base
            .is_some_and(|a| walk_only(r).read_virt_pod::<u64, _>(mem, a).is_ok())
    };
    let root = if maps_kernel(root) || !maps_kernel(pti) {
        root
    } else {
        pti
    };
    let mut walk = walk_only(root);
    let mut read = |sym: Option<u64>| sym.and_then(|a| walk.read_virt_pod::<u64, _>(mem, a).ok());
    let defaults = TranslatorConfig::default();
    let config = TranslatorConfig {
        phys_base: read(symbols.phys_base).unwrap_or(defaults.phys_base),
        page_offset_base: read(symbols.page_offset_base).unwrap_or(defaults.page_offset_base),
        root: Some(root),
        ..defaults
    };
    // The kernel's own top-level table (init_top_pgt) outlives any task:
    // a vCPU's CR3 may belong to a process that exits and whose tables get
    // reused while a monitor keeps reading. Walk from it when it works.
    let kernel_root = symbols.init_top_pgt.and_then(|va| {
        let pa = Translator::new(config).translate(mem, va).ok()?;
        let r = PageTableRoot {
            cr3: pa,
            pti: false,
            ..root
        };
        maps_kernel(r).then_some(r)
    });
    Translator::new(TranslatorConfig {
        root: Some(kernel_root.unwrap_or(root)),
        ..config
    })
}
