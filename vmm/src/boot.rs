//! What the guest starts with: a Linux kernel entered at its PVH entry
//! point (command line, initramfs as the first PVH module, e820 map and
//! RSDP in `hvm_start_info`), or raw 32-bit code for tests; and the GDT
//! both enter with.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::GuestAddress;

use crate::layout::{self, E820Entry};
use crate::vm::VmError;
use crate::vstate::memory::VmMemory;
use crate::walker::kernel::image::KernelImage;

/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Where [`Boot::Code`] is loaded and every vCPU starts.
pub const CODE_ADDR: u64 = 0x10_0000;
/// Largest [`Boot::Code`].
pub const CODE_MAX: usize = 0x10_0000;
/// [`Boot::Code`]: vCPU `i` starts with `EBX = COUNTER_ADDR + 64 * i`, a
/// cache line of its own for a test loop to count in.
pub const COUNTER_ADDR: u64 = 0x20_0000;

/// The GDT at [`layout::GDT_ADDR`]: null, flat 32-bit code (0x08) and data
/// (0x10), and a TSS (0x18), as the PVH entry requires.
pub(crate) const GDT: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x0000_8b00_0000_0067,
];

/// What the VM runs.
#[derive(Debug, Clone)]
pub enum Boot {
    /// A Linux kernel (bzImage, vmlinux ELF or build directory) entered at
    /// its PVH entry point.
    Kernel {
        /// The image.
        image: PathBuf,
        /// Kernel command line.
        cmdline: String,
        /// Initramfs, passed as the first PVH module.
        initramfs: Option<PathBuf>,
    },
    /// Raw 32-bit code for tests and benchmarks: loaded at [`CODE_ADDR`],
    /// every vCPU starts there in flat protected mode (paging off) with
    /// `EBX` = its counter at [`COUNTER_ADDR`] and `ESI` = its index.
    Code(Vec<u8>),
}

/// Where and how the vCPUs start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    /// First instruction.
    pub rip: u64,
    /// Every vCPU starts there ([`Boot::Code`]); else only the first, and
    /// the kernel brings up the others.
    pub all_vcpus: bool,
}

impl Entry {
    /// `(EBX, ESI)` for vCPU `cpu`.
    pub fn registers(&self, cpu: u32) -> (u64, u64) {
        if self.all_vcpus {
            (COUNTER_ADDR + 64 * u64::from(cpu), u64::from(cpu))
        } else {
            (layout::START_INFO_ADDR, 0)
        }
    }
}

/// Write the GDT and what `boot` runs into guest memory.
pub(crate) fn load(mem: &VmMemory, boot: &Boot, e820: &[E820Entry]) -> Result<Entry, VmError> {
    let gdt: Vec<u8> = GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write(layout::GDT_ADDR, &gdt)?;
    match boot {
        Boot::Kernel {
            image,
            cmdline,
            initramfs,
        } => Ok(Entry {
            rip: load_kernel(mem, image, cmdline, initramfs.as_deref(), e820)?,
            all_vcpus: false,
        }),
        Boot::Code(code) => {
            if code.len() > CODE_MAX {
                return Err(VmError::CodeTooBig(code.len()));
            }
            mem.write(CODE_ADDR, code)?;
            Ok(Entry {
                rip: CODE_ADDR,
                all_vcpus: true,
            })
        }
    }
}

fn check_cmdline(cmdline: &str) -> Result<Vec<u8>, VmError> {
    if cmdline.len() + 1 > layout::CMDLINE_MAX {
        return Err(VmError::Cmdline(format!(
            "{} bytes, more than {}",
            cmdline.len() + 1,
            layout::CMDLINE_MAX
        )));
    }
    if cmdline.contains('\0') {
        return Err(VmError::Cmdline("contains a NUL byte".into()));
    }
    let mut cl = cmdline.as_bytes().to_vec();
    cl.push(0);
    Ok(cl)
}

/// Place the initramfs at the top of low RAM, above the kernel; returns
/// its PVH module entry.
fn load_initramfs(
    mem: &VmMemory,
    path: &Path,
    kernel_end: u64,
) -> Result<hvm_modlist_entry, VmError> {
    let data = std::fs::read(path).map_err(|source| VmError::Initramfs {
        path: path.to_path_buf(),
        source,
    })?;
    let top = mem.layout().low_ram_end();
    let size = data.len() as u64;
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end)
        .ok_or(VmError::InitramfsTooBig {
            size,
            kernel_end,
            top,
        })?;
    mem.write(addr, &data)?;
    Ok(hvm_modlist_entry {
        paddr: addr,
        size,
        cmdline_paddr: 0,
        reserved: 0,
    })
}

/// Load the kernel, command line, initramfs and PVH start info; returns
/// the entry point.
fn load_kernel(
    mem: &VmMemory,
    image: &Path,
    cmdline: &str,
    initramfs: Option<&Path>,
    e820: &[E820Entry],
) -> Result<u64, VmError> {
    let cmdline = check_cmdline(cmdline)?;
    let kernel = KernelImage::open(image)?;
    let loaded = Elf::load(
        mem.guest_memory(),
        None,
        &mut Cursor::new(kernel.elf_bytes()),
        Some(GuestAddress(layout::HIGH_RAM_START)),
    )
    .map_err(VmError::Load)?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => a.0,
        _ => kernel
            .pvh_entry()
            .map(u64::from)
            .ok_or_else(|| VmError::NoPvhEntry(image.to_path_buf()))?,
    };
    mem.write(layout::CMDLINE_ADDR, &cmdline)?;

    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_ADDR,
        rsdp_paddr: layout::ACPI_ADDR,
        memmap_paddr: layout::MEMMAP_ADDR,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();
    let modules = match initramfs {
        Some(path) => vec![load_initramfs(mem, path, loaded.kernel_end)?],
        None => Vec::new(),
    };
    if !modules.is_empty() {
        start_info.nr_modules = modules.len() as u32;
        start_info.modlist_paddr = layout::MODLIST_ADDR;
    }
    let mut params = BootParams::new(&start_info, GuestAddress(layout::START_INFO_ADDR));
    params.set_sections(&memmap, GuestAddress(layout::MEMMAP_ADDR));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(layout::MODLIST_ADDR));
    }
    PvhBootConfigurator::write_bootparams(&params, mem.guest_memory())
        .map_err(|e| VmError::BootParams(e.to_string()))?;
    Ok(entry)
}
