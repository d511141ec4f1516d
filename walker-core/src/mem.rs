//! Guest-physical memory access: the only way the walker touches guest RAM.

use zerocopy::{FromBytes, IntoBytes};

/// Why a guest-physical read failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// Some byte of `[gpa, gpa + len)` is not backed by guest memory.
    #[error("guest physical range {gpa:#x}+{len:#x} is not backed by memory")]
    Unmapped {
        /// First address of the failed read.
        gpa: u64,
        /// Length of the failed read.
        len: u64,
    },
    /// The read would wrap around the end of the 64-bit address space.
    #[error("guest physical range {gpa:#x}+{len:#x} overflows the address space")]
    Overflow {
        /// First address of the failed read.
        gpa: u64,
        /// Length of the failed read.
        len: u64,
    },
}

/// Fallible reads of guest-physical memory into caller buffers.
///
/// Implementations never panic and never expose undefined behaviour for any
/// `gpa`/length: an address that is not backed yields [`MemError`].
pub trait GuestMem {
    /// Fill `buf` with the bytes at guest-physical `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError>;

    /// Read a plain-old-data value at `gpa` with one read.
    fn read_pod<T: FromBytes + IntoBytes>(&self, gpa: u64) -> Result<T, MemError>
    where
        Self: Sized,
    {
        let mut v = T::new_zeroed();
        self.read(gpa, v.as_mut_bytes())?;
        Ok(v)
    }
}

impl<M: GuestMem + ?Sized> GuestMem for &M {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        (**self).read(gpa, buf)
    }
}

/// Copy `buf.len()` bytes at offset `off` of `bytes`, or report the range
/// `[gpa, gpa+len)` as unmapped.
#[inline]
fn copy_from(bytes: &[u8], off: u64, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
    let len = buf.len() as u64;
    let src = usize::try_from(off)
        .ok()
        .and_then(|start| bytes.get(start..start.checked_add(buf.len())?))
        .ok_or(MemError::Unmapped { gpa, len })?;
    buf.copy_from_slice(src);
    Ok(())
}

#[inline]
fn end_of(gpa: u64, len: usize) -> Result<u64, MemError> {
    gpa.checked_add(len as u64).ok_or(MemError::Overflow {
        gpa,
        len: len as u64,
    })
}

/// Guest memory as one byte slice starting at guest-physical `base`.
#[derive(Debug, Clone, Copy)]
pub struct SliceMem<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl<'a> SliceMem<'a> {
    /// Memory whose first byte is at guest-physical address `base`.
    pub const fn new(base: u64, bytes: &'a [u8]) -> Self {
        Self { base, bytes }
    }
}

impl GuestMem for SliceMem<'_> {
    #[inline]
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        end_of(gpa, buf.len())?;
        let off = gpa.checked_sub(self.base).ok_or(MemError::Unmapped {
            gpa,
            len: buf.len() as u64,
        })?;
        copy_from(self.bytes, off, gpa, buf)
    }
}

/// One contiguous piece of guest-physical memory.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a> {
    /// Guest-physical address of `bytes[0]`.
    pub gpa: u64,
    /// The region's contents.
    pub bytes: &'a [u8],
}

/// Guest memory as a set of non-overlapping regions (e.g. RAM below and
/// above the PCI hole, or the PT_LOAD segments of a core file).
///
/// A read may span adjacent regions.
#[derive(Debug, Clone, Copy)]
pub struct RegionMem<'r, 'a> {
    regions: &'r [Region<'a>],
}

impl<'r, 'a> RegionMem<'r, 'a> {
    /// Memory made of `regions`, in any order.
    pub const fn new(regions: &'r [Region<'a>]) -> Self {
        Self { regions }
    }

    fn region_at(&self, gpa: u64) -> Option<&Region<'a>> {
        self.regions
            .iter()
            .find(|r| gpa >= r.gpa && (gpa - r.gpa) < r.bytes.len() as u64)
    }
}

impl GuestMem for RegionMem<'_, '_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        read_regions(
            gpa,
            buf,
            self.regions.len(),
            |at| self.region_at(at).map(|r| (r.gpa, r.bytes.len() as u64, r)),
            |r, off, dst| copy_from(r.bytes, off, r.gpa, dst),
        )
    }
}

/// A read of `buf` at `gpa` from memory made of regions, split into one
/// piece per region: `locate(at)` gives the region holding `at` as (its
/// first address, its length, a handle), and `copy(handle, offset in the
/// region, piece)` fills the piece. Every [`GuestMem`] of several regions
/// (the walker's, an ELF core's segments, a VMM's RAM files) reads through
/// this. Each piece ends at a region's end or the buffer's, so at most
/// `max_regions + 1` steps run, whatever `locate` answers; any failure is
/// the whole read's [`MemError::Unmapped`].
pub fn read_regions<R>(
    gpa: u64,
    buf: &mut [u8],
    max_regions: usize,
    locate: impl Fn(u64) -> Option<(u64, u64, R)>,
    mut copy: impl FnMut(R, u64, &mut [u8]) -> Result<(), MemError>,
) -> Result<(), MemError> {
    end_of(gpa, buf.len())?;
    let unmapped = MemError::Unmapped {
        gpa,
        len: buf.len() as u64,
    };
    let mut done = 0usize;
    for _ in 0..=max_regions {
        let Some(rest) = buf.get_mut(done..) else {
            return Err(unmapped);
        };
        if rest.is_empty() {
            return Ok(());
        }
        let at = gpa.checked_add(done as u64).ok_or(unmapped)?;
        let (start, len, region) = locate(at).ok_or(unmapped)?;
        let off = at
            .checked_sub(start)
            .filter(|off| *off < len)
            .ok_or(unmapped)?;
        let n = usize::try_from(len - off).map_or(rest.len(), |left| left.min(rest.len()));
        let piece = rest.get_mut(..n).ok_or(unmapped)?;
        copy(region, off, piece).map_err(|_| unmapped)?;
        done += n;
    }
    if done == buf.len() {
        Ok(())
    } else {
        Err(unmapped)
    }
}

