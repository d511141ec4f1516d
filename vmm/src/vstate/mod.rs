//! The VM's state as KVM holds it: guest memory, the vCPUs and the
//! control block the vCPU threads and the host share.

pub mod control;
pub mod memory;
pub mod vcpu;
