//! `ktstr dump`: the sched_ext state of a kernel from an ELF core file
//! (QEMU's `dump-guest-memory`, or a kdump vmcore), after the fact. The
//! core and the vmlinux are enough: the walker finds the KASLR slide,
//! page tables and symbols in the core's memory ([`ktstr_walker::discover`]);
//! a kallsyms file or System.map, when given, replaces the vmlinux's
//! symbols (and is checked the same way).
//!
//! Core, vmlinux and symbols must come from one kernel (as crash and drgn
//! insist): the core's VMCOREINFO (`OSRELEASE`, `BUILD-ID`,
//! `KERNELOFFSET`, `SYMBOL(..)`), the `linux_banner` and `init_uts_ns` in its memory and its
//! CPU count are checked against the vmlinux, and a difference is an error
//! naming both sides, never a report of garbage.

use std::path::PathBuf;

use ktstr_walker::Symbols;
use ktstr_walker::discover::{
    DiscoverError, Discovered, KernelImage, VcpuRegs, discover, discover_from_symbols,
};
use ktstr_walker::embed::{Dumper, Kernel as WalkerKernel};
use ktstr_walker::kernel::elfcore::{CoreError, ElfCore, VmcoreInfo};
use ktstr_walker::kernel::ksyms::{KsymsError, SymbolTable};
use ktstr_walker::kernel::vmlinux::{Vmlinux, VmlinuxError};
use ktstr_walker::render::Report;

use crate::kernel::{Kernel, ResolveError};

/// Longest banner compared or quoted.
const BANNER_MAX: usize = 512;
/// The prefix every `linux_banner` starts with.
const BANNER_PREFIX: &[u8] = b"Linux version ";

/// Where a dump's inputs come from.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// The ELF core file.
    pub core: PathBuf,
    /// The kernel (vmlinux, bzImage, build or cache directory, release).
    pub vmlinux: String,
    /// `/proc/kallsyms` text of the same boot (optional: the vmlinux's own
    /// kallsyms tables are used otherwise).
    pub kallsyms: Option<PathBuf>,
    /// System.map of the same build (optional, as `kallsyms`).
    pub system_map: Option<PathBuf>,
    /// Page-table root, when the core's notes lack it.
    pub cr3: Option<u64>,
}

/// Why a core could not be dumped.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// `--vmlinux` names no usable kernel.
    #[error(transparent)]
    Kernel(#[from] ResolveError),
    /// The vmlinux cannot be read (not an ELF, no symbols, no BTF).
    #[error(transparent)]
    Vmlinux(#[from] VmlinuxError),
    /// The kernel has no sched_ext: there is nothing to dump.
    #[error(
        "{vmlinux} has no sched_ext ({why}): ktstr dumps sched_ext state only; give the vmlinux of a kernel built with CONFIG_SCHED_CLASS_EXT=y"
    )]
    NoSchedExt {
        /// The vmlinux.
        vmlinux: String,
        /// What says so.
        why: String,
    },
    /// The core file cannot be read.
    #[error(transparent)]
    Core(#[from] CoreError),
    /// A kallsyms or System.map file cannot be read.
    #[error(transparent)]
    Symbols(#[from] KsymsError),
    /// Core and vmlinux (or symbols) are not of the same kernel build.
    #[error(
        "the core and the vmlinux are not of the same kernel: {what} is {core:?} in the core but {vmlinux:?} in {source_name}; give the vmlinux (and symbols) of the kernel that wrote the core"
    )]
    Mismatch {
        /// What differs (`VMCOREINFO OSRELEASE`, `linux_banner`, ...).
        what: String,
        /// The core's side.
        core: String,
        /// The vmlinux's (or symbol file's) side.
        vmlinux: String,
        /// Which file the vmlinux side comes from.
        source_name: String,
    },
    /// The core holds more CPUs than the kernel has CPU ids.
    #[error(
        "the core has registers of {notes} CPUs but the kernel found in it has nr_cpu_ids={nr_cpu_ids}: the core, vmlinux and symbols do not belong together"
    )]
    CpuCount {
        /// CPU register notes in the core.
        notes: usize,
        /// `nr_cpu_ids` read from the core's memory.
        nr_cpu_ids: u32,
    },
    /// No way to translate addresses: link-time symbols on a core whose
    /// KASLR slide cannot be found.
    #[error(
        "the core's notes hold no CR3 (not a QEMU dump-guest-memory core?) and it has no VMCOREINFO KERNELOFFSET, so the vmlinux's or System.map's link-time addresses cannot be slid to where a KASLR kernel put them: pass --cr3 <page-table root>, or --kallsyms with the guest's /proc/kallsyms of the same boot"
    )]
    NoTranslation,
    /// The kernel was not found in the core.
    #[error("finding the kernel in the core: {source}{}", instead(holds.as_deref(), vmlinux))]
    Discover {
        /// What discovery said.
        source: DiscoverError,
        /// A `linux_banner` (or `OSRELEASE`) found in the core, if any.
        holds: Option<String>,
        /// The vmlinux's banner.
        vmlinux: String,
    },
}

