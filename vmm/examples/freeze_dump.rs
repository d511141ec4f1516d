//! Boot a sched_ext kernel on ktstr-vmm and dump its scheduler state from
//! the freeze hook, through public API only: the first freeze finds the
//! kernel from vCPU 0's registers, the second captures; everything after
//! the capture runs with the guest going again. Needs VT-x/AMD-V.
//!
//! `cargo run -p ktstr-vmm --example freeze_dump -- VMLINUX [INITRAMFS] [SECONDS]`

use std::path::PathBuf;
use std::time::Duration;

use ktstr_vmm::walker::discover::VcpuRegs;
use ktstr_vmm::walker::embed::{Dumper, Kernel, Pause};
use ktstr_vmm::walker::kernel::vmlinux::Vmlinux;
use ktstr_vmm::{Boot, Vm, VmConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let vmlinux = args
        .first()
        .ok_or("usage: freeze_dump VMLINUX [INITRAMFS] [SECONDS]")?;
    let kernel = Kernel::from_vmlinux(&Vmlinux::open(vmlinux)?)?;
    let mut cfg = VmConfig::kernel("1n1l2c1t".parse()?, vmlinux, "console=ttyS0 rdinit=/init");
    if let Boot::Kernel { initramfs, .. } = &mut cfg.boot {
        *initramfs = args.get(1).map(PathBuf::from);
    }
    let vm = Vm::boot(cfg)?;
    std::thread::sleep(Duration::from_secs(
        args.get(2).map_or(Ok(20), |s| s.parse())?,
    ));
    // Find the kernel (KASLR, page tables, symbols) while frozen, once per boot.
    let (_, found) = vm.freeze(|f| {
        let v = f.vcpus.first().ok_or("no vCPU parked")?;
        Ok::<_, Box<dyn std::error::Error>>(kernel.discover(
            f.mem,
            VcpuRegs {
                cr3: v.cr3,
                cr4: v.cr4,
            },
        )?)
    })?;
    let mut dumper = Dumper::new(kernel, found?);
    let d = &mut dumper;
    // The capture: reads only, no allocation, bounded.
    let (freeze, captured) = vm.freeze(move |f| Dumper::capture(d, f.mem))?;
    let pause = Pause {
        total_ns: Some(freeze.pause.as_nanos() as u64),
        stop_ns: Some(freeze.park.as_nanos() as u64),
        resume_ns: None, // FreezeReport does not time the release.
    };
    print!("{}", captured.report(Some(pause)).to_text());
    vm.stop();
    Ok(())
}
