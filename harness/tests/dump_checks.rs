//! `ktstr dump` refuses inputs that do not belong together, or that
//! cannot be dumped, with a typed error naming what differs: VMCOREINFO
//! of another kernel, a core of another kernel, a truncated core, a KASLR
//! core without a way to slide symbols, a vmlinux without BTF, a kernel
//! without sched_ext. The vmlinux files are real (the kernel cache); the
//! small cores are fixtures built here, the large one a real QEMU dump.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ktstr::dump::{DumpError, DumpOptions, dump};
use ktstr_tests::qemu::{Qemu, connect};
use ktstr_tests::{Need, have_tool, skip};
use ktstr_walker::discover::DiscoverError;
use ktstr_walker::kernel::elfcore::{CoreError, ElfCore};
use ktstr_walker::kernel::vmlinux::{Vmlinux, VmlinuxError};

/// An ELF64 core: a VMCOREINFO note (when given) and one PT_LOAD of
/// `mem` at physical address 0, no CPU notes.
fn core_file(vmcoreinfo: Option<&str>, mem: &[u8]) -> Vec<u8> {
    let mut note = Vec::new();
    if let Some(text) = vmcoreinfo {
        let name = b"VMCOREINFO\0";
        note.extend((name.len() as u32).to_le_bytes());
        note.extend((text.len() as u32).to_le_bytes());
        note.extend(0u32.to_le_bytes());
        note.extend(name);
        note.resize(note.len().next_multiple_of(4), 0);
        note.extend(text.as_bytes());
        note.resize(note.len().next_multiple_of(4), 0);
    }
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    f.extend_from_slice(&[0; 8]);
    let u16s =
        |f: &mut Vec<u8>, v: &[u16]| v.iter().for_each(|x| f.extend_from_slice(&x.to_le_bytes()));
    u16s(&mut f, &[4, 62]); // ET_CORE, EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    for v in [0u64, 64, 0] {
        f.extend_from_slice(&v.to_le_bytes()); // entry, phoff, shoff
    }
    f.extend_from_slice(&0u32.to_le_bytes());
    u16s(&mut f, &[64, 56, 2, 64, 0, 0]);
    let note_at = 4096u64;
    let mem_at = note_at + (note.len() as u64).next_multiple_of(4096).max(4096);
    for (kind, flags, off, len) in [
        (4u32, 4u32, note_at, note.len() as u64), // PT_NOTE
        (1, 6, mem_at, mem.len() as u64),         // PT_LOAD
    ] {
        f.extend_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(&flags.to_le_bytes());
        for v in [off, 0, 0, len, len, 4096] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    }
    f.resize(note_at as usize, 0);
    f.extend_from_slice(&note);
    f.resize(mem_at as usize, 0);
    f.extend_from_slice(mem);
    f
}

/// Every complete cached release directory, newest first, or `None` after
/// reporting the skip.
fn kernels(test: &str, need: usize) -> Option<Vec<PathBuf>> {
    let dirs = ktstr::cache::kernels_dir()
        .map(|k| ktstr::kernel::store::complete_releases(&k))
        .unwrap_or_default();
    if dirs.len() < need {
        skip(
            test,
            Need::Kernel,
            &format!(
                "{need} cached kernels needed, {} found (./setup.sh fetches three)",
                dirs.len()
            ),
        );
        return None;
    }
    let mut dirs = dirs;
    dirs.sort_by_key(|d| std::cmp::Reverse(ktstr::kernel::store::release_name(d)));
    Some(dirs)
}

fn release(dir: &Path) -> String {
    ktstr::kernel::store::release_name(dir).expect("a release directory")
}

fn dump_of(core: &Path, vmlinux: &Path) -> Result<ktstr_walker::render::Report, DumpError> {
    dump(&DumpOptions {
        core: core.to_path_buf(),
        vmlinux: vmlinux.display().to_string(),
        kallsyms: None,
        system_map: None,
        cr3: None,
    })
}

