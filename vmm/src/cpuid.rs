//! CPUID leaves that describe a [`Topology`] to the guest: APIC IDs (leaf 1,
//! 0xB, 0x1F, AMD 0x8000001E), the package size (leaf 1, AMD 0x80000008)
//! and which CPUs share each cache (Intel leaf 4, AMD 0x8000001D).
//!
//! The input is what `KVM_GET_SUPPORTED_CPUID` returned; every topology leaf
//! is replaced, the rest is kept.

use kvm_bindings::{KVM_CPUID_FLAG_SIGNIFCANT_INDEX, kvm_cpuid_entry2};

use crate::topology::Topology;

/// Leaf 1 EDX: hyper-threading (more than one logical CPU per package).
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX: x2APIC.
const LEAF1_ECX_X2APIC: u32 = 1 << 21;
/// 0x80000001 ECX: topology extensions (0x8000001D/0x8000001E).
const EXT1_ECX_TOPOEXT: u32 = 1 << 22;
/// 0x80000001 ECX: CmpLegacy (core multi-processing legacy mode).
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;

/// Level types of leaves 0xB and 0x1F (ECX[15:8]).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;
const LEVEL_DIE: u32 = 5;

/// One cache the guest is told about.
#[derive(Debug, Clone, Copy)]
struct Cache {
    /// 1 data, 2 instruction, 3 unified.
    kind: u32,
    level: u32,
    ways: u32,
    line: u32,
    sets: u32,
}

/// L1d, L1i, L2 private to a core; L3 shared by an LLC's cores.
const CACHES: [Cache; 4] = [
    Cache {
        kind: 1,
        level: 1,
        ways: 8,
        line: 64,
        sets: 64,
    },
    Cache {
        kind: 2,
        level: 1,
        ways: 8,
        line: 64,
        sets: 64,
    },
    Cache {
        kind: 3,
        level: 2,
        ways: 8,
        line: 64,
        sets: 1024,
    },
    Cache {
        kind: 3,
        level: 3,
        ways: 16,
        line: 64,
        sets: 8192,
    },
];

fn entry(function: u32, index: u32, regs: [u32; 4], indexed: bool) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: if indexed {
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        } else {
            0
        },
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// The cache leaf value (leaf 4 / 0x8000001D layout) for `cache` on `topo`.
/// `cores_field` adds leaf 4's EAX[31:26] (APIC IDs per package - 1).
fn cache_regs(topo: &Topology, cache: &Cache, cores_field: bool) -> [u32; 4] {
    let l = topo.apic_layout();
    // APIC IDs that share the cache: a core's threads, or an LLC's.
    let sharing_bits = if cache.level == 3 {
        l.llc_shift()
    } else {
        l.core_shift()
    };
    let mut eax = cache.kind | cache.level << 5 | 1 << 8 | ((1u32 << sharing_bits) - 1) << 14;
    if cores_field {
        let cores_per_pkg = 1u32 << (l.package_shift() - l.core_shift());
        eax |= (cores_per_pkg.min(64) - 1) << 26;
    }
    let ebx = (cache.ways - 1) << 22 | (cache.line - 1);
    [eax, ebx, cache.sets - 1, 0]
}