/// What [`DumpError::Discover`] adds when the core names its kernel.
fn instead(holds: Option<&str>, vmlinux: &str) -> String {
    holds
        .map(|h| format!("; the core's memory holds \"{h}\", the vmlinux is \"{vmlinux}\""))
        .unwrap_or_default()
}

/// Read the core and render its sched_ext state.
pub fn dump(opts: &DumpOptions) -> Result<Report, DumpError> {
    let kernel = Kernel::resolve(&opts.vmlinux)?;
    let source = kernel.image.source().display().to_string();
    let vmlinux = Vmlinux::from_bytes(kernel.image.elf_bytes(), &source)?;
    let walker = walker_kernel(&kernel, &vmlinux)?;
    let core = ElfCore::open(&opts.core)?;
    let banner = vmlinux.banner();
    if let Some(info) = core.vmcoreinfo() {
        check_vmcoreinfo_ids(info, &vmlinux)?;
    }
    let runtime = match &opts.kallsyms {
        Some(p) => Some(SymbolTable::open_kallsyms(p)?.symbols()),
        None => None,
    };
    let system_map = match &opts.system_map {
        Some(p) => Some(SymbolTable::open_system_map(p)?.symbols()),
        None => None,
    };
    let link = system_map.as_ref().unwrap_or(vmlinux.link_symbols());
    // --cr3, else the first vCPU's CR3 in the core's notes.
    let cpu = core.cpus().iter().find(|c| c.cr3.is_some());
    let cr3 = opts.cr3.or(cpu.and_then(|c| c.cr3));
    let kernel_offset = core.vmcoreinfo().and_then(VmcoreInfo::kernel_offset);
    let found = match (cr3, runtime, kernel_offset) {
        (Some(cr3), runtime, _) => {
            let regs = VcpuRegs {
                cr3,
                cr4: cpu.and_then(|c| c.cr4).unwrap_or(0),
            };
            let image = KernelImage {
                symbols: link,
                banner,
            };
            let mut found =
                discover(&core, regs, &image).map_err(|source| not_found(source, &core, banner))?;
            // A kallsyms file of the same boot has the last word on symbols.
            if let Some(r) = runtime {
                found.symbols = r;
            }
            found
        }
        (None, Some(runtime), _) => {
            tracing::warn!(
                "no CR3 in the core or on the command line: reading the kernel image and direct map only"
            );
            discover_from_symbols(&core, &runtime)
                .map_err(|source| not_found(source, &core, banner))?
        }
        // The kernel's own word on its slide: link-time addresses moved by it.
        (None, None, Some(offset)) => {
            tracing::warn!(
                "no CR3 in the core or on the command line: link-time symbols slid by VMCOREINFO KERNELOFFSET={offset:#x}; reading the kernel image and direct map only"
            );
            let mut slid = *link;
            slid.slide(offset);
            discover_from_symbols(&core, &slid)
                .map_err(|source| not_found(source, &core, banner))?
        }
        (None, None, None) => return Err(DumpError::NoTranslation),
    };
    if let Some(info) = core.vmcoreinfo() {
        check_vmcoreinfo_addresses(info, &found, &source)?;
    }
    check_banner(&core, &found, banner, &source)?;
    check_uts(&core, &found, &vmlinux)?;
    // A vCPU the kernel never started (booted with `nr_cpus=`) still has
    // a note; one that ran the kernel needs a CPU id.
    let started = core.cpus().iter().filter(|c| c.started()).count();
    if started > found.nr_cpu_ids as usize && found.nr_cpu_ids != 0 {
        return Err(DumpError::CpuCount {
            notes: started,
            nr_cpu_ids: found.nr_cpu_ids,
        });
    }
    let mut dumper = Dumper::new(walker, found);
    Ok(dumper
        .capture_with(&core, &core.vcpus())
        .report_after_thaw(None, &core))
}

