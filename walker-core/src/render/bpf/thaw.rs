//! What is read of the scheduler's maps once the guest runs again: the
//! program BTF (`map->btf->data`, immutable once loaded), the values of
//! array maps too large for the paused budget, and hash maps' entries
//! (their buckets' `hlist_nulls` chains), each within [`BpfLimits`].

use std::collections::HashMap;
use std::string::{String, ToString};
use std::vec;
use std::vec::Vec;

use crate::capture::CaptureBuf;
use crate::capture::bpf::{BpfMapRecord, MAP_ARRAY};
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
    /// Hash maps' entries by map address, or why they could not be read.
    pub hashes: HashMap<u64, Result<HashRead, String>>,
    /// Bytes read.
    pub bytes: u64,
}

/// `BPF_MAP_TYPE_HASH` and `BPF_MAP_TYPE_LRU_HASH`: entries walked.
const HASH_TYPES: [u32; 2] = [1, 9];
/// Buckets of one hash map scanned at most.
const MAX_BUCKETS: u64 = 1 << 16;
/// Chain links followed in one hash map at most (cycles end here).
const MAX_STEPS: u64 = 1 << 16;
/// Entries of one hash map kept at most.
pub const MAX_PAIRS: usize = 64;

/// A hash map's entries as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HashRead {
    /// The key and value bytes of the entries kept, in bucket order.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Entries seen past those kept (the count or the byte budget).
    pub more: u64,
    /// Why the walk ended early, if it did.
    pub stopped: Option<String>,
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
        for m in owned.clone() {
            if !HASH_TYPES.contains(&m.map_type) || m.fault.is_fault() {
                continue;
            }
            let left = limits.total_bytes.saturating_sub(late.bytes);
            let read = read_hash(layout, mem, tr, m, limits.map_bytes.min(left));
            if let Ok(h) = &read {
                let n: usize = h.entries.iter().map(|(k, v)| k.len() + v.len()).sum();
                late.bytes += n as u64;
            }
            late.hashes.insert(m.addr, read);
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

/// The entries of hash map `m`: each bucket's chain (`hlist_nulls`: a
/// link with its low bit set ends it) up to [`MAX_BUCKETS`] buckets,
/// [`MAX_STEPS`] links and [`MAX_PAIRS`] entries within `budget` bytes.
fn read_hash<M: GuestMem + ?Sized>(
    layout: &Layout,
    mem: &M,
    tr: &mut Translator,
    m: &BpfMapRecord,
    budget: u64,
) -> Result<HashRead, String> {
    let (Some(h), Some(b), Some(e)) = (layout.bpf_htab, layout.htab_bucket, layout.htab_elem)
    else {
        return Err("the kernel's BTF lacks struct bpf_htab, bucket or htab_elem".into());
    };
    let unreadable = |va: u64| std::format!("hash map: {va:#x} unreadable");
    let at = |base: u64, off: u32| base.wrapping_add(u64::from(off));
    let buckets = tr
        .read_virt_pod::<u64, _>(mem, at(m.addr, h.buckets))
        .map_err(|_| unreadable(at(m.addr, h.buckets)))?;
    let n = tr
        .read_virt_pod::<u32, _>(mem, at(m.addr, h.n_buckets))
        .map_err(|_| unreadable(at(m.addr, h.n_buckets)))?;
    if !n.is_power_of_two() {
        return Err(std::format!(
            "hash map: n_buckets {n} is not a power of two"
        ));
    }
    let mut out = HashRead::default();
    let scan = u64::from(n).min(MAX_BUCKETS);
    if u64::from(n) > scan {
        out.stopped = Some(std::format!("{scan} of {n} buckets scanned"));
    }
    let key_len = m.key_size as usize;
    let val_off = u64::from(m.key_size.next_multiple_of(8));
    let entry = u64::from(m.key_size) + u64::from(m.value_size);
    let (mut steps, mut bytes) = (0u64, 0u64);
    for i in 0..scan {
        let head_at = at(buckets.wrapping_add(i * u64::from(b.struct_size)), b.head);
        let mut node = tr
            .read_virt_pod::<u64, _>(mem, head_at)
            .map_err(|_| unreadable(head_at))?;
        while node != 0 && node & 1 == 0 {
            steps += 1;
            if steps > MAX_STEPS {
                out.stopped = Some(std::format!("{MAX_STEPS} chain links followed"));
                return Ok(out);
            }
            let elem = node.wrapping_sub(u64::from(e.hash_node));
            if out.entries.len() < MAX_PAIRS && bytes.saturating_add(entry) <= budget {
                let mut k = vec![0u8; key_len];
                let mut v = vec![0u8; m.value_size as usize];
                let key_at = at(elem, e.key);
                tr.read_virt(mem, key_at, &mut k)
                    .map_err(|_| unreadable(key_at))?;
                let val_at = key_at.wrapping_add(val_off);
                tr.read_virt(mem, val_at, &mut v)
                    .map_err(|_| unreadable(val_at))?;
                bytes += entry;
                out.entries.push((k, v));
            } else {
                out.more += 1;
            }
            // `hash_node.next` is the node's first word.
            node = tr
                .read_virt_pod::<u64, _>(mem, node)
                .map_err(|_| unreadable(node))?;
        }
    }
    Ok(out)
}