/// The leaves for CPU `cpu` of `topo`, to be merged over the supported set.
/// `None` past the last CPU.
pub fn topology_leaves(topo: &Topology, cpu: u32) -> Option<Vec<kvm_cpuid_entry2>> {
    let id = topo.apic_id(cpu)?;
    let place = topo.place(cpu)?;
    let l = topo.apic_layout();
    let mut out = Vec::new();

    // Leaf 4: deterministic cache parameters, then a null subleaf.
    for (i, c) in (0u32..).zip(CACHES.iter()) {
        out.push(entry(4, i, cache_regs(topo, c, true), true));
    }
    out.push(entry(4, CACHES.len() as u32, [0; 4], true));

    // Leaf 0xB: SMT, then core (= the whole package), then invalid.
    let threads = topo.threads_per_core;
    let per_pkg = topo.cpus_per_node();
    out.push(entry(
        0xb,
        0,
        [l.core_shift(), threads, LEVEL_SMT << 8, id],
        true,
    ));
    out.push(entry(
        0xb,
        1,
        [l.package_shift(), per_pkg, 1 | LEVEL_CORE << 8, id],
        true,
    ));
    out.push(entry(0xb, 2, [0, 0, 2, id], true));

    // Leaf 0x1F: SMT, core (up to the LLC), die (= LLC, up to the package).
    out.push(entry(
        0x1f,
        0,
        [l.core_shift(), threads, LEVEL_SMT << 8, id],
        true,
    ));
    out.push(entry(
        0x1f,
        1,
        [l.llc_shift(), topo.cpus_per_llc(), 1 | LEVEL_CORE << 8, id],
        true,
    ));
    out.push(entry(
        0x1f,
        2,
        [l.package_shift(), per_pkg, 2 | LEVEL_DIE << 8, id],
        true,
    ));
    out.push(entry(0x1f, 3, [0, 0, 3, id], true));

    // AMD 0x8000001D: cache topology, same layout as leaf 4 minus EAX[31:26].
    for (i, c) in (0u32..).zip(CACHES.iter()) {
        out.push(entry(0x8000_001d, i, cache_regs(topo, c, false), true));
    }
    out.push(entry(0x8000_001d, CACHES.len() as u32, [0; 4], true));

    // AMD 0x8000001E: extended APIC ID, core (compute unit) id, node id.
    // Nodes per processor (ECX[10:8]) is 0, one: every NUMA node is a
    // package of its own in leaves 0xB/0x1F and 0x80000008. Saying more
    // makes Linux divide the package's cores among them, and with fewer
    // cores than nodes it divides by zero before the console is up
    // (cpu_topology_fixup_amd, families before 0x17).
    let core_id = (id >> l.core_shift()) & 0xff;
    out.push(entry(
        0x8000_001e,
        0,
        [
            id,
            core_id | (threads - 1).min(0xff) << 8,
            place.node & 0xff,
            0,
        ],
        false,
    ));
    Some(out)
}

