//! The fetched Debian sched_ext kernel booted by the VMM through its PVH
//! entry, checked from what the kernel itself prints on COM1 with
//! `earlyprintk`: banner, command line, e820 map, ACPI/NUMA and `CPU topo:`
//! lines for several topologies; and freeze/thaw of the running kernel with
//! a guest-memory read through the walker's page-table walk.
//!
//! On PVM hosts (no VT-x/AMD-V) a kernel only gets through early boot, and
//! slowly (~27 s to the banner, see the report in the `vmm` commit), so
//! each test boots once, stops the VM as soon as the lines it needs have
//! appeared, and gives up after [`BOOT_TIMEOUT`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ktstr_tests::{Need, cached_kernel_dir, skip};
use ktstr_vmm::layout::E820Type;
use ktstr_vmm::walker::kernel::image::KernelImage;
use ktstr_vmm::walker::translate::{Levels, PageTableRoot, TranslatorConfig};
use ktstr_vmm::walker::{GuestMem, Translator};
use ktstr_vmm::{Boot, ExitReason, Topology, Vm, VmConfig};

/// Longest a boot may take to print what a test needs.
const BOOT_TIMEOUT: Duration = Duration::from_secs(75);
/// Guest RAM of every boot here.
const MEMORY_MIB: u64 = 256;
const CMDLINE: &str = "earlyprintk=serial,ttyS0 console=ttyS0 nokaslr ktstr.test=vmm_boot";

/// One VM at a time: each keeps a host CPU busy, and on a 2-CPU host two
/// at once took as long in all as one after the other, but each boot
/// twice as long (too close to the timeout).
static SLOTS: Mutex<u32> = Mutex::new(1);
static SLOT_FREED: Condvar = Condvar::new();

struct Slot;
impl Slot {
    fn take() -> Slot {
        let mut n = SLOTS.lock().unwrap();
        while *n == 0 {
            n = SLOT_FREED.wait(n).unwrap();
        }
        *n -= 1;
        Slot
    }
}
impl Drop for Slot {
    fn drop(&mut self) {
        *SLOTS.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        SLOT_FREED.notify_one();
    }
}

/// The cached kernel's vmlinux, or `None` after reporting the skip.
fn vmlinux(test: &str) -> Option<PathBuf> {
    if let Err(e) = std::fs::File::open("/dev/kvm") {
        skip(test, Need::HwVirt, &format!("/dev/kvm: {e}"));
        return None;
    }
    let dir = match cached_kernel_dir() {
        Ok(d) => d,
        Err(e) => {
            skip(test, Need::Kernel, &e);
            return None;
        }
    };
    let p = if dir.is_dir() {
        dir.join("vmlinux")
    } else {
        dir
    };
    if !p.is_file() {
        skip(test, Need::Kernel, &format!("{} is missing", p.display()));
        return None;
    }
    Some(p)
}

/// Boot `topo`, wait until `done` holds for the console text (or the
/// timeout), and return the VM still running plus the text.
fn boot(config: VmConfig, done: impl Fn(&str) -> bool) -> (Vm, String, Slot) {
    let slot = Slot::take();
    let t = Instant::now();
    let vm = Vm::boot(config).unwrap();
    let ok = vm.console().wait_until(BOOT_TIMEOUT, &done);
    let text = vm.console().text();
    assert!(
        ok,
        "after {:?} the kernel had not printed what the test needs (VM: {:?});\n\
         console:\n{text}",
        t.elapsed(),
        vm.exit_reason()
    );
    eprintln!("booted to the needed lines in {:?}", t.elapsed());
    (vm, text, slot)
}

