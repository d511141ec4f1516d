//! ktstr-walker: reads sched_ext scheduler state out of a guest kernel's memory.
//!
//! The default build is `#![no_std]` with no allocator: everything on the
//! freeze path ([`GuestMem`], [`Translator`], [`Layout`], [`Symbols`], the
//! bounded traversals in [`walk`]) works on caller-provided buffers and
//! returns errors as values. Guest memory is hostile input: nothing here
//! panics on what it reads, and every loop is bounded.
//!
//! Feature `std` adds the knowledge that needs files: kernel images
//! ([`kernel::image`]), BTF -> [`Layout`] ([`kernel::btf`]), symbol tables
//! ([`kernel::ksyms`]) and ELF core files as [`GuestMem`]
//! ([`kernel::elfcore`]).
#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod capture;
pub mod discover;
pub mod kallsyms;
pub mod layout;
pub mod mem;
pub mod symbols;
pub mod translate;
pub mod walk;

#[cfg(feature = "std")]
pub mod embed;
#[cfg(feature = "std")]
pub mod kernel;
#[cfg(feature = "std")]
pub mod render;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use layout::Layout;
pub use mem::{GuestMem, MemError};
pub use symbols::Symbols;
pub use translate::Translator;