/// The walker's view of the kernel (layout, names, symbols, banner), or
/// why it has no sched_ext to dump.
fn walker_kernel(kernel: &Kernel, vmlinux: &Vmlinux<&[u8]>) -> Result<WalkerKernel, DumpError> {
    let no_scx = |why: String| DumpError::NoSchedExt {
        vmlinux: vmlinux.source().to_string(),
        why,
    };
    if let Some(c) = &kernel.config
        && c.get("CONFIG_SCHED_CLASS_EXT") != Some("y")
    {
        let path = kernel.config_path.as_ref().map(|p| p.display().to_string());
        return Err(no_scx(format!(
            "CONFIG_SCHED_CLASS_EXT is not y in {}",
            path.unwrap_or_default()
        )));
    }
    let mut w = WalkerKernel::from_vmlinux(vmlinux)?;
    if w.layout().entity.is_none() || w.layout().scx_rq.is_none() {
        return Err(no_scx(
            "its BTF has no struct sched_ext_entity or scx_rq".into(),
        ));
    }
    if let Some(hz) = kernel
        .config
        .as_ref()
        .and_then(|c| c.get("CONFIG_HZ"))
        .and_then(|v| v.parse().ok())
    {
        w = w.with_hz(hz);
    }
    Ok(w)
}

/// The release in a `Linux version <release> (...` banner.
fn banner_release(banner: &[u8]) -> Option<&str> {
    let rest = banner.strip_prefix(BANNER_PREFIX)?;
    let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    std::str::from_utf8(rest.get(..end)?).ok()
}

/// The vmlinux's GNU build-id note, as lowercase hex.
fn build_id(bytes: &[u8]) -> Option<String> {
    let elf = goblin::elf::Elf::parse_header(bytes).ok()?;
    let ctx = goblin::container::Ctx::new(
        goblin::container::Container::Big,
        goblin::container::Endian::Little,
    );
    let phdrs = goblin::elf::ProgramHeader::parse(
        bytes,
        elf.e_phoff as usize,
        usize::from(elf.e_phnum),
        ctx,
    )
    .ok()?;
    phdrs
        .iter()
        .filter(|p| p.p_type == goblin::elf::program_header::PT_NOTE)
        .filter_map(|p| {
            let start = usize::try_from(p.p_offset).ok()?;
            let len = usize::try_from(p.p_filesz).ok()?;
            bytes.get(start..start.checked_add(len)?)
        })
        .flat_map(notes)
        .find(|(name, kind, _)| *name == b"GNU" && *kind == goblin::elf::note::NT_GNU_BUILD_ID)
        .map(|(_, _, desc)| desc.iter().map(|b| format!("{b:02x}")).collect())
}

/// The (name, type, descriptor) of every note in an ELF note area.
fn notes(mut area: &[u8]) -> impl Iterator<Item = (&[u8], u32, &[u8])> {
    std::iter::from_fn(move || {
        let word = |a: &[u8], at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(a.get(at..at + 4)?.try_into().ok()?))
        };
        let namesz = word(area, 0)? as usize;
        let descsz = word(area, 4)? as usize;
        let kind = word(area, 8)?;
        let desc_at = 12 + namesz.next_multiple_of(4);
        let end = desc_at.checked_add(descsz.next_multiple_of(4))?;
        let name = area.get(12..12 + namesz)?;
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        let desc = area.get(desc_at..desc_at + descsz)?;
        area = area.get(end..).unwrap_or_default();
        Some((name, kind, desc))
    })
    .take(4096)
}

