//! ACPI tables for a [`Topology`]: RSDP -> XSDT -> FADT (hardware-reduced,
//! with sleep control/status and reset registers) -> DSDT (the two UARTs,
//! `\_S5_`), MADT (local APICs, I/O APIC, IRQ0 override), SRAT (CPU and
//! memory affinity per NUMA node) and SLIT (node distances).
//!
//! A hardware-reduced platform has no legacy PIC in Linux's eyes, so ISA
//! interrupts reach a driver only through a device's `_CRS`: a UART the
//! DSDT does not describe gets no working IRQ, and its interrupt-driven
//! output (everything but printk's polled console) never leaves the guest.
//! Power-off needs both `\_S5_` and the FADT's sleep registers.
//!
//! Built with the `acpi_tables` crate (rust-vmm). Its SRAT has no
//! processor-affinity entries and its MADT no x2APIC or override entries,
//! so those few fixed-layout structures are defined here and appended
//! through the crate's table builders, which keep length and checksum.

use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::slit::SLIT;
use acpi_tables::srat::MemoryAffinity;
use acpi_tables::{Aml, AmlSink, aml, fadt, rsdp::Rsdp, xsdt::XSDT};
use zerocopy::byteorder::{LE, U16, U32};
use zerocopy::{Immutable, IntoBytes};

use crate::devices::power::{
    RESET_CONTROL_PORT, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_PORT, SLEEP_STATUS_PORT,
};
use crate::devices::serial::{COM1_BASE, COM1_IRQ, COM2_BASE, COM2_IRQ, UART_PORTS};
use crate::topology::Topology;

/// OEM ID written into every table.
pub const OEM_ID: [u8; 6] = *b"KTSTR ";
/// OEM table ID written into every table.
pub const OEM_TABLE_ID: [u8; 8] = *b"KTSTRVMM";
/// Guest-physical address of the local APIC.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// Guest-physical address of the I/O APIC.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Distance from a node to another (SLIT); 10 is a node to itself.
pub const REMOTE_DISTANCE: u8 = 20;

/// MADT entry type 2: interrupt source override.
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    r#type: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: U32<LE>,
    flags: U16<LE>,
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// MADT entry type 4: local APIC NMI (LINT1 on every processor).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicNmi {
    r#type: u8,
    length: u8,
    uid: u8,
    flags: U16<LE>,
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// MADT entry type 9: processor local x2APIC (IDs above 254).
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalX2Apic {
    r#type: u8,
    length: u8,
    reserved: U16<LE>,
    x2apic_id: U32<LE>,
    flags: U32<LE>,
    uid: U32<LE>,
}

impl Aml for LocalX2Apic {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// SRAT entry type 0: processor local APIC affinity.
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LapicAffinity {
    r#type: u8,
    length: u8,
    proximity_lo: u8,
    apic_id: u8,
    flags: U32<LE>,
    sapic_eid: u8,
    proximity_hi: [u8; 3],
    clock_domain: U32<LE>,
}

/// SRAT entry type 2: processor local x2APIC affinity.
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct X2ApicAffinity {
    r#type: u8,
    length: u8,
    reserved: U16<LE>,
    proximity: U32<LE>,
    x2apic_id: U32<LE>,
    flags: U32<LE>,
    clock_domain: U32<LE>,
    reserved2: U32<LE>,
}

/// Highest APIC ID a (non-x2) local APIC entry may carry.
const MAX_XAPIC_ID: u32 = 254;

/// The tables, laid out for one place in guest memory.
#[derive(Debug, Clone)]
pub struct AcpiTables {
    /// Guest-physical address of `bytes[0]` (the RSDP).
    pub base: u64,
    /// All tables, back to back (each 16-byte aligned).
    pub bytes: Vec<u8>,
}

impl AcpiTables {
    /// Guest-physical address of the RSDP.
    pub fn rsdp_addr(&self) -> u64 {
        self.base
    }
}

fn aml_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn madt(topo: &Topology) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        1,
        LocalInterruptController::Address(LAPIC_ADDR),
    );
    for cpu in 0..topo.nr_cpus() {
        let Some(id) = topo.apic_id(cpu) else {
            continue;
        };
        match (u8::try_from(cpu), u8::try_from(id)) {
            (Ok(uid), Ok(id8)) if id <= MAX_XAPIC_ID => {
                madt.add_structure(ProcessorLocalApic::new(uid, id8, EnabledStatus::Enabled))
            }
            _ => madt.add_structure(LocalX2Apic {
                r#type: 9,
                length: 16,
                reserved: 0.into(),
                x2apic_id: id.into(),
                flags: 1.into(),
                uid: cpu.into(),
            }),
        }
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    // ISA IRQ 0 (the PIT) arrives on GSI 2, as on every PC.
    madt.add_structure(InterruptSourceOverride {
        r#type: 2,
        length: 10,
        bus: 0,
        source: 0,
        gsi: 2.into(),
        flags: 0.into(),
    });
    madt.add_structure(LocalApicNmi {
        r#type: 4,
        length: 6,
        uid: 0xff,
        flags: 0.into(),
        lint: 1,
    });
    aml_bytes(&madt)
}

