//! `ktstr dump`: the sched_ext state of a kernel from an ELF core file
//! (QEMU's `dump-guest-memory`, or a kdump vmcore), after the fact. The
//! core and the vmlinux are enough: the walker finds the KASLR slide,
//! page tables and symbols in the core's memory ([`ktstr_walker::discover`]);
//! a kallsyms file or System.map, when given, replaces the vmlinux's
//! symbols (and is checked the same way).

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use ktstr_walker::discover::{KernelImage, VcpuRegs, discover};
use ktstr_walker::embed::Dumper;
use ktstr_walker::kernel::elfcore::ElfCore;
use ktstr_walker::kernel::ksyms::SymbolTable;
use ktstr_walker::render::Report;

use crate::guest::GuestKernel;
use crate::kernel::Kernel;

/// Where a dump's inputs come from.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// The ELF core file.
    pub core: PathBuf,
    /// The kernel (vmlinux, bzImage, build or cache directory, release).
    pub vmlinux: String,
    /// `/proc/kallsyms` text of the same boot (optional: the vmlinux's own
    /// kallsyms tables are used otherwise).
    pub kallsyms: Option<PathBuf>,
    /// System.map of the same build (optional, as `kallsyms`).
    pub system_map: Option<PathBuf>,
    /// Page-table root, when the core's notes lack it.
    pub cr3: Option<u64>,
}

/// Read the core and render its sched_ext state.
pub fn dump(opts: &DumpOptions) -> Result<Report> {
    let kernel = Kernel::resolve(&opts.vmlinux)?;
    let guest = GuestKernel::load(&kernel)?;
    let core = ElfCore::open(&opts.core)
        .with_context(|| format!("reading core file {}", opts.core.display()))?;
    // --cr3, else the first vCPU's CR3 in the core's notes.
    let cpu = core.cpus().iter().find(|c| c.cr3.is_some());
    let regs = VcpuRegs {
        cr3: opts.cr3.or(cpu.and_then(|c| c.cr3)).ok_or_else(|| {
            anyhow!("the core's notes hold no CR3 (not a QEMU dump-guest-memory core?): pass --cr3")
        })?,
        cr4: cpu.and_then(|c| c.cr4).unwrap_or(0),
    };
    let mut found = guest
        .kernel()
        .discover(&core, regs)
        .context("finding the kernel in the core")?;
    // Runtime symbols from a kallsyms file replace the discovered ones;
    // link-time ones (System.map) are rediscovered with them.
    if let Some(p) = &opts.kallsyms {
        found.symbols = SymbolTable::open_kallsyms(p)?.symbols();
    } else if let Some(p) = &opts.system_map {
        let link = SymbolTable::open_system_map(p)?.symbols();
        let banner = guest_banner(&kernel)?;
        let image = KernelImage {
            symbols: &link,
            banner: &banner,
        };
        found = discover(&core, regs, &image).context("finding the kernel with the System.map")?;
    }
    let mut dumper = Dumper::new(guest.kernel().clone(), found);
    dumper
        .check(&core)
        .context("the translation does not read the kernel's banner")?;
    let captured = dumper.capture(&core);
    Ok(captured.report(None))
}

/// The vmlinux's `linux_banner` bytes.
fn guest_banner(kernel: &Kernel) -> Result<Vec<u8>> {
    let source = kernel.image.source().display().to_string();
    let v = ktstr_walker::kernel::vmlinux::Vmlinux::from_bytes(kernel.image.elf_bytes(), &source)?;
    Ok(v.banner().to_vec())
}
