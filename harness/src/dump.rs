//! `ktstr dump`: the sched_ext state of a kernel from an ELF core file
//! (QEMU's `dump-guest-memory`, or a kdump vmcore), after the fact.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ktstr_walker::capture::storage::{Capacity, CaptureStorage};
use ktstr_walker::capture::{Limits, Target, capture};
use ktstr_walker::kernel::btf::KernelBtf;
use ktstr_walker::kernel::elfcore::ElfCore;
use ktstr_walker::kernel::ksyms::{SymbolTable, require};
use ktstr_walker::render::{Names, RenderContext, Report};
use ktstr_walker::translate::{Levels, PageTableRoot, Translator, TranslatorConfig};
use ktstr_walker::{GuestMem, Symbols};

use crate::kernel::Kernel;

/// Most CPUs a dump reads (`nr_cpu_ids` from guest memory is bounded by it).
const MAX_CPUS: u32 = 8192;
/// Task capacity of a dump.
const MAX_TASKS: usize = 1 << 16;
/// CR4.LA57: 5-level paging.
const CR4_LA57: u64 = 1 << 12;

/// Where a dump's inputs come from.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// The ELF core file.
    pub core: PathBuf,
    /// The kernel (vmlinux, bzImage, build or cache directory, release).
    pub vmlinux: String,
    /// `/proc/kallsyms` text of the same boot.
    pub kallsyms: Option<PathBuf>,
    /// System.map of the same build.
    pub system_map: Option<PathBuf>,
    /// Page-table root, when the core's notes lack it.
    pub cr3: Option<u64>,
}

/// Symbols from the first source given: kallsyms, System.map, the core's
/// VMCOREINFO, the vmlinux's own `.symtab`.
fn symbols(opts: &DumpOptions, kernel: &Kernel, core: &ElfCore) -> Result<Symbols> {
    if let Some(p) = &opts.kallsyms {
        return Ok(SymbolTable::open_kallsyms(p)?.symbols());
    }
    if let Some(p) = &opts.system_map {
        return Ok(SymbolTable::open_system_map(p)?.symbols());
    }
    if let Some(info) = core.vmcoreinfo() {
        let s = info.symbols();
        if s.scx_tasks.is_some() {
            return Ok(s);
        }
    }
    let source = kernel.image.source().display().to_string();
    SymbolTable::from_elf(kernel.image.elf_bytes(), &source)
        .map(|t| t.symbols())
        .context("no symbols for the walker")
}

/// Page-table root and depth: `--cr3`, else the first vCPU's CR3 in the
/// core's notes.
fn root(opts: &DumpOptions, core: &ElfCore) -> Option<PageTableRoot> {
    let cpu = core.cpus().iter().find(|c| c.cr3.is_some());
    let cr3 = opts.cr3.or(cpu.and_then(|c| c.cr3))?;
    let la57 = cpu
        .and_then(|c| c.cr4)
        .is_some_and(|cr4| cr4 & CR4_LA57 != 0);
    Some(PageTableRoot {
        cr3,
        levels: if la57 { Levels::Five } else { Levels::Four },
        pti: true,
    })
}

/// The translator for this guest: with a page-table root, `phys_base` and
/// `page_offset_base` are read through the page tables (KASLR-proof);
/// without one, the no-KASLR values are assumed.
fn translator(mem: &impl GuestMem, symbols: &Symbols, root: Option<PageTableRoot>) -> Translator {
    let Some(root) = root else {
        tracing::warn!("no CR3 in the core and no --cr3: assuming a kernel booted with nokaslr");
        return Translator::default();
    };
    let mut walk_only = Translator::new(TranslatorConfig {
        kernel_image_size: 0,
        direct_map_size: 0,
        root: Some(root),
        ..TranslatorConfig::default()
    });
    let mut read =
        |sym: Option<u64>| sym.and_then(|a| walk_only.read_virt_pod::<u64, _>(mem, a).ok());
    let defaults = TranslatorConfig::default();
    Translator::new(TranslatorConfig {
        phys_base: read(symbols.phys_base).unwrap_or(defaults.phys_base),
        page_offset_base: read(symbols.page_offset_base).unwrap_or(defaults.page_offset_base),
        root: Some(root),
        ..defaults
    })
}

/// Read the core and render its sched_ext state.
pub fn dump(opts: &DumpOptions) -> Result<Report> {
    let kernel = Kernel::resolve(&opts.vmlinux)?;
    let source = kernel.image.source().display().to_string();
    let btf = KernelBtf::from_elf(kernel.image.elf_bytes(), &source)?;
    let layout = btf.layout();
    let core = ElfCore::open(&opts.core)
        .with_context(|| format!("reading core file {}", opts.core.display()))?;
    let symbols = symbols(opts, &kernel, &core)?;
    for needed in ["runqueues", "__per_cpu_offset", "scx_tasks"] {
        let from = if opts.kallsyms.is_some() {
            "the kallsyms file"
        } else {
            "the given symbol sources"
        };
        require(&symbols, needed, from)?;
    }
    let mut tr = translator(&core, &symbols, root(opts, &core));
    let read_u32 = |tr: &mut Translator, sym: Option<u64>| {
        sym.and_then(|a| tr.read_virt_pod::<u32, _>(&core, a).ok())
    };
    let nr_cpus = match read_u32(&mut tr, symbols.nr_cpu_ids) {
        Some(n) if (1..=MAX_CPUS).contains(&n) => n,
        Some(n) => {
            bail!("nr_cpu_ids reads {n}: the core, symbols and kernel do not belong together")
        }
        None => bail!("cannot read nr_cpu_ids: pass --kallsyms from the same boot as the core"),
    };
    let nr_nodes = read_u32(&mut tr, symbols.nr_node_ids)
        .filter(|n| (1..=1024).contains(n))
        .unwrap_or(1);
    let target = Target {
        layout: &layout,
        symbols: &symbols,
        nr_cpus,
        nr_nodes,
        consts: btf.consts(),
    };
    let mut storage = CaptureStorage::new(Capacity::for_guest(nr_cpus as usize, MAX_TASKS));
    let mut buf = storage.buf();
    capture(&core, &mut tr, &target, &Limits::default(), &mut buf);
    let hz = kernel
        .config
        .as_ref()
        .and_then(|c| c.get("CONFIG_HZ"))
        .and_then(|v| v.parse().ok());
    let names = Names::from_btf(&btf, hz);
    let ctx = RenderContext {
        layout: &layout,
        symbols: &symbols,
        names: &names,
        pause_ns: None,
    };
    Ok(Report::from_capture(&buf, &ctx))
}
