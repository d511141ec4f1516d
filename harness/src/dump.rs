//! `ktstr dump`: the sched_ext state of a kernel from an ELF core file
//! (QEMU's `dump-guest-memory`, or a kdump vmcore), after the fact.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ktstr_walker::Symbols;
use ktstr_walker::kernel::elfcore::ElfCore;
use ktstr_walker::kernel::ksyms::{SymbolTable, require};
use ktstr_walker::render::Report;

use crate::guest::{GuestKernel, root, translator};
use crate::kernel::Kernel;

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

/// Read the core and render its sched_ext state.
pub fn dump(opts: &DumpOptions) -> Result<Report> {
    let kernel = Kernel::resolve(&opts.vmlinux)?;
    let guest = GuestKernel::load(&kernel)?;
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
    // --cr3, else the first vCPU's CR3 in the core's notes.
    let cpu = core.cpus().iter().find(|c| c.cr3.is_some());
    let root = opts
        .cr3
        .or(cpu.and_then(|c| c.cr3))
        .map(|cr3| root(cr3, cpu.and_then(|c| c.cr4)));
    let mut tr = translator(&core, &symbols, root);
    let mut storage = None;
    let mut buf = guest
        .capture_into(&mut storage, &core, &mut tr, &symbols)
        .context("pass --kallsyms from the same boot as the core")?;
    Ok(guest.render(&mut buf, &symbols, None))
}