/// VMCOREINFO's `OSRELEASE` and `BUILD-ID` against the vmlinux: before
/// anything is read from the core's memory.
fn check_vmcoreinfo_ids(info: &VmcoreInfo, vmlinux: &Vmlinux<&[u8]>) -> Result<(), DumpError> {
    let mismatch = |what: &str, core: &str, ours: &str| DumpError::Mismatch {
        what: what.to_string(),
        core: core.to_string(),
        vmlinux: ours.to_string(),
        source_name: vmlinux.source().to_string(),
    };
    if let (Some(theirs), Some(ours)) = (info.osrelease(), banner_release(vmlinux.banner()))
        && theirs.trim() != ours
    {
        return Err(mismatch("VMCOREINFO OSRELEASE", theirs.trim(), ours));
    }
    if let (Some(theirs), Some(ours)) = (info.build_id(), build_id(vmlinux.bytes()))
        && !theirs.eq_ignore_ascii_case(&ours)
    {
        return Err(mismatch("VMCOREINFO BUILD-ID", theirs, &ours));
    }
    Ok(())
}

/// VMCOREINFO's `KERNELOFFSET` and `SYMBOL(..)`s against what discovery
/// found from the vmlinux's (or the given files') symbols.
fn check_vmcoreinfo_addresses(
    info: &VmcoreInfo,
    found: &Discovered,
    source: &str,
) -> Result<(), DumpError> {
    let mismatch = |what: String, core: u64, ours: u64| DumpError::Mismatch {
        what,
        core: format!("{core:#x}"),
        vmlinux: format!("{ours:#x}"),
        source_name: source.to_string(),
    };
    if let Some(offset) = info.kernel_offset().filter(|_| found.root.is_some())
        && offset != found.slide
    {
        return Err(mismatch(
            "the KASLR slide (VMCOREINFO KERNELOFFSET vs discovery)".into(),
            offset,
            found.slide,
        ));
    }
    let theirs = info.symbols();
    for name in Symbols::NAMES {
        if let (Some(a), Some(b)) = (theirs.get(name), found.symbols.get(name))
            && a != b
        {
            return Err(mismatch(format!("the address of {name}"), a, b));
        }
    }
    Ok(())
}

/// The `linux_banner` in the core's memory, where the symbols say it is,
/// against the vmlinux's.
fn check_banner(
    core: &ElfCore,
    found: &Discovered,
    banner: &[u8],
    source: &str,
) -> Result<(), DumpError> {
    let Some(va) = found.symbols.linux_banner else {
        return Ok(());
    };
    let want = banner
        .get(..banner.len().min(BANNER_MAX))
        .unwrap_or_default();
    let mut got = vec![0u8; want.len()];
    let read = found.translator().read_virt(core, va, &mut got);
    if read.is_err() || got != want {
        return Err(DumpError::Mismatch {
            what: format!("linux_banner (at {va:#x})"),
            core: match read {
                Ok(()) => quote(&got),
                Err(e) => format!("unreadable: {e}"),
            },
            vmlinux: quote(want),
            source_name: source.to_string(),
        });
    }
    Ok(())
}

