//! What is read of the scheduler's maps once the guest runs again: the
//! program BTF (`map->btf->data`, immutable once loaded) and the values of
//! array maps too large for the paused budget, each within
//! [`BpfLimits`].

use std::collections::HashMap;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use crate::capture::CaptureBuf;
use crate::capture::bpf::MAP_ARRAY;
use crate::layout::Layout;
use crate::mem::GuestMem;
use crate::translate::Translator;

/// Bounds of the after-thaw reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfLimits {
    /// Most bytes of one map's values.
    pub map_bytes: u64,
    /// Most bytes of everything read after the thaw (values and BTF).
    pub total_bytes: u64,
    /// Most bytes of one program BTF.
    pub btf_bytes: u64,
}

impl Default for BpfLimits {
    fn default() -> Self {
        Self {
            map_bytes: 1 << 20,
            total_bytes: 16 << 20,
            btf_bytes: 8 << 20,
        }
    }
}

/// The after-thaw reads' results.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BpfLate {
    /// Values by map address.
    pub values: HashMap<u64, Vec<u8>>,
    /// Raw BTF by `struct btf` address, or why it could not be read.
    pub btf: HashMap<u64, Result<Vec<u8>, String>>,
    /// Maps whose values were over [`BpfLimits`], with their size.
    pub skipped: HashMap<u64, u64>,
    /// Bytes read.
    pub bytes: u64,
}

impl BpfLate {
    /// Read what the paused capture in `buf` left for now from `mem`
    /// (the live guest, or the core the capture read).
    pub fn read<M: GuestMem + ?Sized>(
        buf: &CaptureBuf<'_>,
        layout: &Layout,
        mem: &M,
        tr: &mut Translator,
        limits: &BpfLimits,
    ) -> Self {
        let mut late = Self::default();
        let owned = buf.bpf_maps.as_slice().iter().filter(|m| m.owned);
        for m in owned.clone() {
            if m.btf == 0 || late.btf.contains_key(&m.btf) {
                continue;
            }
            let left = limits.total_bytes.saturating_sub(late.bytes);
            let raw = read_btf(layout, mem, tr, m.btf, limits.btf_bytes.min(left));
            if let Ok(b) = &raw {
                late.bytes += b.len() as u64;
            }
            late.btf.insert(m.btf, raw);
        }
        let Some(arr) = layout.bpf_array else {
            return late;
        };
        for m in owned {
            let (Some(total), None, MAP_ARRAY, false) =
                (m.over_budget, m.values, m.map_type, m.fault.is_fault())
            else {
                continue;
            };
            if total > limits.map_bytes || late.bytes.saturating_add(total) > limits.total_bytes {
                late.skipped.insert(m.addr, total);
                continue;
            }
            let mut v = vec![0u8; total as usize];
            let va = m.addr.wrapping_add(u64::from(arr.value));
            if tr.read_virt(mem, va, &mut v).is_ok() {
                late.bytes += total;
                late.values.insert(m.addr, v);
            }
        }
        late
    }

    /// The BTF read, parsed.
    pub(super) fn parsed(&self) -> HashMap<u64, Result<btf_rs::Btf, String>> {
        self.btf
            .iter()
            .map(|(&a, raw)| {
                let b = match raw {
                    Ok(bytes) => btf_rs::Btf::from_bytes(bytes)
                        .map_err(|e| std::format!("program BTF at {a:#x}: {e}")),
                    Err(e) => Err(e.clone()),
                };
                (a, b)
            })
            .collect()
    }
}

fn read_btf<M: GuestMem + ?Sized>(
    layout: &Layout,
    mem: &M,
    tr: &mut Translator,
    btf: u64,
    budget: u64,
) -> Result<Vec<u8>, String> {
    let l = layout
        .btf
        .ok_or_else(|| "the kernel's BTF has no struct btf".to_string())?;
    let unreadable = |va: u64| std::format!("program BTF: {va:#x} unreadable");
    let data_at = btf.wrapping_add(u64::from(l.data));
    let size_at = btf.wrapping_add(u64::from(l.data_size));
    let data = tr
        .read_virt_pod::<u64, _>(mem, data_at)
        .map_err(|_| unreadable(data_at))?;
    let size = tr
        .read_virt_pod::<u32, _>(mem, size_at)
        .map_err(|_| unreadable(size_at))?;
    if u64::from(size) > budget {
        return Err(std::format!(
            "program BTF of {size} bytes over the {budget} byte budget left"
        ));
    }
    let mut v = vec![0u8; size as usize];
    tr.read_virt(mem, data, &mut v)
        .map_err(|_| unreadable(data))?;
    Ok(v)
}
