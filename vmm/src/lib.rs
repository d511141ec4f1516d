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
//! Module map, in the order a boot uses them:
//! - what the guest is told: [`topology`] (the model and APIC IDs),
//!   [`cpuid`], [`acpi`], [`layout`] (memory map, e820);
//! - [`vstate`]: KVM state ([`vstate::memory`] guest RAM,
//!   [`vstate::vcpu`] entry state, run loop and kick,
//!   [`vstate::control`] what the host and vCPU threads share);
//! - [`devices`]: the I/O bus and what is on it (UARTs, power and reset);
//! - [`boot`]: what the guest starts with (PVH kernel or raw code);
//! - [`vm`]: building a VM from those, its lifecycle;
//! - [`freeze`]: freeze/thaw around a capture.
#![warn(missing_docs)]

pub use ktstr_walker as walker;

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod devices;
pub mod freeze;
pub mod layout;
pub mod topology;
pub mod vm;
pub mod vstate;

pub use boot::{Boot, CODE_ADDR, CODE_MAX, COUNTER_ADDR};
pub use freeze::{DEFAULT_PARK_TIMEOUT, FreezeReport, Frozen};
pub use topology::{CpuPlace, Topology, TopologyError};
pub use vm::{ExitReason, Vm, VmConfig, VmError};
pub use vstate::memory::VmMemory;
pub use vstate::vcpu::{VcpuState, kick_signal};

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
