//! Full boots of the fetched kernel to a userspace /init, on hosts with
//! hardware virtualization (VT-x/AMD-V). Elsewhere (e.g. PVM, where the
//! kernel dies in KVM's emulator during early boot) they report themselves
//! skipped with the reason.
//!
//! The initramfs is made here: `/dev/console` and a tiny static `/init`
//! (hand-assembled x86-64) that prints a marker and reboots; with
//! `reboot=k` the kernel resets through the keyboard controller.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ktstr_tests::{Need, cached_kernel_dir, skip};
use ktstr_vmm::{Boot, ExitReason, Topology, Vm, VmConfig};

const MARKER: &[u8] = b"KTSTR_INIT_OK\n";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// A static x86-64 ELF that writes [`MARKER`] to fd 1 and then reboots
/// (`reboot`) or exits 0 (so the host can run it as a check).
fn init_elf(reboot: bool) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const CODE_OFF: u64 = 64 + 56;
    let mut code: Vec<u8> = Vec::new();
    code.extend([0xb8, 1, 0, 0, 0]); // mov eax, 1 (write)
    code.extend([0xbf, 1, 0, 0, 0]); // mov edi, 1
    code.extend([0x48, 0x8d, 0x35, 0, 0, 0, 0]); // lea rsi, [rip + msg]
    let lea_end = code.len();
    code.extend([0xba, MARKER.len() as u8, 0, 0, 0]); // mov edx, len
    code.extend([0x0f, 0x05]); // syscall
    if reboot {
        code.extend([0xb8, 169, 0, 0, 0]); // mov eax, 169 (reboot)
        code.extend([0xbf, 0xad, 0xde, 0xe1, 0xfe]); // mov edi, LINUX_REBOOT_MAGIC1
        code.extend([0xbe, 0x69, 0x19, 0x12, 0x28]); // mov esi, LINUX_REBOOT_MAGIC2
        code.extend([0xba, 0x67, 0x45, 0x23, 0x01]); // mov edx, LINUX_REBOOT_CMD_RESTART
    } else {
        code.extend([0xb8, 60, 0, 0, 0]); // mov eax, 60 (exit)
        code.extend([0x31, 0xff]); // xor edi, edi
    }
    code.extend([0x0f, 0x05]); // syscall
    code.extend([0xeb, 0xfe]); // 1: jmp 1b
    let msg = code.len();
    let disp = (msg - lea_end) as u32;
    code[lea_end - 4..lea_end].copy_from_slice(&disp.to_le_bytes());
    code.extend(MARKER);
    let size = CODE_OFF + code.len() as u64;

    let mut e = Vec::new();
    e.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0"); // 64-bit, LE, SysV
    e.extend(2u16.to_le_bytes()); // ET_EXEC
    e.extend(62u16.to_le_bytes()); // EM_X86_64
    e.extend(1u32.to_le_bytes()); // version
    e.extend((BASE + CODE_OFF).to_le_bytes()); // entry
    e.extend(64u64.to_le_bytes()); // phoff
    e.extend(0u64.to_le_bytes()); // shoff
    e.extend(0u32.to_le_bytes()); // flags
    e.extend(64u16.to_le_bytes()); // ehsize
    e.extend(56u16.to_le_bytes()); // phentsize
    e.extend(1u16.to_le_bytes()); // phnum
    e.extend([0u8; 6]); // shentsize, shnum, shstrndx
    e.extend(1u32.to_le_bytes()); // PT_LOAD
    e.extend(5u32.to_le_bytes()); // R+X
    e.extend(0u64.to_le_bytes()); // offset
    e.extend(BASE.to_le_bytes()); // vaddr
    e.extend(BASE.to_le_bytes()); // paddr
    e.extend(size.to_le_bytes()); // filesz
    e.extend(size.to_le_bytes()); // memsz
    e.extend(0x1000u64.to_le_bytes()); // align
    assert_eq!(e.len() as u64, CODE_OFF);
    e.extend(code);
    e
}

/// One cpio member: name, mode, rdev (major, minor), data.
type CpioEntry<'a> = (&'a str, u32, (u32, u32), &'a [u8]);