/// The vmlinux's build-id, as `readelf -n` prints it.
fn build_id(vmlinux: &Path) -> String {
    let out = Command::new("readelf")
        .arg("-n")
        .arg(vmlinux)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("the vmlinux has a GNU build-id note")
        .to_string()
}

#[test]
fn vmcoreinfo_of_another_kernel_is_named() {
    const TEST: &str = "vmcoreinfo_of_another_kernel_is_named";
    if !have_tool("readelf") {
        return skip(TEST, Need::Tool, "readelf not installed (binutils)");
    }
    let Some(dirs) = kernels(TEST, 1) else {
        return;
    };
    let dir = &dirs[0];
    let ours = release(dir);
    let tmp = tempfile::tempdir().unwrap();
    let core = tmp.path().join("core");
    let mem = vec![0u8; 1 << 20];

    std::fs::write(
        &core,
        core_file(Some("OSRELEASE=5.10.0-other\nPAGESIZE=4096\n"), &mem),
    )
    .unwrap();
    match dump_of(&core, dir) {
        Err(DumpError::Mismatch {
            what,
            core,
            vmlinux,
            ..
        }) => {
            assert_eq!(what, "VMCOREINFO OSRELEASE");
            assert_eq!(core, "5.10.0-other");
            assert_eq!(vmlinux, ours);
        }
        other => panic!("expected an OSRELEASE mismatch, got {other:?}"),
    }

    // The same release, another build.
    let id = build_id(&dir.join("vmlinux"));
    let other_id: String = id
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    std::fs::write(
        &core,
        core_file(
            Some(&format!("OSRELEASE={ours}\nBUILD-ID={other_id}\n")),
            &mem,
        ),
    )
    .unwrap();
    match dump_of(&core, dir) {
        Err(DumpError::Mismatch {
            what,
            core,
            vmlinux,
            ..
        }) => {
            assert_eq!(what, "VMCOREINFO BUILD-ID");
            assert_eq!((core, vmlinux), (other_id, id.clone()));
        }
        other => panic!("expected a BUILD-ID mismatch, got {other:?}"),
    }

    // Its own release and build-id pass these checks: what fails next is
    // the missing CR3 (no CPU notes, no KERNELOFFSET).
    std::fs::write(
        &core,
        core_file(Some(&format!("OSRELEASE={ours}\nBUILD-ID={id}\n")), &mem),
    )
    .unwrap();
    assert!(
        matches!(dump_of(&core, dir), Err(DumpError::NoTranslation)),
        "{:?}",
        dump_of(&core, dir)
    );
}