/// `init_uts_ns`'s release and version (what `uname -rv` says) in the
/// core's memory against the vmlinux's initial data. Skipped when the
/// vmlinux lacks the symbol or its BTF the struct.
fn check_uts(
    core: &ElfCore,
    found: &Discovered,
    vmlinux: &Vmlinux<&[u8]>,
) -> Result<(), DumpError> {
    // `struct new_utsname` (UAPI): six 65-byte strings; release and
    // version are the third and fourth.
    const FIELD: u64 = 65;
    let (Some(link), Some(runtime)) = (
        vmlinux.link_symbols().init_uts_ns,
        found.symbols.init_uts_ns,
    ) else {
        return Ok(());
    };
    let Some(name) = vmlinux.btf().ok().and_then(|b| {
        b.struct_members("uts_namespace")
            .into_iter()
            .find_map(|(m, off)| (m == "name").then_some(u64::from(off)))
    }) else {
        return Ok(());
    };
    let at = name + 2 * FIELD;
    let Some(want) = vmlinux.bytes_at(link.wrapping_add(at), 2 * FIELD as usize) else {
        return Ok(());
    };
    let mut got = vec![0u8; want.len()];
    let va = runtime.wrapping_add(at);
    let read = found.translator().read_virt(core, va, &mut got);
    if read.is_ok() && got == want {
        return Ok(());
    }
    let text = |b: &[u8]| {
        let (release, version) = b.split_at(b.len().min(FIELD as usize));
        let cut = |s: &[u8]| quote(s.split(|c| *c == 0).next().unwrap_or_default());
        format!("{} {}", cut(release), cut(version))
    };
    Err(DumpError::Mismatch {
        what: format!("init_uts_ns release and version (at {va:#x})"),
        core: match read {
            Ok(()) => text(&got),
            Err(e) => format!("unreadable: {e}"),
        },
        vmlinux: text(want),
        source_name: vmlinux.source().to_string(),
    })
}

/// The error for a kernel not found in the core, with what the core holds
/// instead when that can be told.
fn not_found(source: DiscoverError, core: &ElfCore, banner: &[u8]) -> DumpError {
    let holds = core
        .vmcoreinfo()
        .and_then(|i| i.osrelease())
        .map(|r| format!("OSRELEASE={}", r.trim()))
        .or_else(|| banner_in(core).map(|b| quote(&b)));
    DumpError::Discover {
        source,
        holds,
        vmlinux: quote(banner),
    }
}

/// The first `Linux version <release> (...` text in the core's memory:
/// which kernel wrote it, when nothing else says.
fn banner_in(core: &ElfCore) -> Option<Vec<u8>> {
    core.segments().iter().find_map(|s| {
        let len = usize::try_from(s.memsz.min(s.filesz)).ok()?;
        let start = usize::try_from(s.file_offset).ok()?;
        let mem = core.bytes().get(start..start.checked_add(len)?)?;
        memchr::memmem::find_iter(mem, BANNER_PREFIX).find_map(|at| {
            let text = mem.get(at..)?;
            let text = text.get(..text.len().min(BANNER_MAX))?;
            let end = text
                .iter()
                .position(|&b| b == 0 || b == b'\n')
                .unwrap_or(text.len());
            let line = text.get(..end)?;
            // A banner, not a log line quoting the prefix: release, builder.
            (banner_release(line).is_some_and(|r| !r.is_empty()) && line.contains(&b'#'))
                .then(|| line.to_vec())
        })
    })
}

/// Bytes as text for a message (not valid UTF-8 is replaced).
fn quote(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_release_takes_the_word_after_the_prefix() {
        assert_eq!(
            banner_release(b"Linux version 7.3.4+deb13-cloud-amd64 (debian-kernel@) #1 SMP"),
            Some("7.3.4+deb13-cloud-amd64")
        );
        assert_eq!(banner_release(b"Linux versio 7"), None);
        assert_eq!(banner_release(b"Linux version "), Some(""));
    }

    #[test]
    fn notes_are_walked_and_bounded() {
        // Fixture: a GNU build-id note after an odd-sized one.
        let mut area = Vec::new();
        for (name, kind, desc) in [
            (&b"Linux\0"[..], 6u32, &b"abc"[..]),
            (b"GNU\0", 3, &[0xde, 0xad, 0xbe, 0xef]),
        ] {
            area.extend((name.len() as u32).to_le_bytes());
            area.extend((desc.len() as u32).to_le_bytes());
            area.extend(kind.to_le_bytes());
            area.extend(name);
            area.resize(area.len().next_multiple_of(4), 0);
            area.extend(desc);
            area.resize(area.len().next_multiple_of(4), 0);
        }
        let got: Vec<_> = notes(&area).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], (&b"GNU"[..], 3, &[0xde, 0xad, 0xbe, 0xef][..]));
        // A length past the end stops the walk instead of reading beyond.
        area[4] = 0xff;
        assert_eq!(notes(&area).count(), 0);
    }
}
