//! Knowledge that needs files (feature `embed`): BTF, symbol tables, a
//! vmlinux and ELF core files; kernel images (bzImage extraction) with
//! feature `images`.

pub mod btf;
pub(crate) mod elf;
pub mod elfcore;
#[cfg(feature = "images")]
pub mod image;
pub mod ksyms;
pub mod vmlinux;
