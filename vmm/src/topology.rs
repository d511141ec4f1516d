//! CPU topology as code: NUMA nodes x LLCs x cores x threads, written as a
//! string such as `1n2l4c2t` (1 node, 2 LLCs in all, 4 cores per LLC, 2
//! threads per core: 16 CPUs).

use core::fmt;
use core::str::FromStr;

/// Most vCPUs a topology may declare (x2APIC IDs fit easily; KVM's usual cap).
pub const MAX_CPUS: u32 = 1024;

/// A machine's CPU topology. `llcs` counts last-level caches in the whole
/// machine and must split evenly over the NUMA nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Topology {
    /// NUMA nodes.
    pub numa_nodes: u32,
    /// Last-level caches in all (a multiple of `numa_nodes`).
    pub llcs: u32,
    /// Cores sharing one LLC.
    pub cores_per_llc: u32,
    /// Hardware threads per core.
    pub threads_per_core: u32,
}

/// Why a topology is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// Not of the form `<N>n<L>l<C>c<T>t`.
    #[error("topology {0:?} is not of the form <nodes>n<llcs>l<cores>c<threads>t, e.g. 1n2l4c2t")]
    Syntax(String),
    /// A count is zero.
    #[error("topology {0}: every count must be at least 1")]
    Zero(Topology),
    /// LLCs do not split evenly over nodes.
    #[error("topology {0}: {llcs} LLCs do not split evenly over {nodes} NUMA nodes", llcs = .0.llcs, nodes = .0.numa_nodes)]
    UnevenNodes(Topology),
    /// Too many CPUs.
    #[error("topology {0}: {cpus} CPUs, more than the {MAX_CPUS} supported", cpus = .0.nr_cpus_wide())]
    TooManyCpus(Topology),
}

/// Where one CPU sits in the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPlace {
    /// NUMA node.
    pub node: u32,
    /// LLC index in the whole machine.
    pub llc: u32,
    /// Core index within its LLC.
    pub core: u32,
    /// Thread index within its core.
    pub thread: u32,
}

impl Topology {
    /// A validated topology.
    pub fn new(
        numa_nodes: u32,
        llcs: u32,
        cores_per_llc: u32,
        threads_per_core: u32,
    ) -> Result<Topology, TopologyError> {
        let t = Topology {
            numa_nodes,
            llcs,
            cores_per_llc,
            threads_per_core,
        };
        if numa_nodes == 0 || llcs == 0 || cores_per_llc == 0 || threads_per_core == 0 {
            return Err(TopologyError::Zero(t));
        }
        if !llcs.is_multiple_of(numa_nodes) {
            return Err(TopologyError::UnevenNodes(t));
        }
        if t.nr_cpus_wide() > u64::from(MAX_CPUS) {
            return Err(TopologyError::TooManyCpus(t));
        }
        Ok(t)
    }

    fn nr_cpus_wide(&self) -> u64 {
        u64::from(self.llcs) * u64::from(self.cores_per_llc) * u64::from(self.threads_per_core)
    }

    /// Number of CPUs.
    pub fn nr_cpus(&self) -> u32 {
        self.llcs * self.cores_per_llc * self.threads_per_core
    }

    /// LLCs on each NUMA node.
    pub fn llcs_per_node(&self) -> u32 {
        self.llcs / self.numa_nodes
    }

    /// CPUs on each NUMA node.
    pub fn cpus_per_node(&self) -> u32 {
        self.nr_cpus() / self.numa_nodes
    }

    /// CPUs sharing one LLC.
    pub fn cpus_per_llc(&self) -> u32 {
        self.cores_per_llc * self.threads_per_core
    }

    /// Where CPU `cpu` sits; CPUs are numbered thread-fastest, then core,
    /// then LLC, so a node's CPUs are contiguous. `None` past the last CPU.
    pub fn place(&self, cpu: u32) -> Option<CpuPlace> {
        if cpu >= self.nr_cpus() {
            return None;
        }
        let llc = cpu / self.cpus_per_llc();
        Some(CpuPlace {
            node: llc / self.llcs_per_node(),
            llc,
            core: (cpu / self.threads_per_core) % self.cores_per_llc,
            thread: cpu % self.threads_per_core,
        })
    }
}