/// A core with no CR3 and no KERNELOFFSET: the link-time addresses cannot
/// be slid, and the error says what to pass instead of reading garbage.
#[test]
fn kaslr_core_without_symbols_says_what_to_pass() {
    let Some(dirs) = kernels("kaslr_core_without_symbols_says_what_to_pass", 1) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let core = tmp.path().join("core");
    std::fs::write(&core, core_file(None, &vec![0u8; 1 << 20])).unwrap();
    let err = dump_of(&core, &dirs[0]).unwrap_err();
    assert!(matches!(err, DumpError::NoTranslation), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("--cr3") && text.contains("--kallsyms"),
        "{text}"
    );
    // A KERNELOFFSET is the kernel's own word on its slide: the symbols
    // are slid by it, and this memory (all zeros) then holds no kernel.
    std::fs::write(
        &core,
        core_file(Some("KERNELOFFSET=1c000000\n"), &vec![0u8; 1 << 20]),
    )
    .unwrap();
    let err = dump_of(&core, &dirs[0]).unwrap_err();
    assert!(
        matches!(
            err,
            DumpError::Discover {
                source: DiscoverError::Implausible {
                    what: "phys_base",
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
}

/// `objcopy` a copy of the cached vmlinux with one change; `None` after
/// reporting the skip.
fn patched_vmlinux(test: &str, dir: &Path, out: &Path, args: &[&str]) -> Option<()> {
    if !have_tool("objcopy") {
        skip(test, Need::Tool, "objcopy not installed (binutils)");
        return None;
    }
    let ok = Command::new("objcopy")
        .args(args)
        .arg(dir.join("vmlinux"))
        .arg(out)
        .status()
        .unwrap()
        .success();
    assert!(ok, "objcopy {args:?}");
    Some(())
}

#[test]
fn vmlinux_without_btf_is_refused() {
    const TEST: &str = "vmlinux_without_btf_is_refused";
    let Some(dirs) = kernels(TEST, 1) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let vmlinux = tmp.path().join("vmlinux");
    let Some(()) = patched_vmlinux(TEST, &dirs[0], &vmlinux, &["--remove-section=.BTF"]) else {
        return;
    };
    let core = tmp.path().join("core");
    std::fs::write(&core, core_file(None, &[0u8; 4096])).unwrap();
    let err = dump_of(&core, &vmlinux).unwrap_err();
    assert!(
        matches!(err, DumpError::Vmlinux(VmlinuxError::Btf(_))),
        "{err:?}"
    );
}

/// A kernel without sched_ext, made from a real vmlinux by renaming
/// `sched_ext_entity` in its BTF strings (no sched_ext-less kernel is in
/// the cache): refused before the core is read.
#[test]
fn kernel_without_sched_ext_is_refused() {
    let Some(dirs) = kernels("kernel_without_sched_ext_is_refused", 1) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut elf = std::fs::read(dirs[0].join("vmlinux")).unwrap();
    let btf = ktstr_walker::kernel::btf::btf_section(&elf, "vmlinux").unwrap();
    let start = btf.as_ptr() as usize - elf.as_ptr() as usize;
    let len = btf.len();
    let name = b"\0sched_ext_entity\0";
    let at = elf[start..start + len]
        .windows(name.len())
        .position(|w| w == name)
        .expect("sched_ext_entity in the BTF strings");
    elf[start + at + 1] = b'X';
    let vmlinux = tmp.path().join("vmlinux");
    std::fs::write(&vmlinux, &elf).unwrap();
    let core = tmp.path().join("core");
    std::fs::write(&core, core_file(None, &[0u8; 4096])).unwrap();
    let err = dump_of(&core, &vmlinux).unwrap_err();
    assert!(matches!(err, DumpError::NoSchedExt { .. }), "{err:?}");

    // The same from a config that says so, next to the real vmlinux.
    let kdir = tmp.path().join("kernel");
    std::fs::create_dir(&kdir).unwrap();
    std::os::unix::fs::symlink(dirs[0].join("vmlinux"), kdir.join("vmlinux")).unwrap();
    std::fs::write(
        kdir.join("config"),
        "CONFIG_DEBUG_INFO_BTF=y\n# CONFIG_SCHED_CLASS_EXT is not set\n",
    )
    .unwrap();
    let err = dump_of(&core, &kdir).unwrap_err();
    assert!(matches!(err, DumpError::NoSchedExt { .. }), "{err:?}");
}

/// Boot `dir`'s kernel under QEMU TCG (KASLR on) until it panics for want
/// of a root filesystem, and dump its memory to `core`. Three vCPUs, of
/// which the kernel starts two (`nr_cpus=2`): the third's register note
/// is a reset state.
fn qemu_core(dir: &Path, tmp: &Path, core: &Path) {
    let qmp_path = tmp.join("qmp.sock");
    let console = tmp.join("console.log");
    let start = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-smp", "3", "-m", "256", "-no-reboot"])
        .args(["-display", "none", "-monitor", "none", "-nodefaults"])
        .arg("-kernel")
        .arg(dir.join("vmlinuz"))
        .args(["-append", "console=ttyS0 nr_cpus=2"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut qemu = Qemu(child);
    let deadline = start + Duration::from_secs(120);
    let mut qmp = connect(&qmp_path, deadline);
    loop {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains("Unable to mount root fs") || log.contains("Kernel panic") {
            break;
        }
        assert!(qemu.0.try_wait().unwrap().is_none(), "QEMU exited:\n{log}");
        assert!(Instant::now() < deadline, "no panic in 120 s:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    qmp.execute("stop", serde_json::json!({})).unwrap();
    qmp.execute(
        "dump-guest-memory",
        serde_json::json!({ "paging": false, "protocol": format!("file:{}", core.display()) }),
    )
    .unwrap();
}

/// A real core of one kernel (KASLR on): dumped with its own vmlinux, or
/// its own System.map, it reads; with another kernel's vmlinux the error
/// names the release the core holds; cut short, it is a truncated core.
#[test]
fn core_of_another_kernel_is_named() {
    const TEST: &str = "core_of_another_kernel_is_named";
    if !have_tool("qemu-system-x86_64") {
        return skip(TEST, Need::Tool, "qemu-system-x86_64 not installed");
    }
    let Some(dirs) = kernels(TEST, 2) else { return };
    let (theirs, ours) = (&dirs[1], &dirs[0]);
    let tmp = tempfile::tempdir().unwrap();
    let core = tmp.path().join("core");
    qemu_core(theirs, tmp.path(), &core);

    let own = dump_of(&core, theirs);
    assert!(own.is_ok(), "its own vmlinux: {:?}", own.err());
    assert_eq!(own.as_ref().unwrap().cpus.len(), 2, "nr_cpu_ids CPUs");
    // The registers of the two vCPUs that ran, from the core's notes.
    let vcpus = &own.as_ref().unwrap().vcpus;
    assert_eq!(vcpus.iter().map(|v| v.index).collect::<Vec<_>>(), [0, 1]);
    assert!(
        vcpus.iter().all(|v| v.in_kernel && v.rip.symbol.is_some()),
        "{vcpus:?}"
    );
    patched_cores_are_refused(&core, theirs, tmp.path());

    // A System.map of its link-time addresses is slid by what discovery
    // finds (KASLR is on), and reads the same kernel. Debian ships a stub
    // System.map: this one is written from the vmlinux's kallsyms tables.
    let map = tmp.path().join("System.map");
    {
        let v = Vmlinux::open(theirs.join("vmlinux")).unwrap();
        let mut text = String::new();
        v.kallsyms()
            .unwrap()
            .for_each(|kind, name, addr| {
                let name = String::from_utf8_lossy(name);
                text.push_str(&format!("{addr:016x} {} {name}\n", kind as char));
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        std::fs::write(&map, text).unwrap();
    }
    {
        let with_map = |vmlinux: &Path| {
            dump(&DumpOptions {
                core: core.clone(),
                vmlinux: vmlinux.display().to_string(),
                kallsyms: None,
                system_map: Some(map.clone()),
                cr3: None,
            })
        };
        let mapped = with_map(theirs).expect("its own System.map");
        assert_eq!(
            mapped.cpus.len(),
            own.as_ref().unwrap().cpus.len(),
            "the same CPUs through the System.map"
        );
        // Another kernel's vmlinux with this System.map: its banner is
        // not where the map says.
        let err = with_map(ours).unwrap_err();
        assert!(
            matches!(err, DumpError::Discover { .. } | DumpError::Mismatch { .. }),
            "{err:?}"
        );
    }

    match dump_of(&core, ours) {
        Err(DumpError::Discover {
            source: DiscoverError::BannerNotFound { .. },
            holds: Some(holds),
            vmlinux,
        }) => {
            assert!(
                holds.starts_with(&format!("Linux version {} ", release(theirs))),
                "{holds}"
            );
            assert!(
                vmlinux.starts_with(&format!("Linux version {} ", release(ours))),
                "{vmlinux}"
            );
        }
        other => panic!("expected the core's kernel to be named, got {other:?}"),
    }

    // Cut in half: its last segments point past the end of the file.
    let len = std::fs::metadata(&core).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&core).unwrap();
    f.set_len(len / 2).unwrap();
    let err = dump_of(&core, theirs).unwrap_err();
    assert!(
        matches!(err, DumpError::Core(CoreError::SegmentBeyondFile { .. })),
        "{err:?}"
    );
}

/// The core's file offset of kernel variable `name` (its runtime address
/// found as `ktstr dump` finds it).
fn file_offset_of(core: &Path, vmlinux: &Vmlinux<&[u8]>, name: &str, member: u64) -> u64 {
    use ktstr_walker::discover::{VcpuRegs, discover};
    let c = ElfCore::open(core).unwrap();
    let cpu = c.cpus().iter().find(|c| c.started()).unwrap();
    let regs = VcpuRegs {
        cr3: cpu.cr3.unwrap(),
        cr4: cpu.cr4.unwrap_or(0),
    };
    let found = discover(&c, regs, &vmlinux.image()).unwrap();
    let va = match name {
        "nr_cpu_ids" => found.symbols.nr_cpu_ids,
        "init_uts_ns" => found.symbols.init_uts_ns,
        _ => None,
    }
    .unwrap();
    let pa = found.translator().translate(&c, va + member).unwrap();
    let seg = c
        .segments()
        .iter()
        .find(|s| (s.paddr..s.paddr + s.filesz).contains(&pa))
        .unwrap();
    seg.file_offset + (pa - seg.paddr)
}

/// A copy of `core` with `bytes` written at `offset`.
fn patched(core: &Path, tmp: &Path, offset: u64, bytes: &[u8]) -> PathBuf {
    let mut data = std::fs::read(core).unwrap();
    let at = offset as usize;
    data[at..at + bytes.len()].copy_from_slice(bytes);
    let out = tmp.join(format!("patched-{offset:x}"));
    std::fs::write(&out, data).unwrap();
    out
}

/// Memory that disagrees with the vmlinux or with the register notes: a
/// `nr_cpu_ids` below the CPUs that ran is [`DumpError::CpuCount`]
/// (counting only the two started vCPUs of three), an `init_uts_ns`
/// release other than the vmlinux's is a mismatch that quotes both.
fn patched_cores_are_refused(core: &Path, dir: &Path, tmp: &Path) {
    let file = std::fs::read(dir.join("vmlinux")).unwrap();
    let vmlinux = Vmlinux::from_bytes(&file[..], "vmlinux").unwrap();

    let at = file_offset_of(core, &vmlinux, "nr_cpu_ids", 0);
    let one_cpu = patched(core, tmp, at, &1u32.to_le_bytes());
    match dump_of(&one_cpu, dir) {
        Err(DumpError::CpuCount { notes, nr_cpu_ids }) => {
            assert_eq!((notes, nr_cpu_ids), (2, 1));
        }
        other => panic!("expected CpuCount, got {other:?}"),
    }

    // `struct new_utsname`'s release is its third 65-byte field.
    let name = vmlinux
        .btf()
        .unwrap()
        .struct_members("uts_namespace")
        .into_iter()
        .find_map(|(m, off)| (m == "name").then_some(u64::from(off)))
        .unwrap();
    let at = file_offset_of(core, &vmlinux, "init_uts_ns", name + 130);
    let renamed = patched(core, tmp, at, b"9.9.9-other");
    match dump_of(&renamed, dir) {
        Err(DumpError::Mismatch {
            what,
            core,
            vmlinux,
            ..
        }) => {
            assert!(what.starts_with("init_uts_ns"), "{what}");
            assert!(core.contains("9.9.9-other"), "{core}");
            assert!(vmlinux.contains(&release(dir)), "{vmlinux}");
        }
        other => panic!("expected an init_uts_ns mismatch, got {other:?}"),
    }
}
