//! ktstr-vmm: a small KVM VMM built from rust-vmm parts.
//!
//! Today it holds the topology model the backends share; the VMM itself
//! (PVH boot, serial, vCPU freeze/thaw) arrives with its own issue.
#![warn(missing_docs)]

pub use ktstr_walker as walker;

pub mod topology;

pub use topology::{Topology, TopologyError};
