//! ktstr-vmm: a small KVM VMM built from rust-vmm parts.
//!
//! Topology as code ([`Topology`], `1n2l4c2t`) becomes APIC IDs, CPUID
//! leaves and ACPI tables; a vmlinux (or a bzImage, extracted first) boots
//! through its PVH entry; one thread runs each vCPU; the VM can be frozen,
//! its memory read through [`walker::GuestMem`], and thawed.
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
