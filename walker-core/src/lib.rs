//! ktstr-walker: reads sched_ext scheduler state out of a guest kernel's memory.
//!
//! The default build is `#![no_std]` with no allocator: everything on the
//! freeze path ([`GuestMem`], [`Translator`], [`Layout`], [`Symbols`], the
//! bounded traversals in [`walk`]) works on caller-provided buffers and
//! returns errors as values. Guest memory is hostile input: nothing here
//! panics on what it reads, and every loop is bounded.
//!
//! Features, each adding to the one before:
//! - `vm-memory`: [`GuestMem`] for vm-memory's guest memory
//!   ([`mem::VmGuestMemory`], `GuestMemoryMmap`).
//! - `alloc`: heap-backed capture storage.
//! - `embed`: what an embedding VMM needs and no more: a vmlinux
//!   ([`kernel::vmlinux`], mapped), its BTF -> [`Layout`]
//!   ([`kernel::btf`]), symbol tables ([`kernel::ksyms`]), ELF cores as
//!   [`GuestMem`] ([`kernel::elfcore`]), the owned [`embed::Dumper`] and
//!   its reports ([`render`], serde).
//! - `images`: bzImage -> vmlinux extraction (the decompressors).
//! - `std`: `embed` + `images`.
//!
//! Discovery ([`discover`]) and the kallsyms reader ([`kallsyms`]) are in
//! the no_std core: a VMM that finds the kernel itself needs no feature.
#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "embed", test))]
extern crate std;

pub mod capture;
pub mod discover;
pub mod kallsyms;
pub mod layout;
pub mod mem;
pub mod symbols;
pub mod translate;
pub mod walk;

#[cfg(feature = "embed")]
pub mod embed;
#[cfg(feature = "embed")]
pub mod kernel;
#[cfg(feature = "embed")]
pub mod render;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use layout::Layout;
pub use mem::{GuestMem, MemError};
pub use symbols::Symbols;
pub use translate::Translator;
