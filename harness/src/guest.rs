//! What the host knows about a guest kernel, shared by `ktstr dump` (an
//! ELF core) and the live VM backends: a thin layer over ktstr-walker's
//! public embedding API ([`ktstr_walker::embed`]), the same one any VMM
//! uses. The translation, symbols and buffer sizes come from the walker's
//! discovery; nothing here works them out.

use std::sync::Arc;

use ktstr_walker::GuestMem;
use ktstr_walker::discover::{DiscoverError, VcpuRegs};
use ktstr_walker::embed::{Dumper, Kernel as WalkerKernel};
use ktstr_walker::kernel::vmlinux::{Vmlinux, VmlinuxError};
use ktstr_walker::layout::Layout;
use ktstr_walker::translate::PageTableRoot;

use crate::kernel::Kernel;

/// A kernel's layout, names and link-time symbols, from its vmlinux.
pub struct GuestKernel {
    kernel: Arc<WalkerKernel>,
}

impl GuestKernel {
    /// Read `kernel`'s BTF, symbols (its `.symtab`, else its kallsyms
    /// tables) and banner; `CONFIG_HZ` from its config.
    pub fn load(kernel: &Kernel) -> Result<GuestKernel, VmlinuxError> {
        let source = kernel.image.source().display().to_string();
        let vmlinux = Vmlinux::from_bytes(kernel.image.elf_bytes(), &source)?;
        let mut k = WalkerKernel::from_vmlinux(&vmlinux)?;
        if let Some(hz) = kernel
            .config
            .as_ref()
            .and_then(|c| c.get("CONFIG_HZ"))
            .and_then(|v| v.parse().ok())
        {
            k = k.with_hz(hz);
        }
        Ok(GuestKernel {
            kernel: Arc::new(k),
        })
    }

    /// The layout the walker uses.
    pub fn layout(&self) -> &Layout {
        self.kernel.layout()
    }

    /// The walker's view of this kernel.
    pub fn kernel(&self) -> &Arc<WalkerKernel> {
        &self.kernel
    }

    /// Find this kernel in `mem` from one vCPU's page-table root, and a
    /// dumper for it (buffers sized for its `nr_cpu_ids`).
    pub fn dumper(
        &self,
        mem: &(impl GuestMem + ?Sized),
        root: PageTableRoot,
    ) -> Result<Dumper, DiscoverError> {
        Dumper::discover(Arc::clone(&self.kernel), mem, regs(root))
    }
}

/// The registers discovery needs, from a vCPU's page-table root.
pub fn regs(root: PageTableRoot) -> VcpuRegs {
    VcpuRegs {
        cr3: root.cr3,
        cr4: match root.levels {
            ktstr_walker::translate::Levels::Five => ktstr_walker::discover::CR4_LA57,
            ktstr_walker::translate::Levels::Four => 0,
        },
    }
}

/// The page-table root of a vCPU from its CR3 and CR4.
pub fn root(cr3: u64, cr4: Option<u64>) -> PageTableRoot {
    VcpuRegs {
        cr3,
        cr4: cr4.unwrap_or(0),
    }
    .root()
}
