//! kernel::image, kernel::ksyms and kernel::elfcore against the real fetched
//! kernel, the real compression tools, and a real QEMU guest-memory dump.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use goblin::elf::Elf;
use ktstr_tests::qemu::{Qemu, connect};
use ktstr_tests::{Need, cached_kernel_dir, have_tool, skip};
use ktstr_walker::GuestMem;
use ktstr_walker::kernel::elfcore::ElfCore;
use ktstr_walker::kernel::image::{
    Compression, DEFAULT_MAX_VMLINUX, ImageKind, KernelImage, extract_vmlinux,
};
use ktstr_walker::kernel::ksyms::{KsymsError, SymbolTable};

/// The cached kernel directory, or `None` after reporting the skip.
fn kernel_dir(test: &str) -> Option<PathBuf> {
    match cached_kernel_dir() {
        Ok(d) if d.join("vmlinuz").is_file() && d.join("vmlinux").is_file() => Some(d),
        Ok(d) => {
            skip(
                test,
                Need::Kernel,
                &format!("{} lacks vmlinuz or vmlinux", d.display()),
            );
            None
        }
        Err(e) => {
            skip(test, Need::Kernel, &e);
            None
        }
    }
}

/// The release a cache directory is named after.
fn dir_release(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn bzimage_extracts_to_the_independently_extracted_vmlinux() {
    let Some(dir) = kernel_dir("bzimage_extracts_to_the_independently_extracted_vmlinux") else {
        return;
    };
    // `ktstr kernel fetch` wrote `vmlinux` by running the `zstd` CLI on the
    // payload (not this code), so it is an independent reference.
    let reference = std::fs::read(dir.join("vmlinux")).unwrap();
    let bz = KernelImage::open(dir.join("vmlinuz")).unwrap();
    assert_eq!(
        bz.kind(),
        ImageKind::BzImage {
            compression: Compression::Zstd
        }
    );
    assert_eq!(bz.elf_bytes().len(), reference.len());
    assert!(
        bz.elf_bytes() == reference.as_slice(),
        "extracted vmlinux differs from the zstd CLI's"
    );
    assert_eq!(bz.release().as_deref(), Some(dir_release(&dir).as_str()));
    let entry = bz
        .pvh_entry()
        .expect("CONFIG_PVH kernel has a PHYS32_ENTRY note");
    // The entry is a physical address inside the loaded image (readelf -n
    // shows it; the image is linked at 16 MiB).
    assert!((0x100_0000..0x1000_0000).contains(&entry), "{entry:#x}");

    // The cache directory resolves like a build directory: to its vmlinux.
    let by_dir = KernelImage::open(&dir).unwrap();
    assert_eq!(by_dir.kind(), ImageKind::Elf);
    assert_eq!(by_dir.source(), dir.join("vmlinux"));
    assert_eq!(by_dir.release(), bz.release());
    assert_eq!(by_dir.pvh_entry(), Some(entry));
}

/// Payload formats as the kernel build makes them (arch/x86/boot/compressed
/// Makefile, scripts/xz_wrap.sh), wrapped into a copy of the real bzImage's
/// setup code and decompressor head: the result must be the input again.
#[test]
fn payloads_made_by_the_kernel_build_tools() {
    const TEST: &str = "payloads_made_by_the_kernel_build_tools";
    let Some(dir) = kernel_dir(TEST) else { return };
    let vmlinuz = std::fs::read(dir.join("vmlinuz")).unwrap();
    let vmlinux = std::fs::read(dir.join("vmlinux")).unwrap();
    // Real ELF bytes: the header plus the start of .text. lz4 gets more than
    // one 8 MiB legacy chunk.
    let tools: [(&str, &[&str], Compression, usize, bool); 5] = [
        (
            "zstd",
            &["-22", "--ultra", "-q", "-c"],
            Compression::Zstd,
            3 << 20,
            true,
        ),
        (
            "xz",
            &["--check=crc32", "--x86", "--lzma2=,dict=32MiB", "-c"],
            Compression::Xz,
            3 << 20,
            true,
        ),
        (
            "xz",
            &["--format=lzma", "-9", "-c"],
            Compression::Lzma,
            3 << 20,
            true,
        ),
        (
            "gzip",
            &["-n", "-9", "-c"],
            Compression::Gzip,
            9 << 20,
            false,
        ),
        ("lz4", &["-l", "-9", "-c"], Compression::Lz4, 9 << 20, true),
    ];
    for (tool, args, format, len, size_trailer) in tools {
        if !have_tool(tool) {
            skip(
                TEST,
                Need::Tool,
                &format!("{tool} is not installed (apt-get install zstd xz-utils lz4 gzip)"),
            );
            continue;
        }
        let input = &vmlinux[..len];
        let mut child = Command::new(tool)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let data = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "{tool} {args:?} failed");
        let mut payload = out.stdout;
        if size_trailer {
            payload.extend_from_slice(&(input.len() as u32).to_le_bytes());
        }
        let img = rewrap(&vmlinuz, &payload);
        let k = KernelImage::from_bytes(&img, DEFAULT_MAX_VMLINUX)
            .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(
            k.kind(),
            ImageKind::BzImage {
                compression: format
            }
        );
        assert!(
            k.elf_bytes() == input,
            "{format}: round trip through {tool} differs"
        );
    }
}

