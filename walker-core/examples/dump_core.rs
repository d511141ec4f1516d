//! Dump the sched_ext state of an ELF core (QEMU's `dump-guest-memory`
//! with `paging=false`, or a kdump vmcore with QEMU's register notes)
//! given only the vmlinux that ran: no kallsyms, no System.map.
//!
//! `cargo run -p ktstr-walker --features embed --example dump_core -- CORE VMLINUX`

use ktstr_walker::discover::VcpuRegs;
use ktstr_walker::embed::{Dumper, Kernel};
use ktstr_walker::kernel::elfcore::ElfCore;
use ktstr_walker::kernel::vmlinux::Vmlinux;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: dump_core CORE VMLINUX";
    let (core, vmlinux) = (args.next().ok_or(usage)?, args.next().ok_or(usage)?);
    // Once per kernel: its BTF layout and link-time symbols (mapped file).
    let kernel = Kernel::from_vmlinux(&Vmlinux::open(vmlinux)?)?;
    let core = ElfCore::open(core)?;
    // One vCPU's CR3 and CR4, from the core's QEMU register notes.
    let cpu = core.cpus().iter().find(|c| c.cr3.is_some());
    let cpu = cpu.ok_or("the core has no vCPU registers (CR3)")?;
    let regs = VcpuRegs {
        cr3: cpu.cr3.unwrap_or_default(),
        cr4: cpu.cr4.unwrap_or_default(),
    };
    // KASLR slide, page tables, symbols, nr_cpu_ids: from the memory itself.
    let mut dumper = Dumper::discover(kernel, &core, regs)?;
    // With every vCPU's registers: what each was executing, named.
    let report = dumper.capture_with(&core, &core.vcpus()).report(None);
    print!("{}", report.to_text());
    Ok(())
}