/// Merge `topo`'s leaves for CPU `cpu` into `supported` (what
/// `KVM_GET_SUPPORTED_CPUID` returned), fixing up leaf 1, 0x80000001 and
/// 0x80000008 and raising the maximum leaves so the new ones are visible.
/// `None` past the last CPU.
pub fn for_cpu(
    supported: &[kvm_cpuid_entry2],
    topo: &Topology,
    cpu: u32,
) -> Option<Vec<kvm_cpuid_entry2>> {
    let leaves = topology_leaves(topo, cpu)?;
    let id = topo.apic_id(cpu)?;
    let l = topo.apic_layout();
    let replaced = |f: u32| matches!(f, 4 | 0xb | 0x1f | 0x8000_001d | 0x8000_001e);
    let mut out: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| !replaced(e.function))
        .copied()
        .collect();
    let logical_per_pkg = (1u32 << l.package_shift()).min(0x80);
    for e in &mut out {
        match e.function {
            0 => e.eax = e.eax.max(0x1f),
            1 => {
                e.ebx = (e.ebx & 0xffff) | (logical_per_pkg & 0xff) << 16 | (id & 0xff) << 24;
                e.ecx |= LEAF1_ECX_X2APIC;
                if topo.cpus_per_node() > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0x8000_0000 => e.eax = e.eax.max(0x8000_001e),
            0x8000_0001 => {
                e.ecx |= EXT1_ECX_TOPOEXT;
                e.ecx &= !EXT1_ECX_CMP_LEGACY;
            }
            0x8000_0008 => {
                let nc = topo.cpus_per_node().min(256) - 1;
                e.ecx = (e.ecx & !0xf0ff) | nc | l.package_shift().min(15) << 12;
            }
            _ => {}
        }
    }
    out.extend(leaves);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap_or_else(|| panic!("no leaf {f:#x}.{i}"))
    }

    fn base() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, [0xd, 0, 0, 0], false),
            entry(1, 0, [0x800f12, 0x0000_0800, 0, 0], false),
            entry(4, 0, [0xdead; 4], true),
            entry(0xb, 0, [0xdead; 4], true),
            entry(0x8000_0000, 0, [0x8000_0008, 0, 0, 0], false),
            entry(0x8000_0001, 0, [0, 0, 0x2, 0], false),
            entry(0x8000_0008, 0, [0x3030, 0, 0x0000_f0ff, 0], false),
        ]
    }

    #[test]
    fn leaf_0xb_and_0x1f_describe_1n2l4c2t() {
        let t: Topology = "1n2l4c2t".parse().unwrap();
        // CPU 11: LLC 1, core 1, thread 1 -> APIC ID 1 | 1<<1 | 1<<3 = 0xb.
        let v = for_cpu(&base(), &t, 11).unwrap();
        assert_eq!(v.iter().filter(|e| e.function == 0xb).count(), 3);
        let smt = find(&v, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (1, 2, 1, 0xb));
        let core = find(&v, 0xb, 1);
        // 1 thread bit + 2 core bits + 1 LLC bit; 16 CPUs in the package.
        assert_eq!(
            (core.eax, core.ebx, core.ecx, core.edx),
            (4, 16, 0x201, 0xb)
        );
        assert_eq!(find(&v, 0xb, 2).ecx >> 8, 0, "terminating level");
        let c = find(&v, 0x1f, 1);
        assert_eq!((c.eax, c.ebx, c.ecx >> 8), (3, 8, LEVEL_CORE));
        let die = find(&v, 0x1f, 2);
        assert_eq!((die.eax, die.ebx, die.ecx >> 8, die.edx), (4, 16, 5, 0xb));
        assert_eq!(find(&v, 0, 0).eax, 0x1f, "max leaf raised");
    }

    #[test]
    fn leaf_1_has_apic_id_and_package_size() {
        let t: Topology = "2n2l2c2t".parse().unwrap();
        let v = for_cpu(&base(), &t, 5).unwrap();
        let l1 = find(&v, 1, 0);
        // CPU 5: node 1, core 0, thread 1 -> APIC ID 0b101.
        assert_eq!(l1.ebx >> 24, 5);
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical CPUs per package");
        assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        let one: Topology = "1n1l1c1t".parse().unwrap();
        let v = for_cpu(&base(), &one, 0).unwrap();
        assert_eq!(find(&v, 1, 0).edx & LEAF1_EDX_HTT, 0);
        assert!(for_cpu(&base(), &one, 1).is_none());
    }

    #[test]
    fn leaf_4_shares_l3_per_llc_and_l2_per_core() {
        let t: Topology = "1n2l3c2t".parse().unwrap();
        let v = for_cpu(&base(), &t, 0).unwrap();
        let sharing = |e: kvm_cpuid_entry2| ((e.eax >> 14) & 0xfff) + 1;
        let l2 = find(&v, 4, 2);
        assert_eq!((l2.eax >> 5) & 7, 2);
        assert_eq!(sharing(l2), 2, "a core's two threads");
        let l3 = find(&v, 4, 3);
        assert_eq!((l3.eax >> 5) & 7, 3);
        // 3 cores need 2 bits, 2 threads 1 bit: 8 APIC IDs per LLC.
        assert_eq!(sharing(l3), 8);
        assert_eq!(find(&v, 4, 4).eax & 0x1f, 0, "null subleaf ends the list");
        assert_eq!(sharing(find(&v, 0x8000_001d, 3)), 8);
        // Sizes: ways * line * sets.
        assert_eq!(
            ((l3.ebx >> 22) + 1) * ((l3.ebx & 0xfff) + 1) * (l3.ecx + 1),
            8 << 20
        );
        assert!(v.iter().all(|e| !(e.function == 4 && e.eax == 0xdead)));
    }

    #[test]
    fn amd_leaves_carry_node_and_package() {
        let t: Topology = "2n2l2c1t".parse().unwrap();
        let v = for_cpu(&base(), &t, 3).unwrap();
        let e = find(&v, 0x8000_001e, 0);
        // CPU 3: node 1, core 1 -> APIC ID 0b11.
        assert_eq!(e.eax, 3);
        assert_eq!(e.ecx & 0xff, 1, "node id");
        assert_eq!((e.ecx >> 8) & 7, 0, "one node per processor (package)");
        let e8 = find(&v, 0x8000_0008, 0);
        assert_eq!(e8.ecx & 0xff, 1, "two CPUs per package");
        assert_eq!((e8.ecx >> 12) & 0xf, 1);
        assert_ne!(find(&v, 0x8000_0001, 0).ecx & EXT1_ECX_TOPOEXT, 0);
        assert_eq!(find(&v, 0x8000_0000, 0).eax, 0x8000_001e);
    }
}