/// The real bzImage with its payload replaced by `payload`.
fn rewrap(vmlinuz: &[u8], payload: &[u8]) -> Vec<u8> {
    let setup_sects = match vmlinuz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let payload_offset = u32::from_le_bytes(vmlinuz[0x248..0x24c].try_into().unwrap()) as usize;
    let start = (setup_sects + 1) * 512 + payload_offset;
    let mut img = vmlinuz[..start].to_vec();
    img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    img.extend_from_slice(payload);
    img
}

#[test]
fn stripped_vmlinux_has_no_symtab() {
    let Some(dir) = kernel_dir("stripped_vmlinux_has_no_symtab") else {
        return;
    };
    let path = dir.join("vmlinux");
    let err = SymbolTable::open_elf(&path).unwrap_err();
    assert!(matches!(err, KsymsError::NoSymtab { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "no .symtab in {} (stripped vmlinux): pass --kallsyms or --system-map",
            path.display()
        )
    );
}

/// The host's own /proc/kallsyms is real kallsyms text: either it parses
/// with `_text` in the kernel image range, or kptr_restrict hides it and
/// that is what the error says.
#[test]
fn host_kallsyms() {
    match SymbolTable::open_kallsyms("/proc/kallsyms") {
        Ok(t) => {
            let text = t.require("_text").unwrap();
            assert!(text >= 0xffff_ffff_8000_0000, "_text at {text:#x}");
            assert!(t.len() > 10_000, "only {} symbols", t.len());
            let st = t.stats();
            assert!(st.skipped <= st.lines / 100, "{st:?}");
        }
        Err(KsymsError::AddressesHidden { count, .. }) => assert!(count > 10_000),
        Err(e) => panic!("{e}"),
    }
}

/// Virtual address and bytes of every `Linux version <digit>...` banner in
/// the vmlinux's `.rodata`, found through the section headers. (Since 6.1
/// there are two: a weak `linux_banner` from init/version.c and the one
/// init/version-timestamp.c links over it, which the kernel prints.)
fn banners_in_vmlinux(vmlinux: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let elf = Elf::parse(vmlinux).unwrap();
    let rodata = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".rodata"))
        .expect(".rodata");
    let bytes = &vmlinux[rodata.sh_offset as usize..][..rodata.sh_size as usize];
    let needle = b"Linux version ";
    (0..bytes.len() - needle.len())
        .filter(|&i| {
            &bytes[i..i + needle.len()] == needle && bytes[i + needle.len()].is_ascii_digit()
        })
        .map(|at| {
            let len = bytes[at..].iter().position(|&b| b == 0).unwrap();
            (rodata.sh_addr + at as u64, bytes[at..at + len].to_vec())
        })
        .collect()
}