/// Bits of `n` distinct values: `ceil(log2(n))`, 0 for 1.
pub(crate) fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        u32::BITS - (n - 1).leading_zeros()
    }
}

/// How an APIC ID splits into topology fields, lowest bits first:
/// thread, core (within its LLC), LLC (within its node), node. Each field is
/// `ceil(log2(count))` bits wide, the layout CPUID 0xB/0x1F describe. A NUMA
/// node is a package (socket); an LLC is a die within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicLayout {
    /// Width of the thread field.
    pub thread_bits: u32,
    /// Width of the core field.
    pub core_bits: u32,
    /// Width of the LLC (die) field.
    pub llc_bits: u32,
    /// Width of the node (package) field.
    pub node_bits: u32,
}

impl ApicLayout {
    /// Shift of the core field (CPUID 0xB/0x1F SMT level shift).
    pub fn core_shift(&self) -> u32 {
        self.thread_bits
    }

    /// Shift of the LLC field (CPUID 0x1F core level shift): APIC IDs that
    /// agree above it share an LLC.
    pub fn llc_shift(&self) -> u32 {
        self.thread_bits + self.core_bits
    }

    /// Shift of the node field (CPUID 0xB core level, 0x1F die level
    /// shift): APIC IDs that agree above it are in one package.
    pub fn package_shift(&self) -> u32 {
        self.thread_bits + self.core_bits + self.llc_bits
    }
}

impl Topology {
    /// The APIC ID bit layout.
    pub fn apic_layout(&self) -> ApicLayout {
        ApicLayout {
            thread_bits: bits_for(self.threads_per_core),
            core_bits: bits_for(self.cores_per_llc),
            llc_bits: bits_for(self.llcs_per_node()),
            node_bits: bits_for(self.numa_nodes),
        }
    }

    /// The (x2)APIC ID of CPU `cpu`, `None` past the last CPU. IDs are
    /// sparse when a count is not a power of two.
    pub fn apic_id(&self, cpu: u32) -> Option<u32> {
        let p = self.place(cpu)?;
        let l = self.apic_layout();
        let llc_in_node = p.llc % self.llcs_per_node();
        Some(
            p.thread
                | p.core << l.core_shift()
                | llc_in_node << l.llc_shift()
                | p.node << l.package_shift(),
        )
    }

    /// Highest APIC ID in use.
    pub fn max_apic_id(&self) -> u32 {
        self.apic_id(self.nr_cpus() - 1).unwrap_or(0)
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}n{}l{}c{}t",
            self.numa_nodes, self.llcs, self.cores_per_llc, self.threads_per_core
        )
    }
}

impl FromStr for Topology {
    type Err = TopologyError;

    fn from_str(s: &str) -> Result<Topology, TopologyError> {
        let syntax = || TopologyError::Syntax(s.to_string());
        let mut rest = s;
        let mut counts = [0u32; 4];
        for (count, unit) in counts.iter_mut().zip(['n', 'l', 'c', 't']) {
            let end = rest.find(unit).ok_or_else(syntax)?;
            let digits = &rest[..end];
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            *count = digits.parse().map_err(|_| syntax())?;
            rest = &rest[end + 1..];
        }
        if !rest.is_empty() {
            return Err(syntax());
        }
        let [n, l, c, t] = counts;
        Topology::new(n, l, c, t)
    }
}