/// A newc cpio archive.
fn cpio(entries: &[CpioEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    let pad = |out: &mut Vec<u8>| out.resize(out.len().next_multiple_of(4), 0);
    let trailer = ("TRAILER!!!", 0, (0, 0), &[][..]);
    for (ino, (name, mode, (major, minor), data)) in
        (1u32..).zip(entries.iter().copied().chain([trailer]))
    {
        let fields = [
            ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            major,
            minor,
            name.len() as u32 + 1,
            0,
        ];
        out.extend(b"070701");
        for f in fields {
            out.extend(format!("{f:08x}").as_bytes());
        }
        out.extend(name.as_bytes());
        out.push(0);
        pad(&mut out);
        out.extend(data);
        pad(&mut out);
    }
    out
}

fn hw_virt() -> Result<(), String> {
    if ktstr_vmm::hardware_virt() {
        Ok(())
    } else {
        Err(
            "no VT-x/AMD-V (no vmx/svm in /proc/cpuinfo, or no /dev/kvm): a /dev/kvm \
             here is not hardware virtualization (e.g. PVM), where a kernel only \
             gets through early boot"
                .into(),
        )
    }
}

fn kernel() -> Result<PathBuf, String> {
    let dir = cached_kernel_dir()?;
    let p = if dir.is_dir() {
        dir.join("vmlinux")
    } else {
        dir
    };
    p.is_file()
        .then_some(p.clone())
        .ok_or_else(|| format!("{} is missing", p.display()))
}

#[test]
fn init_elf_runs_on_the_host() {
    // The exit variant: same layout as the guest's /init, safe to run.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("init");
    std::fs::write(&path, init_elf(false)).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = std::process::Command::new(&path).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, MARKER);
}

#[test]
fn an_elf_without_a_pvh_note_is_refused() {
    if let Err(e) = std::fs::File::open("/dev/kvm") {
        skip(
            "an_elf_without_a_pvh_note_is_refused",
            Need::HwVirt,
            &format!("/dev/kvm: {e}"),
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-kernel");
    std::fs::write(&path, init_elf(false)).unwrap();
    let topo: Topology = "1n1l1c1t".parse().unwrap();
    let err = Vm::boot(VmConfig::kernel(topo, &path, "console=ttyS0")).unwrap_err();
    assert!(
        matches!(&err, ktstr_vmm::VmError::NoPvhEntry(p) if *p == path),
        "{err}"
    );
    assert!(err.to_string().contains("no PVH entry point"), "{err}");
}

#[test]
fn full_boot_to_init_with_numa_and_smt() {
    let test = "full_boot_to_init_with_numa_and_smt";
    if let Err(why) = hw_virt() {
        skip(test, Need::HwVirt, &why);
        return;
    }
    let vmlinux = match kernel() {
        Ok(k) => k,
        Err(e) => {
            skip(test, Need::Kernel, &e);
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    let init = init_elf(true);
    std::fs::write(
        &initrd,
        cpio(&[
            ("dev", 0o040755, (0, 0), &[]),
            ("dev/console", 0o020600, (5, 1), &[]),
            ("init", 0o100755, (0, 0), &init),
        ]),
    )
    .unwrap();
    // KTSTR_FULL_BOOT_TOPOLOGY: fewer vCPUs where each is costly (the
    // nested tier runs L2's vCPUs on one emulated L1 CPU).
    let topo: Topology = std::env::var("KTSTR_FULL_BOOT_TOPOLOGY")
        .unwrap_or_else(|_| "2n2l2c2t".into())
        .parse()
        .unwrap();
    let nr_cpus = topo.nr_cpus() as usize;
    let nodes = match topo.numa_nodes {
        1 => "1 node".to_string(),
        n => format!("{n} nodes"),
    };
    let mut cfg = VmConfig::kernel(
        topo,
        &vmlinux,
        "console=ttyS0 reboot=k panic=-1 nokaslr rdinit=/init",
    );
    cfg.memory_mib = 512;
    if let Boot::Kernel { initramfs, .. } = &mut cfg.boot {
        *initramfs = Some(initrd);
    }
    let t = Instant::now();
    let vm = Vm::boot(cfg).unwrap();
    let seen = vm
        .console()
        .wait_until(BOOT_TIMEOUT, |t| t.contains("smp: Brought up"));
    assert!(seen, "no SMP bring-up:\n{}", vm.console().text());
    // Freeze the fully running SMP guest a few times.
    for round in 0..20 {
        let Ok((report, ())) = vm.freeze(|_| ()) else {
            break; // the guest may already have rebooted
        };
        assert!(!report.degraded(), "round {round}: {report:?}");
        assert_eq!(report.vcpus.len(), nr_cpus);
    }
    let exit = vm.wait(BOOT_TIMEOUT.saturating_sub(t.elapsed()));
    let text = vm.console().text();
    assert!(
        matches!(exit, ExitReason::Reset | ExitReason::TripleFault { .. }),
        "{exit}\n{text}"
    );
    let brought_up = format!("smp: Brought up {nodes}, {nr_cpus} CPUs");
    assert!(text.contains(&brought_up), "no {brought_up:?}:\n{text}");
    assert!(
        text.contains(std::str::from_utf8(MARKER).unwrap().trim()),
        "{text}"
    );
}