/// `CPU topo: <key>: <value>` lines.
fn topo_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once("CPU topo: ").map(|(_, r)| r))
        .filter_map(|r| r.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// `(first, last, is_ram)` of every `BIOS-e820:` line.
fn e820_lines(text: &str) -> Vec<(u64, u64, bool)> {
    text.lines()
        .filter_map(|l| l.split_once("BIOS-e820: [mem ").map(|(_, r)| r))
        .map(|r| {
            let (range, kind) = r.split_once(']').unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            let kind = kind.trim();
            let ram = kind == "usable" || kind == "System RAM";
            assert!(ram || kind.contains("reserved"), "unexpected type {kind:?}");
            (hex(a), hex(b), ram)
        })
        .collect()
}

fn has_topo_lines(t: &str) -> bool {
    t.contains("CPU topo: Allowing")
}

/// The checks every boot makes, against values derived here from the
/// topology's counts and the documented memory layout.
fn check_boot(vm: &Vm, kernel: &PathBuf, topo: &str, text: &str) {
    let release = KernelImage::open(kernel).unwrap().release().unwrap();
    assert!(
        text.contains(&format!("Linux version {release} (")),
        "no banner for {release}"
    );
    assert!(
        text.lines()
            .any(|l| l.ends_with(&format!("Command line: {CMDLINE}"))),
        "no command line"
    );
    // 256 MiB: RAM below 640 KiB, the legacy area reserved, RAM from 1 MiB.
    assert_eq!(
        e820_lines(text),
        [
            (0, 0x9_ffff, true),
            (0xa_0000, 0xf_ffff, false),
            (0x10_0000, (MEMORY_MIB << 20) - 1, true)
        ]
    );
    // ... which is the map the VMM says it gave.
    let given: Vec<(u64, u64, bool)> = vm
        .e820()
        .iter()
        .map(|e| (e.addr, e.addr + e.size - 1, e.kind == E820Type::Ram))
        .collect();
    assert_eq!(e820_lines(text), given);
    let nums: Vec<u32> = topo
        .split(|c: char| c.is_ascii_alphabetic())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let [n, l, c, t] = nums[..] else {
        panic!("{topo}")
    };
    let lines = topo_lines(text);
    let want = [
        ("Max. logical packages", n),
        ("Max. logical dies", l),
        ("Max. dies per package", l / n),
        ("Max. threads per core", t),
        ("Num. cores per package", l / n * c),
        ("Num. threads per package", l / n * c * t),
    ];
    for (key, v) in want {
        assert_eq!(
            lines.get(key).map(String::as_str),
            Some(v.to_string().as_str()),
            "{topo}: CPU topo: {key}; all: {lines:?}"
        );
    }
    assert_eq!(
        lines.get("Allowing").map(String::as_str),
        None,
        "(Allowing has no colon)"
    );
    assert!(
        text.contains(&format!(
            "CPU topo: Allowing {} present CPUs plus 0 hotplug CPUs",
            l * c * t
        )),
        "{topo}: present CPUs"
    );
}

fn kernel_vm(kernel: &PathBuf, topo: &str) -> VmConfig {
    let mut cfg = VmConfig::kernel(topo.parse::<Topology>().unwrap(), kernel, CMDLINE);
    cfg.memory_mib = MEMORY_MIB;
    cfg
}

#[test]
fn boots_1n1l2c1t() {
    let Some(k) = vmlinux("boots_1n1l2c1t") else {
        return;
    };
    let (vm, text, _slot) = boot(kernel_vm(&k, "1n1l2c1t"), has_topo_lines);
    assert_eq!(vm.stop(), ExitReason::HostRequest);
    check_boot(&vm, &k, "1n1l2c1t", &text);
    assert!(
        text.contains("No NUMA configuration found"),
        "one node: no SRAT"
    );
}

#[test]
fn boots_1n2l2c1t_with_an_initramfs() {
    let Some(k) = vmlinux("boots_1n2l2c1t_with_an_initramfs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd");
    let size = 10_000u64;
    std::fs::write(&initrd, vec![0x5a; size as usize]).unwrap();
    let mut cfg = kernel_vm(&k, "1n2l2c1t");
    if let Boot::Kernel { initramfs, .. } = &mut cfg.boot {
        *initramfs = Some(initrd);
    }
    let (vm, text, _slot) = boot(cfg, has_topo_lines);
    assert_eq!(vm.stop(), ExitReason::HostRequest);
    check_boot(&vm, &k, "1n2l2c1t", &text);
    // The initramfs sits page-aligned at the top of RAM.
    let line = text
        .lines()
        .find_map(|l| l.split_once("RAMDISK: [mem ").map(|(_, r)| r.to_string()))
        .expect("no RAMDISK line");
    let (a, b) = line.trim_end_matches(']').split_once('-').unwrap();
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let (start, end) = (hex(a), hex(b));
    let top = MEMORY_MIB << 20;
    assert_eq!(end, top - 1, "{line}");
    assert!(start <= top - size && start + 4096 > top - size, "{line}");
    assert_eq!(start % 4096, 0);
}

#[test]
fn boots_2n2l2c1t_with_numa_nodes() {
    let Some(k) = vmlinux("boots_2n2l2c1t_with_numa_nodes") else {
        return;
    };
    let (vm, text, _slot) = boot(kernel_vm(&k, "2n2l2c1t"), has_topo_lines);
    assert_eq!(vm.stop(), ExitReason::HostRequest);
    check_boot(&vm, &k, "2n2l2c1t", &text);
    // 256 MiB split evenly: node 0 below 128 MiB, node 1 above.
    assert!(text.contains("ACPI: SRAT: Node 0 PXM 0 [mem 0x00000000-0x07ffffff]"));
    assert!(text.contains("ACPI: SRAT: Node 1 PXM 1 [mem 0x08000000-0x0fffffff]"));
    assert!(text.contains("NODE_DATA(1) allocated"));
    assert!(!text.contains("No NUMA configuration found"));
    assert_eq!(
        topo_lines(&text)
            .get("Max. logical nodes")
            .map(String::as_str),
        Some("2")
    );
}

/// Virtual address of the first occurrence of `needle` in the loaded
/// image of `elf` (through its PT_LOAD program headers).
#[test]
fn boots_from_the_bzimage() {
    let Some(k) = vmlinux("boots_from_the_bzimage") else {
        return;
    };
    let bz = k.with_file_name("vmlinuz");
    if !bz.is_file() {
        skip(
            "boots_from_the_bzimage",
            Need::Kernel,
            "no vmlinuz beside vmlinux",
        );
        return;
    }
    let _slot = Slot::take();
    // The bzImage's payload is extracted to its vmlinux, loaded, and
    // entered at the PVH entry: the BSP soon runs in 64-bit kernel text.
    let vm = Vm::boot(kernel_vm(&bz, "1n1l1c1t")).unwrap();
    let t = Instant::now();
    loop {
        let (report, ()) = vm.freeze(|_| ()).unwrap();
        let bsp = report.vcpus[0];
        if bsp.rip >= 0xffff_ffff_8000_0000 {
            assert_ne!(bsp.efer & (1 << 10), 0, "long mode active");
            break;
        }
        assert!(
            t.elapsed() < BOOT_TIMEOUT,
            "BSP still at {:#x}: {:?}",
            bsp.rip,
            vm.exit_reason()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(vm.stop(), ExitReason::HostRequest);
}

fn elf_vaddr_of(elf: &[u8], needle: &[u8]) -> Option<u64> {
    let off = elf.windows(needle.len()).position(|w| w == needle)? as u64;
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    (0..phnum).find_map(|i| {
        let ph = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap());
        let (p_offset, p_vaddr, p_filesz) = (u64_at(ph + 8), u64_at(ph + 16), u64_at(ph + 32));
        (p_type == 1 && (p_offset..p_offset + p_filesz).contains(&off))
            .then(|| p_vaddr + (off - p_offset))
    })
}

#[test]
fn boots_1n1l2c2t_and_freezes_the_running_kernel() {
    let Some(k) = vmlinux("boots_1n1l2c2t_and_freezes_the_running_kernel") else {
        return;
    };
    // Freeze while the kernel is busy printing its early lines: from the
    // e820 map on; it prints its CPU topology a few seconds later.
    let mut cfg = kernel_vm(&k, "1n1l2c2t");
    cfg.park_timeout = Duration::from_secs(10);
    let (vm, text, _slot) = boot(cfg, |t| t.contains("BIOS-e820"));
    assert!(!has_topo_lines(&text), "the freezes come too late");

    // linux_banner as the kernel printed it, and where the image has it.
    let banner = text
        .lines()
        .find_map(|l| l.find("Linux version ").map(|i| format!("{}\n", &l[i..])))
        .unwrap();
    let image = KernelImage::open(&k).unwrap();
    let banner_va = elf_vaddr_of(image.elf_bytes(), banner.as_bytes())
        .expect("the printed banner is in the image");
    drop(image);

    let rounds = 100;
    let mut pauses = Vec::new();
    let mut kernel_rips = 0;
    let mut bsp_rips = std::collections::BTreeSet::new();
    for round in 0..rounds {
        let (report, read) = vm
            .freeze(|f| {
                let bsp = f.vcpus.iter().find(|v| v.index == 0)?;
                // Force a page-table walk from the parked CR3: no image or
                // direct-map shortcut.
                let mut tr = Translator::new(TranslatorConfig {
                    kernel_image_size: 0,
                    direct_map_size: 0,
                    root: Some(PageTableRoot {
                        cr3: bsp.cr3,
                        levels: if bsp.cr4 & (1 << 12) != 0 {
                            Levels::Five
                        } else {
                            Levels::Four
                        },
                        pti: false,
                    }),
                    ..TranslatorConfig::default()
                });
                let mut buf = vec![0u8; banner.len()];
                tr.read_virt(f.mem, banner_va, &mut buf).ok()?;
                let pa = tr.translate(f.mem, banner_va).ok()?;
                let mut direct = vec![0u8; banner.len()];
                f.mem.read(pa, &mut direct).ok()?;
                Some((buf, direct))
            })
            .unwrap_or_else(|e| panic!("round {round}: {e}; console:\n{}", vm.console().text()));
        assert!(!report.degraded(), "round {round}: {report:?}");
        assert_eq!(report.vcpus.len(), 4, "round {round}: every vCPU parks");
        assert!(
            report.clock_restored,
            "round {round}: kvmclock not restored"
        );
        let bsp = report.vcpus[0];
        assert_ne!(bsp.cr3, 0, "paging is on");
        bsp_rips.insert(bsp.rip);
        if bsp.rip >= 0xffff_ffff_8000_0000 {
            kernel_rips += 1;
        }
        let (via_walk, direct) = read.expect("banner readable through CR3");
        assert_eq!(String::from_utf8_lossy(&via_walk), banner, "round {round}");
        assert_eq!(via_walk, direct);
        pauses.push(report.pause);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(kernel_rips, rounds, "the BSP always parks in kernel text");
    // One long freeze: kvmclock is restored, so the kernel's clock (its
    // printk timestamps) does not jump by the frozen time. Lines before
    // kvm-clock is set up are all stamped 0; ACPI lines come after.
    assert!(
        vm.console()
            .wait_until(BOOT_TIMEOUT, |t| t.contains("ACPI: RSDP"))
    );
    let long = Duration::from_secs(5);
    let (report, at) = vm
        .freeze(|_| {
            let at = vm.console().total() as usize;
            std::thread::sleep(long);
            at
        })
        .unwrap();
    assert!(report.clock_restored);
    assert!(vm.console().wait_until(BOOT_TIMEOUT, |t| {
        t.get(at..).is_some_and(|r| r.contains("\n["))
    }));
    let text = vm.console().text();
    let (before, after) = text.split_at(at);
    let stamp = |l: &str| -> Option<f64> {
        l.trim_start()
            .strip_prefix('[')?
            .split_once(']')?
            .0
            .trim()
            .parse()
            .ok()
    };
    let last_before = before.lines().rev().find_map(stamp).unwrap();
    assert!(last_before > 0.0, "froze before kvm-clock was set up");
    let first_after = after.lines().skip(1).find_map(stamp).unwrap();
    eprintln!(
        "kernel time across a {long:?} freeze: {last_before} -> {first_after} ({:?} paused)",
        report.pause
    );
    assert!(
        first_after - last_before < long.as_secs_f64() - 1.0,
        "the guest counted the frozen time: {last_before} -> {first_after}"
    );

    // The kernel ran between freezes (the BSP parked in different places)
    // and goes on after them, to its topology lines.
    assert!(bsp_rips.len() > 1, "BSP always at {bsp_rips:?}");
    assert!(
        vm.console().wait_until(BOOT_TIMEOUT, has_topo_lines),
        "the kernel did not get on after the freezes: {:?}\n{}",
        vm.exit_reason(),
        vm.console().text()
    );
    check_boot(&vm, &k, "1n1l2c2t", &vm.console().text());
    pauses.sort();
    eprintln!(
        "pause window over {rounds} freezes of the running kernel (4 vCPUs): min {:?} median {:?} max {:?}",
        pauses[0],
        pauses[rounds / 2],
        pauses[rounds - 1]
    );
    let exit = vm.stop();
    assert!(
        matches!(
            exit,
            ExitReason::HostRequest | ExitReason::InternalError { .. }
        ),
        "{exit}"
    );
}
