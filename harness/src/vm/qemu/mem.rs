//! Guest RAM shared with QEMU through memory-backend files, as the walker's
//! [`GuestMem`].
//!
//! With NUMA, each node has its own backend file; QEMU lays them out one
//! after another as the machine's RAM, and q35 puts the first part below
//! 4 GiB and the rest at 4 GiB ([`q35_below_4g`]).

use std::fs::File;
use std::path::Path;

use ktstr_walker::mem::read_regions;
use ktstr_walker::{GuestMem, MemError};
use memmap2::{MmapOptions, MmapRaw};

/// First guest-physical address of RAM above the 4 GiB hole.
const HIGH_RAM: u64 = 1 << 32;

/// How much of `ram` bytes q35 maps below 4 GiB (QEMU's pc_q35.c: all of it
/// when RAM is under 2.75 GiB, else 2 GiB).
pub fn q35_below_4g(ram: u64) -> u64 {
    let lowmem = if ram >= 0xb000_0000 {
        0x8000_0000
    } else {
        0xb000_0000
    };
    ram.min(lowmem)
}

struct Region {
    gpa: u64,
    len: u64,
    map: usize,
    offset: u64,
}

/// The backend files, mapped shared, read-only.
pub struct SharedRam {
    maps: Vec<MmapRaw>,
    regions: Vec<Region>,
}

impl SharedRam {
    /// Map `files` (in NUMA node order) as q35 lays them out.
    pub fn open(files: &[impl AsRef<Path>]) -> std::io::Result<SharedRam> {
        let maps = files
            .iter()
            .map(|p| MmapOptions::new().map_raw_read_only(&File::open(p.as_ref())?))
            .collect::<std::io::Result<Vec<_>>>()?;
        let total: u64 = maps.iter().map(|m| m.len() as u64).sum();
        let below = q35_below_4g(total);
        // RAM offsets [0, below) sit at GPA 0, the rest at 4 GiB; split the
        // files' ranges at that boundary.
        let mut regions = Vec::new();
        let mut ram_off = 0u64;
        for (i, m) in maps.iter().enumerate() {
            let len = m.len() as u64;
            let mut cuts = vec![0, len];
            if ram_off < below && below < ram_off + len {
                cuts.insert(1, below - ram_off);
            }
            for w in cuts.windows(2) {
                let start = ram_off + w[0];
                let gpa = if start < below {
                    start
                } else {
                    HIGH_RAM + (start - below)
                };
                regions.push(Region {
                    gpa,
                    len: w[1] - w[0],
                    map: i,
                    offset: w[0],
                });
            }
            ram_off += len;
        }
        Ok(SharedRam { maps, regions })
    }

    /// Bytes of RAM.
    pub fn size(&self) -> u64 {
        self.maps.iter().map(|m| m.len() as u64).sum()
    }
}

impl GuestMem for SharedRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemError> {
        read_regions(
            gpa,
            buf,
            self.regions.len(),
            |at| {
                self.regions
                    .iter()
                    .find(|r| at >= r.gpa && at - r.gpa < r.len)
                    .map(|r| (r.gpa, r.len, r))
            },
            |r, off, piece| {
                let unmapped = MemError::Unmapped {
                    gpa: r.gpa,
                    len: r.len,
                };
                let map = self.maps.get(r.map).ok_or(unmapped)?;
                let src_off = usize::try_from(r.offset + off).map_err(|_| unmapped)?;
                if src_off
                    .checked_add(piece.len())
                    .is_none_or(|end| end > map.len())
                {
                    return Err(unmapped);
                }
                // SAFETY: [src_off, src_off + len) lies inside the mapping
                // (checked above). The guest may write these bytes
                // concurrently; a raw copy reads whatever is there without
                // asserting Rust aliasing rules over them.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        map.as_ptr().add(src_off),
                        piece.as_mut_ptr(),
                        piece.len(),
                    );
                }
                Ok(())
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q35_split_matches_qemu() {
        assert_eq!(q35_below_4g(512 << 20), 512 << 20);
        assert_eq!(q35_below_4g(0xafff_f000), 0xafff_f000);
        assert_eq!(q35_below_4g(0xb000_0000), 0x8000_0000);
        assert_eq!(q35_below_4g(8 << 30), 0x8000_0000);
    }

    #[test]
    fn reads_across_files_and_refuses_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let paths: Vec<_> = (0..2u8)
            .map(|i| {
                let p = tmp.path().join(format!("node{i}"));
                std::fs::write(&p, vec![i + 1; 4096]).unwrap();
                p
            })
            .collect();
        let ram = SharedRam::open(&paths).unwrap();
        assert_eq!(ram.size(), 8192);
        let mut buf = [0u8; 4];
        ram.read(4094, &mut buf).unwrap();
        assert_eq!(buf, [1, 1, 2, 2], "node 0's file then node 1's");
        assert!(ram.read(8190, &mut buf).is_err());
        assert!(ram.read(u64::MAX - 1, &mut buf).is_err());
    }

    #[test]
    fn large_ram_continues_at_4g() {
        use std::os::unix::fs::FileExt;
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("ram");
        let f = File::create(&p).unwrap();
        f.set_len(0xc000_0000).unwrap(); // sparse: 3 GiB, over q35's split
        f.write_all_at(b"low!", 0x7fff_fffc).unwrap();
        f.write_all_at(b"high", 0x8000_0000).unwrap();
        let ram = SharedRam::open(&[&p]).unwrap();
        let mut buf = [0u8; 4];
        ram.read(0x7fff_fffc, &mut buf).unwrap();
        assert_eq!(&buf, b"low!");
        ram.read(HIGH_RAM, &mut buf).unwrap();
        assert_eq!(&buf, b"high");
        assert!(ram.read(0x8000_0000, &mut buf).is_err(), "the PCI hole");
        assert!(ram.read(HIGH_RAM + 0x4000_0000, &mut buf).is_err());
    }
}