/// Boot the cached kernel under QEMU TCG until it panics for want of a root
/// filesystem, dump guest memory over QMP, and read it back with ElfCore.
#[test]
fn qemu_dump_guest_memory_reads_back() {
    const TEST: &str = "qemu_dump_guest_memory_reads_back";
    if !have_tool("qemu-system-x86_64") {
        skip(
            TEST,
            Need::Tool,
            "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)",
        );
        return;
    }
    let Some(dir) = kernel_dir(TEST) else { return };
    let vmlinux_path = dir.join("vmlinux");
    let tmp = tempfile::tempdir().unwrap();
    let qmp_path = tmp.path().join("qmp.sock");
    let console = tmp.path().join("console.log");
    let core_path = tmp.path().join("guest.core");
    let start = Instant::now();
    // No panic=-1: the kernel must stay in its panic loop (not reboot, which
    // -no-reboot turns into QEMU exiting) until the dump is taken.
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-smp",
            "2",
            "-m",
            "256",
            "-no-reboot",
            "-display",
            "none",
        ])
        .args(["-monitor", "none", "-nodefaults"])
        .arg("-kernel")
        .arg(&vmlinux_path)
        .args(["-append", "console=ttyS0 nokaslr"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("qemu.stderr")).unwrap())
        .spawn()
        .unwrap();
    let mut qemu = Qemu(child);
    let deadline = start + Duration::from_secs(90);
    let mut qmp = connect(&qmp_path, deadline);

    // Wait for the end of boot: the panic over the missing root fs.
    let log = loop {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains("Unable to mount root fs") || log.contains("Kernel panic") {
            break log;
        }
        if let Some(status) = qemu.0.try_wait().unwrap() {
            let err = std::fs::read_to_string(tmp.path().join("qemu.stderr")).unwrap_or_default();
            panic!("QEMU exited ({status}) before the kernel panicked: {err}\nconsole:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "no panic within 90 s; console:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let booted = start.elapsed();
    qmp.execute("stop", serde_json::json!({})).unwrap();
    qmp.execute(
        "dump-guest-memory",
        serde_json::json!({ "paging": false, "protocol": format!("file:{}", core_path.display()) }),
    )
    .unwrap();
    drop(qemu);

    let core = ElfCore::open(&core_path).unwrap();
    // Every vCPU has registers, CR3 among them, and was in the kernel.
    assert_eq!(core.cpus().len(), 2, "{:?}", core.cpus());
    for cpu in core.cpus() {
        let cr3 = cpu
            .cr3
            .unwrap_or_else(|| panic!("no CR3 for vCPU {}", cpu.index));
        let pgd = cr3 & 0x000f_ffff_ffff_f000;
        assert!(
            pgd != 0 && pgd < 256 << 20,
            "vCPU {} CR3 {cr3:#x} is outside guest RAM",
            cpu.index
        );
        let mut page = [0u8; 4096];
        core.read(pgd, &mut page).unwrap();
        assert!(
            page.iter().any(|&b| b != 0),
            "vCPU {}: empty top-level page table",
            cpu.index
        );
        assert_eq!(cpu.cs & 3, 0, "vCPU {} not in ring 0", cpu.index);
        assert!(
            cpu.rip >= 0xffff_ffff_8100_0000,
            "vCPU {} rip {:#x}",
            cpu.index,
            cpu.rip
        );
    }
    let ram: u64 = core.segments().iter().map(|s| s.memsz).sum();
    assert!(
        (250 << 20..=257 << 20).contains(&ram),
        "{ram:#x} bytes of RAM in the dump"
    );

    // The banners, at their link-time addresses (nokaslr, phys_base 0),
    // hold what the vmlinux file has there, and one is what the console
    // printed.
    let vmlinux = std::fs::read(&vmlinux_path).unwrap();
    let banners = banners_in_vmlinux(&vmlinux);
    assert!(!banners.is_empty(), "no banner in .rodata");
    for (va, banner) in &banners {
        let pa = va - 0xffff_ffff_8000_0000;
        let mut got = vec![0u8; banner.len()];
        core.read(pa, &mut got).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(banner),
            "at {pa:#x}"
        );
        assert!(got.starts_with(format!("Linux version {} ", dir_release(&dir)).as_bytes()));
    }
    assert!(
        banners
            .iter()
            .any(|(_, b)| log.contains(String::from_utf8_lossy(b).trim_end())),
        "the console printed none of {banners:?}"
    );
    eprintln!(
        "{TEST}: kernel panicked after {booted:?}, all done after {:?}",
        start.elapsed()
    );
}

#[test]
fn extract_rejects_the_vmlinux_itself() {
    let Some(dir) = kernel_dir("extract_rejects_the_vmlinux_itself") else {
        return;
    };
    let vmlinux = std::fs::read(dir.join("vmlinux")).unwrap();
    let err = extract_vmlinux(&vmlinux).unwrap_err();
    assert!(err.to_string().contains("HdrS"), "{err}");
}
