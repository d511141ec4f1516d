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
pub use vm::{Boot, ExitReason, FreezeReport, Frozen, VcpuState, Vm, VmConfig, VmError, VmMemory};
