//! ktstr-vmm: a small KVM VMM built from rust-vmm parts.
//!
//! Topology as code ([`Topology`], `1n2l4c2t`) becomes APIC IDs, CPUID
//! leaves and ACPI tables; a vmlinux (or a bzImage, extracted first) boots
//! through its PVH entry; one thread runs each vCPU; the VM can be frozen,
//! its memory read through [`walker::GuestMem`], and thawed.
//!
//! ```no_run
//! use std::time::Duration;
//! use ktstr_vmm::walker::GuestMem;
//! use ktstr_vmm::{Vm, VmConfig};
//!
//! let topo = "1n2l4c2t".parse().unwrap();
//! let vm = Vm::boot(VmConfig::kernel(topo, "vmlinux", "console=ttyS0")).unwrap();
//! vm.console().wait_until(Duration::from_secs(60), |t| t.contains("Linux version"));
//! let (report, first_page) = vm
//!     .freeze(|frozen| {
//!         let mut page = [0u8; 4096];
//!         frozen.mem.read(0, &mut page).map(|()| page)
//!     })
//!     .unwrap();
//! println!("paused {:?}, vCPU 0 at {:#x}", report.pause, report.vcpus[0].rip);
//! vm.stop();
//! ```
//!
//! Module map: [`topology`] (the model and APIC IDs), [`cpuid`] and
//! [`acpi`] (what the guest is told), [`layout`] (memory map, e820),
//! [`serial`] (UARTs), [`vm`] (lifecycle, vCPU threads, freeze/thaw).
#![warn(missing_docs)]

pub use ktstr_walker as walker;

pub mod acpi;
pub mod cpuid;
pub mod layout;
pub mod serial;
pub mod topology;
pub mod vm;

pub use topology::{Topology, TopologyError};

/// Whether this host has hardware virtualization (VT-x/AMD-V flags and
/// /dev/kvm). Without it, /dev/kvm may still exist (e.g. PVM), but a stock
/// kernel only gets through early boot.
pub fn hardware_virt() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    has && std::path::Path::new("/dev/kvm").exists()
}
pub use vm::{Boot, ExitReason, FreezeReport, Frozen, VcpuState, Vm, VmConfig, VmError, VmMemory};
