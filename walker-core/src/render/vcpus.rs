//! The vCPU section: what each vCPU was executing at the freeze, its
//! registers with RIP named, and the return addresses found on its kernel
//! stack, named (a scan of the words from RSP, not an unwind: a word that
//! points into kernel text is listed, so stale frames may show too).

use std::fmt::Write;
use std::format;
use std::string::String;
use std::vec::Vec;

use serde::{Deserialize, Serialize};

use super::RenderContext;
use super::scheduler::Frame;
use crate::capture::CaptureBuf;

/// Return addresses listed per vCPU.
const FRAMES: usize = 32;

/// One vCPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuReport {
    /// vCPU index.
    pub index: u32,
    /// RIP, and its symbol when it is kernel text.
    pub rip: Frame,
    /// RSP.
    pub rsp: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CR3, when known.
    pub cr3: Option<u64>,
    /// Whether it ran kernel code.
    pub in_kernel: bool,
    /// Words of its kernel stack that point into kernel text, from RSP up
    /// (at most 32 of the 256 words read).
    pub stack: Vec<Frame>,
}

/// Every vCPU `buf` holds.
pub(super) fn build(buf: &CaptureBuf<'_>, ctx: &RenderContext<'_>) -> Vec<VcpuReport> {
    let name = |addr: u64| ctx.symbolizer.and_then(|z| z.name(addr));
    buf.vcpus
        .as_slice()
        .iter()
        .map(|v| {
            let words = v.stack.get(..usize::from(v.stack_len)).unwrap_or_default();
            VcpuReport {
                index: v.regs.index,
                rip: Frame {
                    addr: v.regs.rip,
                    symbol: name(v.regs.rip),
                },
                rsp: v.regs.rsp,
                rflags: v.regs.rflags,
                cr3: v.regs.cr3,
                in_kernel: v.regs.in_kernel(),
                stack: words
                    .iter()
                    .filter_map(|&addr| {
                        Some(Frame {
                            addr,
                            symbol: Some(name(addr)?),
                        })
                    })
                    .take(FRAMES)
                    .collect(),
            }
        })
        .collect()
}

/// The section's text (none without vCPUs).
pub(super) fn write_text(vcpus: &[VcpuReport], s: &mut String) -> std::fmt::Result {
    if vcpus.is_empty() {
        return Ok(());
    }
    writeln!(s, "\nvcpus:")?;
    for v in vcpus {
        let rip = v
            .rip
            .symbol
            .clone()
            .unwrap_or_else(|| format!("{:#x}", v.rip.addr));
        writeln!(
            s,
            "  vcpu {:<3} rip={rip} rsp={:#x} rflags={:#x} cr3={}{}",
            v.index,
            v.rsp,
            v.rflags,
            v.cr3.map_or("-".into(), |c| format!("{c:#x}")),
            if v.in_kernel { "" } else { " (user)" },
        )?;
        for f in &v.stack {
            writeln!(s, "          {}", f.symbol.as_deref().unwrap_or("?"))?;
        }
    }
    Ok(())
}