/// Counts the reads and bytes that pass through it, and refuses reads once a
/// byte budget is spent: the capture reports these figures, and fuzzing uses
/// the budget to prove walks stay bounded.
#[derive(Debug)]
pub struct CountingMem<M> {
    inner: M,
    budget: u64,
    reads: core::cell::Cell<u64>,
    bytes: core::cell::Cell<u64>,
}

impl<M: GuestMem> CountingMem<M> {
    /// Wrap `inner`; reads beyond `budget` bytes in total fail as unmapped.
    pub fn new(inner: M, budget: u64) -> Self {
        Self {
            inner,
            budget,
            reads: core::cell::Cell::new(0),
            bytes: core::cell::Cell::new(0),
        }
    }
    /// Number of read calls so far (including refused ones).
    pub fn reads(&self) -> u64 {
        self.reads.get()
    }
    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }
    /// The wrapped memory.
    pub fn inner(&self) -> &M {
        &self.inner
    }
}

impl<M: GuestMem> GuestMem for CountingMem<M> {
    #[inline]
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        self.reads.set(self.reads.get().saturating_add(1));
        let after = self.bytes.get().saturating_add(buf.len() as u64);
        if after > self.budget {
            return Err(MemError::Unmapped {
                gpa,
                len: buf.len() as u64,
            });
        }
        self.bytes.set(after);
        self.inner.read(gpa, buf)
    }
}

/// Any vm-memory guest memory as [`GuestMem`] (feature `vm-memory`): a
/// rust-vmm VMM passes its `GuestMemoryMmap` (or anything implementing
/// `vm_memory::GuestMemory`) as it is, e.g. `VmGuestMemory(&guest_memory)`.
/// Reads go through vm-memory's own bounds checks; a read that is not
/// fully backed fails as [`MemError::Unmapped`].
#[cfg(feature = "vm-memory")]
#[derive(Debug, Clone, Copy)]
pub struct VmGuestMemory<'a, G: ?Sized>(pub &'a G);

#[cfg(feature = "vm-memory")]
impl<G: vm_memory::GuestMemory + ?Sized> GuestMem for VmGuestMemory<'_, G> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        use vm_memory::Bytes;
        let len = buf.len() as u64;
        end_of(gpa, buf.len())?;
        self.0
            .read_slice(buf, vm_memory::GuestAddress(gpa))
            .map_err(|_| MemError::Unmapped { gpa, len })
    }
}

/// vm-memory's mmap-backed guest memory, directly.
#[cfg(feature = "vm-memory")]
impl<B: vm_memory::bitmap::Bitmap + 'static> GuestMem for vm_memory::GuestMemoryMmap<B> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        VmGuestMemory(self).read(gpa, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_mem_bounds() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let m = SliceMem::new(0x1000, &data);
        let mut b = [0u8; 4];
        m.read(0x1002, &mut b).unwrap();
        assert_eq!(b, [3, 4, 5, 6]);
        assert!(m.read(0x1006, &mut b).is_err());
        assert!(m.read(0xfff, &mut b).is_err());
        assert!(matches!(
            GuestMem::read(&m, u64::MAX - 1, &mut b),
            Err(MemError::Overflow { .. })
        ));
        let v: u32 = m.read_pod(0x1000).unwrap();
        assert_eq!(v, 0x0403_0201);
    }

    #[test]
    fn region_mem_spans_adjacent_regions_and_rejects_holes() {
        let a = [0xaau8; 16];
        let b = [0xbbu8; 16];
        let c = [0xccu8; 16];
        let regions = [
            Region {
                gpa: 0x10,
                bytes: &b,
            },
            Region {
                gpa: 0x0,
                bytes: &a,
            },
            Region {
                gpa: 0x100,
                bytes: &c,
            },
        ];
        let m = RegionMem::new(&regions);
        let mut buf = [0u8; 4];
        m.read(0xe, &mut buf).unwrap();
        assert_eq!(buf, [0xaa, 0xaa, 0xbb, 0xbb]);
        assert!(m.read(0x1e, &mut buf).is_err(), "read into a hole");
        m.read(0x100, &mut buf).unwrap();
        assert_eq!(buf, [0xcc; 4]);
        let mut empty = [0u8; 0];
        m.read(0x5000, &mut empty).unwrap();
    }

    #[test]
    fn counting_mem_enforces_budget() {
        let data = [0u8; 64];
        let m = CountingMem::new(SliceMem::new(0, &data), 16);
        let mut b = [0u8; 8];
        m.read(0, &mut b).unwrap();
        m.read(8, &mut b).unwrap();
        assert!(m.read(16, &mut b).is_err());
        assert_eq!((m.reads(), m.bytes()), (3, 16));
    }

    #[cfg(feature = "vm-memory")]
    #[test]
    fn vm_memory_reads_its_regions_and_rejects_holes() {
        use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
        let m: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x2000), 0x1000),
        ])
        .unwrap();
        m.write_slice(&[1, 2, 3, 4], GuestAddress(0x2ffc)).unwrap();
        let mut b = [0u8; 4];
        GuestMem::read(&m, 0x2ffc, &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4]);
        assert!(
            GuestMem::read(&m, 0xffe, &mut b).is_err(),
            "runs into the hole"
        );
        assert!(VmGuestMemory(&m).read(0x3000, &mut b).is_err());
        assert!(matches!(
            GuestMem::read(&m, u64::MAX - 1, &mut b),
            Err(MemError::Overflow { .. })
        ));
    }
}