/// `node_memory[n]` lists node `n`'s RAM as `(base, len)` ranges.
fn srat(topo: &Topology, node_memory: &[Vec<(u64, u64)>]) -> Vec<u8> {
    // Header, then a reserved u32 that must be 1 and a reserved u64.
    let mut srat = Sdt::new(*b"SRAT", 48, 3, OEM_ID, OEM_TABLE_ID, 1);
    srat.write_u32(36, 1);
    for cpu in 0..topo.nr_cpus() {
        let (Some(id), Some(place)) = (topo.apic_id(cpu), topo.place(cpu)) else {
            continue;
        };
        let pxm = place.node;
        match u8::try_from(id) {
            Ok(id8) if id <= MAX_XAPIC_ID => {
                let [p0, p1, p2, p3] = pxm.to_le_bytes();
                srat.append_slice(
                    LapicAffinity {
                        r#type: 0,
                        length: 16,
                        proximity_lo: p0,
                        apic_id: id8,
                        flags: 1.into(),
                        sapic_eid: 0,
                        proximity_hi: [p1, p2, p3],
                        clock_domain: 0.into(),
                    }
                    .as_bytes(),
                )
            }
            _ => srat.append_slice(
                X2ApicAffinity {
                    r#type: 2,
                    length: 24,
                    reserved: 0.into(),
                    proximity: pxm.into(),
                    x2apic_id: id.into(),
                    flags: 1.into(),
                    clock_domain: 0.into(),
                    reserved2: 0.into(),
                }
                .as_bytes(),
            ),
        }
    }
    for (node, ranges) in (0u32..).zip(node_memory) {
        for &(base, len) in ranges {
            srat.append_slice(&aml_bytes(&MemoryAffinity::new(node, base, len).enabled()));
        }
    }
    srat.as_slice().to_vec()
}

fn slit(topo: &Topology) -> Vec<u8> {
    let n = topo.numa_nodes;
    let mut slit = SLIT::new(OEM_ID, OEM_TABLE_ID, 1, n);
    for a in 0..n as usize {
        for b in (a + 1)..n as usize {
            slit.set_distance(a, b, REMOTE_DISTANCE);
        }
    }
    aml_bytes(&slit)
}

/// A PC UART (`PNP0501`) at `base` raising ISA IRQ `irq`, edge-triggered
/// and active high like every ISA interrupt.
fn uart(name: &str, uid: u8, base: u16, irq: u32) -> Vec<u8> {
    let hid = aml::EISAName::new("PNP0501");
    let io = aml::IO::new(base, base, 1, UART_PORTS as u8);
    let int = aml::Interrupt::new(true, true, false, false, irq);
    let crs = aml::ResourceTemplate::new(vec![&io, &int]);
    let hid = aml::Name::new("_HID".into(), &hid);
    let uid = aml::Name::new("_UID".into(), &uid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    aml_bytes(&aml::Device::new(name.into(), vec![&hid, &uid, &crs]))
}

fn dsdt() -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, 1);
    dsdt.append_slice(&uart("\\_SB_.COM1", 0, COM1_BASE, COM1_IRQ));
    dsdt.append_slice(&uart("\\_SB_.COM2", 1, COM2_BASE, COM2_IRQ));
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE]);
    dsdt.append_slice(&aml_bytes(&aml::Name::new("\\_S5_".into(), &s5)));
    dsdt.as_slice().to_vec()
}

