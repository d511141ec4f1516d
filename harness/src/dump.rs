//! `ktstr dump`: the sched_ext state of a kernel from an ELF core file
//! (QEMU's `dump-guest-memory`, or a kdump vmcore), after the fact. The
//! core and the vmlinux are enough: the walker finds the KASLR slide,
//! page tables and symbols in the core's memory ([`ktstr_walker::discover`]);
//! a kallsyms file or System.map, when given, replaces the vmlinux's
//! symbols (and is checked the same way).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ktstr_walker::discover::{KernelImage, VcpuRegs, discover, discover_from_symbols};
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
    let core = ElfCore::open(&opts.core)?;
    // --cr3, else the first vCPU's CR3 in the core's notes.
    let cpu = core.cpus().iter().find(|c| c.cr3.is_some());
    let cr3 = opts.cr3.or(cpu.and_then(|c| c.cr3));
    let runtime = match &opts.kallsyms {
        Some(p) => Some(SymbolTable::open_kallsyms(p)?.symbols()),
        None => None,
    };
    let found = match (cr3, &runtime) {
        (Some(cr3), _) => {
            let regs = VcpuRegs {
                cr3,
                cr4: cpu.and_then(|c| c.cr4).unwrap_or(0),
            };
            let mut found = match &opts.system_map {
                // Link-time symbols from the System.map instead of the vmlinux's.
                Some(p) => {
                    let link = SymbolTable::open_system_map(p)?.symbols();
                    let banner = guest_banner(&kernel)?;
                    let image = KernelImage {
                        symbols: &link,
                        banner: &banner,
                    };
                    discover(&core, regs, &image)
                }
                None => guest.kernel().discover(&core, regs),
            }
            .context("finding the kernel in the core")?;
            // A kallsyms file of the same boot has the last word on symbols.
            if let Some(r) = runtime {
                found.symbols = r;
            }
            found
        }
        (None, Some(runtime)) => {
            tracing::warn!(
                "no CR3 in the core or on the command line: reading the kernel image and direct map only"
            );
            discover_from_symbols(&core, runtime)
                .context("finding the kernel in the core with the kallsyms file")?
        }
        (None, None) => bail!(
            "the core's notes hold no CR3 (not a QEMU dump-guest-memory core?): pass --cr3, or --kallsyms with the guest's /proc/kallsyms"
        ),
    };
    // A core's VMCOREINFO (kdump, or QEMU with -device vmcoreinfo) is the
    // kernel's own word: what discovery found must agree with it.
    if let Some(info) = core.vmcoreinfo() {
        if let Some(offset) = info.kernel_offset().filter(|_| found.root.is_some())
            && offset != found.slide
        {
            bail!(
                "VMCOREINFO says KERNELOFFSET={offset:#x}, discovery found a slide of {:#x}",
                found.slide
            );
        }
        let theirs = info.symbols();
        for name in ktstr_walker::Symbols::NAMES {
            if let (Some(a), Some(b)) = (theirs.get(name), found.symbols.get(name))
                && a != b
            {
                bail!("VMCOREINFO says {name} is at {a:#x}, discovery found {b:#x}");
            }
        }
    }
    let mut dumper = Dumper::new(guest.kernel().clone(), found);
    if found.symbols.linux_banner.is_some() {
        dumper
            .check(&core)
            .context("the translation does not read the kernel's banner")?;
    }
    let captured = dumper.capture(&core);
    Ok(captured.report(None))
}

/// The vmlinux's `linux_banner` bytes.
fn guest_banner(kernel: &Kernel) -> Result<Vec<u8>> {
    let source = kernel.image.source().display().to_string();
    let v = ktstr_walker::kernel::vmlinux::Vmlinux::from_bytes(kernel.image.elf_bytes(), &source)?;
    Ok(v.banner().to_vec())
}