#[cfg(test)]
// Binary literals are grouped by APIC ID field.
#[allow(clippy::unusual_byte_groupings)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let t: Topology = "1n2l4c2t".parse().unwrap();
        assert_eq!(
            t,
            Topology {
                numa_nodes: 1,
                llcs: 2,
                cores_per_llc: 4,
                threads_per_core: 2
            }
        );
        assert_eq!(t.nr_cpus(), 16);
        assert_eq!(t.to_string(), "1n2l4c2t");
        assert_eq!("2n4l1c1t".parse::<Topology>().unwrap().cpus_per_node(), 2);
    }

    #[test]
    fn rejects_bad_strings() {
        for bad in [
            "",
            "1n2l4c",
            "1n2l4c2t3",
            "n2l4c2t",
            "1x2l4c2t",
            "1n2l4c2t ",
            "-1n1l1c1t",
            "1n1l1c1tt",
            "99999999999n1l1c1t",
        ] {
            let e = bad.parse::<Topology>();
            assert!(matches!(e, Err(TopologyError::Syntax(_))), "{bad:?}: {e:?}");
        }
        assert!(matches!(
            "0n1l1c1t".parse::<Topology>(),
            Err(TopologyError::Zero(_))
        ));
        let e = "2n3l1c1t".parse::<Topology>().unwrap_err();
        assert!(matches!(e, TopologyError::UnevenNodes(_)));
        assert!(
            e.to_string().contains("3 LLCs do not split evenly over 2"),
            "{e}"
        );
        assert!(matches!(
            "1n64l64c2t".parse::<Topology>(),
            Err(TopologyError::TooManyCpus(_))
        ));
    }

    #[test]
    fn places_cpus_thread_fastest() {
        let t: Topology = "2n4l2c2t".parse().unwrap();
        assert_eq!(
            t.place(0),
            Some(CpuPlace {
                node: 0,
                llc: 0,
                core: 0,
                thread: 0
            })
        );
        assert_eq!(
            t.place(5),
            Some(CpuPlace {
                node: 0,
                llc: 1,
                core: 0,
                thread: 1
            })
        );
        assert_eq!(
            t.place(15),
            Some(CpuPlace {
                node: 1,
                llc: 3,
                core: 1,
                thread: 1
            })
        );
        assert_eq!(t.place(16), None);
    }

    #[test]
    fn apic_ids_pack_fields_by_power_of_two() {
        let t: Topology = "1n1l2c2t".parse().unwrap();
        let ids: Vec<u32> = (0..t.nr_cpus()).map(|c| t.apic_id(c).unwrap()).collect();
        assert_eq!(ids, [0, 1, 2, 3]);
        // 3 cores need 2 bits, 3 threads need 2 bits: IDs are sparse.
        let t: Topology = "1n1l3c3t".parse().unwrap();
        assert_eq!(t.apic_id(0), Some(0));
        assert_eq!(t.apic_id(2), Some(0b00_10));
        assert_eq!(t.apic_id(3), Some(0b01_00));
        assert_eq!(t.apic_id(8), Some(0b10_10));
        assert_eq!(t.apic_id(9), None);
        // 2 nodes x 2 LLCs each x 2 cores x 1 thread: node bit 2, LLC bit 1.
        let t: Topology = "2n4l2c1t".parse().unwrap();
        let ids: Vec<u32> = (0..t.nr_cpus()).map(|c| t.apic_id(c).unwrap()).collect();
        assert_eq!(ids, [0, 1, 2, 3, 4, 5, 6, 7]);
        let l = t.apic_layout();
        assert_eq!(
            (l.thread_bits, l.core_bits, l.llc_bits, l.node_bits),
            (0, 1, 1, 1)
        );
        assert_eq!((l.llc_shift(), l.package_shift()), (1, 2));
        // 2 nodes x 3 LLCs each x 1 core x 2 threads: LLC field is 2 bits.
        let t: Topology = "2n6l1c2t".parse().unwrap();
        assert_eq!(t.apic_id(2), Some(0b0_01_0));
        assert_eq!(t.apic_id(6), Some(0b1_00_0));
        assert_eq!(t.apic_id(11), Some(0b1_10_1));
        assert_eq!(t.max_apic_id(), 0b1_10_1);
    }

    #[test]
    fn apic_ids_are_unique_and_decode_to_their_place() {
        for s in ["1n1l1c1t", "1n2l4c2t", "2n4l3c2t", "4n4l5c1t", "3n3l2c3t"] {
            let t: Topology = s.parse().unwrap();
            let l = t.apic_layout();
            let mut seen = std::collections::HashSet::new();
            for cpu in 0..t.nr_cpus() {
                let id = t.apic_id(cpu).unwrap();
                assert!(seen.insert(id), "{s}: duplicate APIC ID {id}");
                let p = t.place(cpu).unwrap();
                let mask = |bits: u32| (1u32 << bits) - 1;
                assert_eq!(id & mask(l.thread_bits), p.thread, "{s} cpu {cpu}");
                assert_eq!((id >> l.core_shift()) & mask(l.core_bits), p.core);
                assert_eq!(
                    (id >> l.llc_shift()) & mask(l.llc_bits),
                    p.llc % t.llcs_per_node()
                );
                assert_eq!(id >> l.package_shift(), p.node);
            }
        }
    }
}