/// A one-byte register in I/O space.
fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

fn align16(v: &mut Vec<u8>) {
    v.resize(v.len().next_multiple_of(16), 0);
}

/// Build the tables for `topo` to be placed at guest-physical `base`;
/// `node_memory[n]` lists node `n`'s RAM. The SRAT and SLIT are present
/// only with more than one node.
pub fn build(topo: &Topology, node_memory: &[Vec<(u64, u64)>], base: u64) -> AcpiTables {
    let mut bytes = vec![0u8; Rsdp::len()];
    align16(&mut bytes);
    let mut entries = Vec::new();
    let place = |bytes: &mut Vec<u8>, table: &[u8]| -> u64 {
        let addr = base + bytes.len() as u64;
        bytes.extend_from_slice(table);
        align16(bytes);
        addr
    };

    let dsdt_addr = place(&mut bytes, &dsdt());

    let mut fadt = fadt::FADTBuilder::new(OEM_ID, OEM_TABLE_ID, 1)
        .dsdt_64(dsdt_addr)
        .flag(fadt::Flags::HwReducedAcpi)
        .flag(fadt::Flags::ResetRegSup)
        .flag(fadt::Flags::PwrButton)
        .flag(fadt::Flags::SlpButton);
    // IA-PC boot architecture: no VGA, no MSI override; 8042 absent.
    fadt.iapc_boot_arch = (1u16 << 2).into();
    fadt.sleep_control_reg = io_register(SLEEP_CONTROL_PORT);
    fadt.sleep_status_reg = io_register(SLEEP_STATUS_PORT);
    fadt.reset_reg = io_register(RESET_CONTROL_PORT);
    fadt.reset_value = RESET_VALUE;
    entries.push(place(&mut bytes, &aml_bytes(&fadt.finalize())));
    entries.push(place(&mut bytes, &madt(topo)));
    if topo.numa_nodes > 1 {
        entries.push(place(&mut bytes, &srat(topo, node_memory)));
        entries.push(place(&mut bytes, &slit(topo)));
    }
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, 1);
    for e in entries {
        xsdt.add_entry(e);
    }
    let xsdt_addr = place(&mut bytes, &aml_bytes(&xsdt));
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    bytes[..rsdp.len()].copy_from_slice(&rsdp);
    AcpiTables { base, bytes }
}

#[cfg(test)]
mod tests {
    //! The tables are read back with a small independent parser that
    //! follows the ACPI spec's field offsets.
    use super::*;

