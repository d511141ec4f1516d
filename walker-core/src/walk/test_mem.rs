//! Direct-mapped scratch memory for the walk tests.

use std::vec;
use std::vec::Vec;

use crate::mem::SliceMem;
use crate::translate::{DEFAULT_PAGE_OFFSET_BASE, Translator};

pub(crate) const BASE: u64 = DEFAULT_PAGE_OFFSET_BASE;

pub(crate) struct Scratch {
    pub(crate) bytes: Vec<u8>,
}

impl Scratch {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            bytes: vec![0; size],
        }
    }
    /// Kernel virtual address of byte `off`.
    pub(crate) fn va(off: u64) -> u64 {
        BASE + off
    }
    pub(crate) fn put(&mut self, va: u64, v: u64) {
        let o = (va - BASE) as usize;
        self.bytes[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn put_u32(&mut self, va: u64, v: u32) {
        let o = (va - BASE) as usize;
        self.bytes[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn mem(&self) -> SliceMem<'_> {
        SliceMem::new(0, &self.bytes)
    }
    pub(crate) fn translator() -> Translator {
        Translator::default()
    }
}
