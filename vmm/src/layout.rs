//! Guest-physical memory layout: where RAM is (split over NUMA nodes and
//! around the 32-bit PCI hole), the e820 map, and where the boot structures
//! go.
//!
//! ```text
//! 0x0000_0500  GDT (PVH entry needs flat 32-bit segments)
//! 0x0000_6000  hvm_start_info, then the module list
//! 0x0000_7000  hvm memmap (e820) table
//! 0x0002_0000  kernel command line
//! 0x000a_0000  reserved up to 1 MiB; ACPI tables at 0xe_0000
//! 0x0100_0000  kernel (its ELF physical addresses)
//! ...          initramfs at the top of RAM below the hole
//! 0xc000_0000  hole up to 4 GiB (LAPIC, I/O APIC)
//! 0x1_0000_0000 RAM above 3 GiB continues here
//! ```

/// GDT address.
pub const GDT_ADDR: u64 = 0x500;
/// `hvm_start_info` address.
pub const START_INFO_ADDR: u64 = 0x6000;
/// PVH module list (initramfs) address.
pub const MODLIST_ADDR: u64 = 0x6800;
/// PVH memory map address.
pub const MEMMAP_ADDR: u64 = 0x7000;
/// Most memory-map entries that fit before the command line.
pub const MAX_MEMMAP_ENTRIES: usize = 128;
/// Command line address.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Largest command line, NUL included (the kernel's x86 limit is 2048).
pub const CMDLINE_MAX: usize = 2048;
/// End of conventional RAM below 1 MiB.
pub const LOW_RAM_END: u64 = 0xa_0000;
/// Start of RAM above the ISA hole.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// ACPI tables (RSDP first).
pub const ACPI_ADDR: u64 = 0xe_0000;
/// Room for ACPI tables.
pub const ACPI_MAX: usize = 0x2_0000;
/// Start of the 32-bit PCI/APIC hole.
pub const HOLE_START: u64 = 0xc000_0000;
/// End of the hole.
pub const HOLE_END: u64 = 1 << 32;
/// Granule NUMA nodes' memory is rounded to.
pub const NODE_ALIGN: u64 = 2 << 20;

/// e820 entry types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved.
    Reserved = 2,
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type.
    pub kind: E820Type,
}

/// Why a memory size does not work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Too little memory for the boot structures and a kernel.
    #[error("{mib} MiB of guest memory is too little (at least {min} MiB)")]
    TooSmall {
        /// Requested.
        mib: u64,
        /// Minimum.
        min: u64,
    },
    /// Each NUMA node would get less than the alignment granule.
    #[error("{mib} MiB cannot be split over {nodes} NUMA nodes in 2 MiB pieces")]
    TooManyNodes {
        /// Requested.
        mib: u64,
        /// Nodes.
        nodes: u32,
    },
}

/// Smallest guest memory accepted.
pub const MIN_MEMORY_MIB: u64 = 32;

/// Where RAM is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    /// RAM per NUMA node as `(base, len)` ranges, in address order; together
    /// they cover all guest RAM, including the first 640 KiB and the
    /// legacy hole's neighbours.
    pub nodes: Vec<Vec<(u64, u64)>>,
}

impl MemoryLayout {
    /// `mib` MiB of RAM split evenly over `numa_nodes` nodes (in 2 MiB
    /// granules, the last node takes the remainder), placed below 3 GiB and
    /// then from 4 GiB.
    pub fn new(mib: u64, numa_nodes: u32) -> Result<Self, LayoutError> {
        if mib < MIN_MEMORY_MIB {
            return Err(LayoutError::TooSmall {
                mib,
                min: MIN_MEMORY_MIB,
            });
        }
        let total = mib << 20;
        let nodes = u64::from(numa_nodes.max(1));
        let share = (total / nodes) / NODE_ALIGN * NODE_ALIGN;
        if share == 0 {
            return Err(LayoutError::TooManyNodes {
                mib,
                nodes: numa_nodes,
            });
        }
        let mut out = Vec::new();
        let mut ram_off = 0u64;
        for n in 0..nodes {
            let len = if n + 1 == nodes {
                total - ram_off
            } else {
                share
            };
            out.push(ram_ranges(ram_off, len));
            ram_off += len;
        }
        Ok(Self { nodes: out })
    }

