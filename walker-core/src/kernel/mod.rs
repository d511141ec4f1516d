//! Knowledge that needs files (feature `std`): kernel images, BTF, symbol
//! tables and ELF core files.

pub mod btf;
pub mod elfcore;
pub mod image;
pub mod ksyms;
pub mod vmlinux;
