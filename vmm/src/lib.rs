//! ktstr-vmm: a small KVM VMM built from rust-vmm parts.
//!
//! Not written yet: the VMM arrives with its own issue. The crate exists so
//! the workspace shows the architecture (walker-core <- vmm <- harness).
#![warn(missing_docs)]

pub use ktstr_walker as walker;