    /// All RAM ranges, in address order, one per node piece (these become
    /// the vm-memory regions and KVM memory slots).
    pub fn regions(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.nodes.iter().flatten().copied()
    }

    /// Top of RAM below the hole (exclusive).
    pub fn low_ram_end(&self) -> u64 {
        self.regions()
            .filter(|(b, _)| *b < HOLE_START)
            .map(|(b, l)| b + l)
            .max()
            .unwrap_or(0)
    }

    /// The e820 map: RAM below 640 KiB, the legacy area reserved, RAM from
    /// 1 MiB to the hole, RAM above 4 GiB. Adjacent ranges are merged, as
    /// the kernel prints them.
    pub fn e820(&self) -> Vec<E820Entry> {
        let mut out = vec![
            E820Entry {
                addr: 0,
                size: LOW_RAM_END,
                kind: E820Type::Ram,
            },
            E820Entry {
                addr: LOW_RAM_END,
                size: HIGH_RAM_START - LOW_RAM_END,
                kind: E820Type::Reserved,
            },
        ];
        let mut ram: Vec<(u64, u64)> = self.regions().collect();
        ram.sort_unstable();
        for (base, len) in ram {
            let (mut start, end) = (base.max(HIGH_RAM_START), base + len);
            if start >= end {
                continue;
            }
            if let Some(last) = out.last_mut()
                && last.kind == E820Type::Ram
                && last.addr + last.size == start
            {
                last.size = end - last.addr;
                continue;
            }
            start = start.max(HIGH_RAM_START);
            out.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820Type::Ram,
            });
        }
        out
    }
}

/// Map `len` bytes of RAM starting at RAM offset `off` to guest-physical
/// ranges, skipping the hole.
fn ram_ranges(off: u64, len: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (start, end) = (off, off + len);
    if start < HOLE_START {
        out.push((start, end.min(HOLE_START) - start));
    }
    if end > HOLE_START {
        let s = start.max(HOLE_START);
        out.push((s - HOLE_START + HOLE_END, end - s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_node_small() {
        let l = MemoryLayout::new(256, 1).unwrap();
        assert_eq!(l.nodes, [vec![(0, 256 << 20)]]);
        let e: Vec<(u64, u64, E820Type)> =
            l.e820().iter().map(|e| (e.addr, e.size, e.kind)).collect();
        assert_eq!(
            e,
            [
                (0, 0xa_0000, E820Type::Ram),
                (0xa_0000, 0x6_0000, E820Type::Reserved),
                (0x10_0000, (256 << 20) - 0x10_0000, E820Type::Ram)
            ]
        );
        assert_eq!(l.low_ram_end(), 256 << 20);
    }

    #[test]
    fn nodes_split_evenly_and_merge_in_e820() {
        let l = MemoryLayout::new(512, 2).unwrap();
        assert_eq!(
            l.nodes,
            [vec![(0, 256 << 20)], vec![(256 << 20, 256 << 20)]]
        );
        assert_eq!(l.e820().len(), 3, "two nodes' RAM is one e820 range");
        let l = MemoryLayout::new(100, 3).unwrap();
        // 100/3 = 33.3 MiB -> 32 MiB granules; the last node gets 36 MiB.
        let lens: Vec<u64> = l
            .nodes
            .iter()
            .map(|n| n.iter().map(|r| r.1).sum())
            .collect();
        assert_eq!(lens, [32 << 20, 32 << 20, 36 << 20]);
        assert!(matches!(
            MemoryLayout::new(32, 32),
            Err(LayoutError::TooManyNodes { .. })
        ));
        assert!(matches!(
            MemoryLayout::new(8, 1),
            Err(LayoutError::TooSmall { .. })
        ));
    }

    #[test]
    fn ram_skips_the_hole() {
        let l = MemoryLayout::new(4096, 2).unwrap();
        assert_eq!(
            l.nodes,
            [
                vec![(0, 2 << 30)],
                vec![(2 << 30, 1 << 30), (4 << 30, 1 << 30)]
            ]
        );
        let e = l.e820();
        assert_eq!(e.len(), 4);
        assert_eq!((e[2].addr, e[2].size), (0x10_0000, HOLE_START - 0x10_0000));
        assert_eq!((e[3].addr, e[3].size), (4 << 30, 1 << 30));
        assert_eq!(l.low_ram_end(), HOLE_START);
    }
}
