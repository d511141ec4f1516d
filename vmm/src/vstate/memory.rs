//! Guest RAM: vm-memory regions laid out by [`MemoryLayout`], registered
//! with KVM and readable by the walker through [`GuestMem`].

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::MemoryLayout;
use crate::vm::{VmError, kvm_err};
use crate::walker::{GuestMem, MemError};

/// Guest RAM (vm-memory regions, one or more per NUMA node), readable by
/// the walker through [`GuestMem`].
#[derive(Debug)]
pub struct VmMemory {
    mem: GuestMemoryMmap,
    layout: MemoryLayout,
}

impl VmMemory {
    /// Map RAM as `layout` places it.
    pub(crate) fn new(layout: MemoryLayout) -> Result<VmMemory, VmError> {
        let ranges: Vec<(GuestAddress, usize)> = layout
            .regions()
            .map(|(b, l)| (GuestAddress(b), l as usize))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges)
            .map_err(|e| VmError::Memory(format!("mapping {ranges:?}: {e}")))?;
        Ok(VmMemory { mem, layout })
    }

    /// Tell KVM where each region is. The caller keeps `self` alive for as
    /// long as the VM can run (the vCPU threads hold it).
    pub(crate) fn register(&self, vm_fd: &VmFd) -> Result<(), VmError> {
        for (slot, region) in (0u32..).zip(self.mem.iter()) {
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mmap owned by `self`, which
            // outlives every vCPU thread (each holds an Arc of it).
            unsafe { vm_fd.set_user_memory_region(r) }.map_err(kvm_err("set memory region"))?;
        }
        Ok(())
    }

    /// Write `bytes` at guest-physical `addr`.
    pub(crate) fn write(&self, addr: u64, bytes: &[u8]) -> Result<(), VmError> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|e| {
                VmError::Memory(format!("writing {} bytes at {addr:#x}: {e}", bytes.len()))
            })
    }

    /// The vm-memory object.
    pub fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Where RAM is, per NUMA node.
    pub fn layout(&self) -> &MemoryLayout {
        &self.layout
    }
}

impl GuestMem for VmMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len() as u64;
        gpa.checked_add(len)
            .ok_or(MemError::Overflow { gpa, len })?;
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemError::Unmapped { gpa, len })
    }
}