    const BASE: u64 = 0xe_0000;

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }
    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// The table at guest address `addr`, checked: checksum, length.
    fn table(t: &AcpiTables, addr: u64) -> &[u8] {
        let off = (addr - t.base) as usize;
        let len = u32_at(&t.bytes, off + 4) as usize;
        let tb = &t.bytes[off..off + len];
        assert_eq!(sum(tb), 0, "{} checksum", String::from_utf8_lossy(&tb[..4]));
        tb
    }

    /// Signature -> table, through RSDP and XSDT.
    fn tables(t: &AcpiTables) -> Vec<([u8; 4], Vec<u8>)> {
        let rsdp = &t.bytes[..36];
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP v1 checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        assert_eq!(rsdp[15], 2, "revision");
        let xsdt = table(t, u64_at(rsdp, 24));
        assert_eq!(&xsdt[..4], b"XSDT");
        let n = (xsdt.len() - 36) / 8;
        (0..n)
            .map(|i| {
                let tb = table(t, u64_at(xsdt, 36 + 8 * i));
                (tb[..4].try_into().unwrap(), tb.to_vec())
            })
            .collect()
    }

    fn get<'a>(all: &'a [([u8; 4], Vec<u8>)], sig: &[u8; 4]) -> Option<&'a [u8]> {
        all.iter()
            .find(|(s, _)| s == sig)
            .map(|(_, b)| b.as_slice())
    }

    /// MADT/SRAT sub-structures: (type, bytes).
    fn subtables(tb: &[u8], start: usize) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut o = start;
        while o < tb.len() {
            let len = tb[o + 1] as usize;
            assert!(len >= 2);
            out.push((tb[o], &tb[o..o + len]));
            o += len;
        }
        assert_eq!(o, tb.len());
        out
    }

    #[test]
    fn one_node_has_fadt_dsdt_madt_and_no_numa_tables() {
        let topo: Topology = "1n1l2c2t".parse().unwrap();
        let t = build(&topo, &[vec![(0, 256 << 20)]], BASE);
        let all = tables(&t);
        let sigs: Vec<&[u8; 4]> = all.iter().map(|(s, _)| s).collect();
        assert_eq!(sigs, [b"FACP", b"APIC"]);
        let fadt = get(&all, b"FACP").unwrap();
        assert_ne!(u32_at(fadt, 112) & (1 << 20), 0, "HW_REDUCED_ACPI");
        let dsdt = table(&t, u64_at(fadt, 140));
        assert_eq!(&dsdt[..4], b"DSDT");
        let madt = get(&all, b"APIC").unwrap();
        assert_eq!(u32_at(madt, 36), LAPIC_ADDR);
        let subs = subtables(madt, 44);
        let lapics: Vec<(u8, u8, u32)> = subs
            .iter()
            .filter(|(k, _)| *k == 0)
            .map(|(_, b)| (b[2], b[3], u32_at(b, 4)))
            .collect();
        assert_eq!(lapics, [(0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1)]);
        let ioapic = subs.iter().find(|(k, _)| *k == 1).unwrap().1;
        assert_eq!((u32_at(ioapic, 4), u32_at(ioapic, 8)), (IOAPIC_ADDR, 0));
        let iso = subs.iter().find(|(k, _)| *k == 2).unwrap().1;
        assert_eq!((iso[3], u32_at(iso, 4), u16_at(iso, 8)), (0, 2, 0));
    }

    #[test]
    fn fadt_offers_s5_and_reset_through_io_registers() {
        let topo: Topology = "1n1l1c1t".parse().unwrap();
        let t = build(&topo, &[vec![(0, 256 << 20)]], BASE);
        let all = tables(&t);
        let fadt = get(&all, b"FACP").unwrap();
        assert_ne!(u32_at(fadt, 112) & (1 << 10), 0, "RESET_REG_SUP");
        // (GAS at offset: space, bit width, access size, address)
        let gas = |o: usize| (fadt[o], fadt[o + 1], fadt[o + 3], u64_at(fadt, o + 4));
        assert_eq!(
            gas(116),
            (1, 8, 1, u64::from(RESET_CONTROL_PORT)),
            "RESET_REG"
        );
        assert_eq!(fadt[128], RESET_VALUE);
        assert_eq!(
            gas(244),
            (1, 8, 1, u64::from(SLEEP_CONTROL_PORT)),
            "SLEEP_CONTROL_REG"
        );
        assert_eq!(
            gas(256),
            (1, 8, 1, u64::from(SLEEP_STATUS_PORT)),
            "SLEEP_STATUS_REG"
        );
    }

    /// The DSDT as an independent AML disassembler (ACPICA's iasl) reads
    /// it; `None` (with the reason printed) when iasl is not installed.
    fn disassembled_dsdt() -> Option<String> {
        if std::process::Command::new("iasl")
            .arg("-v")
            .output()
            .is_err()
        {
            ktstr_tests::skip(
                "acpi::disassembled_dsdt",
                ktstr_tests::Need::Tool,
                "iasl not installed (./setup.sh installs acpica-tools)",
            );
            return None;
        }
        let topo: Topology = "1n1l1c1t".parse().unwrap();
        let t = build(&topo, &[vec![(0, 256 << 20)]], BASE);
        let all = tables(&t);
        let fadt = get(&all, b"FACP").unwrap();
        let dsdt = table(&t, u64_at(fadt, 140));
        let dir = tempfile::tempdir().unwrap();
        let aml = dir.path().join("dsdt.aml");
        std::fs::write(&aml, dsdt).unwrap();
        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&aml)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "iasl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(std::fs::read_to_string(dir.path().join("dsdt.dsl")).unwrap())
    }

    #[test]
    fn dsdt_describes_both_uarts_and_s5() {
        let Some(dsl) = disassembled_dsdt() else {
            return;
        };
        // One line of ASL per statement, without iasl's `//` comments.
        let squeezed: String = dsl
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .flat_map(str::split_whitespace)
            .collect::<Vec<_>>()
            .join(" ");
        for (name, base, irq) in [
            ("COM1", "0x03F8", "0x00000004"),
            ("COM2", "0x02F8", "0x00000003"),
        ] {
            let dev = squeezed
                .split(&format!("Device (\\_SB.{name})"))
                .nth(1)
                .unwrap_or_else(|| panic!("no Device (\\_SB.{name}) in\n{dsl}"));
            let dev = dev.split("Device (").next().unwrap();
            for want in [
                "EisaId (\"PNP0501\")".to_string(),
                format!("IO (Decode16, {base}, {base}, 0x01, 0x08, )"),
                format!(
                    "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, ) {{ {irq}, }}"
                ),
            ] {
                assert!(dev.contains(&want), "{name}: no {want} in {dev}");
            }
        }
        assert!(
            squeezed.contains("Name (\\_S5, Package (0x01) { 0x05 })"),
            "{squeezed}"
        );
    }

    #[test]
    fn two_nodes_get_srat_and_slit() {
        let topo: Topology = "2n2l2c1t".parse().unwrap();
        let mem = [
            vec![(0, 0xa_0000), (0x10_0000, 0x7f0_0000)],
            vec![(0x800_0000, 0x800_0000)],
        ];
        let t = build(&topo, &mem, BASE);
        let all = tables(&t);
        let srat = get(&all, b"SRAT").unwrap();
        assert_eq!(u32_at(srat, 36), 1);
        let subs = subtables(srat, 48);
        // CPU 2 and 3 (APIC IDs 2, 3) are on node 1.
        let cpus: Vec<(u8, u32, u32)> = subs
            .iter()
            .filter(|(k, _)| *k == 0)
            .map(|(_, b)| {
                let pxm = u32::from_le_bytes([b[2], b[9], b[10], b[11]]);
                (b[3], pxm, u32_at(b, 4))
            })
            .collect();
        assert_eq!(cpus, [(0, 0, 1), (1, 0, 1), (2, 1, 1), (3, 1, 1)]);
        let mems: Vec<(u32, u64, u64, u32)> = subs
            .iter()
            .filter(|(k, _)| *k == 1)
            .map(|(_, b)| (u32_at(b, 2), u64_at(b, 8), u64_at(b, 16), u32_at(b, 28)))
            .collect();
        assert_eq!(
            mems,
            [
                (0, 0, 0xa_0000, 1),
                (0, 0x10_0000, 0x7f0_0000, 1),
                (1, 0x800_0000, 0x800_0000, 1)
            ]
        );
        let slit = get(&all, b"SLIT").unwrap();
        assert_eq!(u64_at(slit, 36), 2);
        assert_eq!(&slit[44..48], &[10, REMOTE_DISTANCE, REMOTE_DISTANCE, 10]);
    }

    #[test]
    fn x2apic_entries_past_254() {
        // 2 nodes x 1 LLC x 100 cores x 2 threads: node 1 starts at APIC ID 256.
        let topo: Topology = "2n2l100c2t".parse().unwrap();
        let t = build(&topo, &[vec![(0, 1 << 30)], vec![(1 << 30, 1 << 30)]], BASE);
        let all = tables(&t);
        let madt = get(&all, b"APIC").unwrap();
        let subs = subtables(madt, 44);
        assert_eq!(subs.iter().filter(|(k, _)| *k == 0).count(), 200);
        let x2: Vec<(u32, u32)> = subs
            .iter()
            .filter(|(k, _)| *k == 9)
            .map(|(_, b)| (u32_at(b, 4), u32_at(b, 12)))
            .collect();
        assert_eq!(x2.len(), 200);
        assert_eq!(x2[0], (256, 200));
        let srat = get(&all, b"SRAT").unwrap();
        let x2aff = subtables(srat, 48)
            .into_iter()
            .filter(|(k, _)| *k == 2)
            .map(|(_, b)| (u32_at(b, 4), u32_at(b, 8)))
            .next();
        assert_eq!(x2aff, Some((1, 256)));
    }
}
