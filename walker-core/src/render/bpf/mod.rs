//! The BPF scheduler's own state: its struct_ops map, programs and maps
//! (type, name, sizes, and contents where they were read), `.bss`,
//! `.data` and `.rodata` globals decoded by name with the program's BTF.
//! Each map says when its contents were read: while paused (small arrays),
//! after the thaw (larger arrays, the BTF), or not (and why).

mod thaw;
pub mod value;

use std::collections::HashMap;
use std::fmt::Write;
use std::string::{String, ToString};
use std::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::capture::CaptureBuf;
use crate::capture::bpf::{BpfMapRecord, MAP_ARRAY, MAP_PERCPU_ARRAY, MAP_STRUCT_OPS};
pub use thaw::{BpfLate, BpfLimits, HashRead};
pub use value::{Field, Value};

use super::{c_str, fault_text};

/// Entries of a non-DATASEC array shown.
const MAX_ENTRIES: usize = 16;

/// The BPF scheduler's programs and maps.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BpfReport {
    /// The attached scheduler's struct_ops map, when found.
    pub struct_ops: Option<MapSummary>,
    /// Its programs (the struct_ops map's links).
    pub programs: Vec<ProgReport>,
    /// The maps its programs use or that share its BTF, by id.
    pub maps: Vec<MapReport>,
    /// Maps on `map_idr` in all (the scheduler's and others').
    pub maps_seen: u32,
    /// Bytes of map values read while the guest was paused.
    pub bytes_paused: u64,
    /// Bytes read after the thaw (larger maps' values, BTF).
    pub bytes_after_thaw: u64,
    /// What kept the pass from finishing, if anything.
    pub faults: Vec<String>,
}

/// A map as other entries name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapSummary {
    /// Map id.
    pub id: u32,
    /// Map name.
    pub name: String,
}

/// One program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgReport {
    /// Program id.
    pub id: u32,
    /// Its name (`aux->name`, 15 characters at most).
    pub name: String,
    /// `enum bpf_prog_type` number (27: struct_ops).
    pub prog_type: u32,
    /// Why it could not be read in full, if it could not.
    pub fault: Option<String>,
}

/// When a map's contents were read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapRead {
    /// While the guest was paused: the values of that moment.
    Paused,
    /// After the thaw: the guest ran on meanwhile.
    AfterThaw,
    /// Not read, and why.
    Skipped(String),
}

/// One map of the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapReport {
    /// Map id.
    pub id: u32,
    /// Map name (libbpf's `<object>.bss` style for globals).
    pub name: String,
    /// `enum bpf_map_type`, by its UAPI name without the prefix.
    pub map_type: String,
    /// `key_size`.
    pub key_size: u32,
    /// `value_size`.
    pub value_size: u32,
    /// `max_entries`.
    pub max_entries: u32,
    /// `map_flags`.
    pub flags: u32,
    /// `struct bpf_map` address.
    pub addr: u64,
    /// Bytes of its data, where `max_entries` says it (ring buffer:
    /// bytes; arena: pages of 4 KiB).
    pub size_bytes: Option<u64>,
    /// When its contents were read.
    pub read: MapRead,
    /// The variables of a `.bss`/`.data`/`.rodata` map, by name.
    pub globals: Vec<Field>,
    /// The first entries of another array (per-CPU: one value per CPU).
    pub entries: Vec<Value>,
    /// A hash map's first entries, in bucket order.
    #[serde(default)]
    pub pairs: Vec<Pair>,
    /// Its entries past those shown.
    #[serde(default)]
    pub more_pairs: u64,
    /// Why it could not be read, if it could not.
    pub fault: Option<String>,
}

/// One hash map entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    /// Its key.
    pub key: Value,
    /// Its value.
    pub value: Value,
}

/// `enum bpf_map_type` (UAPI numbers, fixed) without `BPF_MAP_TYPE_`.
const MAP_TYPES: [&str; 34] = [
    "unspec",
    "hash",
    "array",
    "prog_array",
    "perf_event_array",
    "percpu_hash",
    "percpu_array",
    "stack_trace",
    "cgroup_array",
    "lru_hash",
    "lru_percpu_hash",
    "lpm_trie",
    "array_of_maps",
    "hash_of_maps",
    "devmap",
    "sockmap",
    "cpumap",
    "xskmap",
    "sockhash",
    "cgroup_storage",
    "reuseport_sockarray",
    "percpu_cgroup_storage",
    "queue",
    "stack",
    "sk_storage",
    "devmap_hash",
    "struct_ops",
    "ringbuf",
    "inode_storage",
    "task_storage",
    "bloom_filter",
    "user_ringbuf",
    "cgrp_storage",
    "arena",
];
const MAP_RINGBUF: u32 = 27;
const MAP_USER_RINGBUF: u32 = 31;
const MAP_ARENA: u32 = 33;

/// A map type's name.
pub fn map_type_name(t: u32) -> String {
    MAP_TYPES
        .get(t as usize)
        .map_or_else(|| std::format!("type {t}"), |s| (*s).into())
}

impl BpfReport {
    /// The section from a capture and, when given, what was read after
    /// the thaw; `None` when the pass did not run (no room given) or found
    /// no map and no fault.
    pub fn build(buf: &CaptureBuf<'_>, late: Option<&BpfLate>) -> Option<Self> {
        let maps = buf.bpf_maps.as_slice();
        if maps.is_empty() && !buf.health.bpf.is_fault() && buf.bpf.walk.entries == 0 {
            return None;
        }
        let mut faults: Vec<String> = [buf.health.bpf, buf.bpf.walk.fault]
            .into_iter()
            .filter_map(fault_text)
            .collect();
        if buf.bpf.walk.truncated {
            faults.push("map_idr walk truncated".into());
        }
        if buf.bpf_maps.dropped() > 0 {
            faults.push(std::format!(
                "{} maps past the capture's room",
                buf.bpf_maps.dropped()
            ));
        }
        let btfs = late.map(BpfLate::parsed).unwrap_or_default();
        let mut out = BpfReport {
            struct_ops: maps.iter().find(|m| m.sched_ops).map(|m| MapSummary {
                id: m.id,
                name: c_str(&m.name),
            }),
            programs: buf
                .bpf_progs
                .as_slice()
                .iter()
                .map(|p| ProgReport {
                    id: p.id,
                    name: c_str(&p.name),
                    prog_type: p.prog_type,
                    fault: fault_text(p.fault),
                })
                .collect(),
            maps: Vec::new(),
            maps_seen: buf.bpf.walk.entries,
            bytes_paused: buf.bpf.value_bytes,
            bytes_after_thaw: late.map_or(0, |l| l.bytes),
            faults,
        };
        for m in maps.iter().filter(|m| m.owned) {
            out.maps.push(map_report(buf, m, late, &btfs));
        }
        out.maps.sort_by_key(|m| m.id);
        Some(out)
    }
}

fn map_report(
    buf: &CaptureBuf<'_>,
    m: &BpfMapRecord,
    late: Option<&BpfLate>,
    btfs: &HashMap<u64, Result<btf_rs::Btf, String>>,
) -> MapReport {
    let mut r = MapReport {
        id: m.id,
        name: c_str(&m.name),
        map_type: map_type_name(m.map_type),
        key_size: m.key_size,
        value_size: m.value_size,
        max_entries: m.max_entries,
        flags: m.map_flags,
        addr: m.addr,
        size_bytes: match m.map_type {
            MAP_RINGBUF | MAP_USER_RINGBUF => Some(u64::from(m.max_entries)),
            MAP_ARENA => Some(u64::from(m.max_entries) * 4096),
            _ => None,
        },
        read: MapRead::Skipped(String::new()),
        globals: Vec::new(),
        entries: Vec::new(),
        pairs: Vec::new(),
        more_pairs: 0,
        fault: fault_text(m.fault),
    };
    if let Some(h) = late.and_then(|l| l.hashes.get(&m.addr)) {
        hash_report(&mut r, m, h, btfs);
        return r;
    }
    let paused = m.values.and_then(|s| buf.bpf_bytes(s));
    let after = late.and_then(|l| l.values.get(&m.addr));
    let (bytes, read) = match (paused, after) {
        (Some(b), _) => (Some(b), MapRead::Paused),
        (None, Some(b)) => (Some(b.as_slice()), MapRead::AfterThaw),
        (None, None) => (None, MapRead::Skipped(skip_reason(m, late))),
    };
    r.read = read;
    let Some(bytes) = bytes else {
        return r;
    };
    let btf = match btfs.get(&m.btf) {
        Some(Ok(b)) => b,
        Some(Err(e)) => {
            r.fault.get_or_insert_with(|| e.clone());
            return r;
        }
        None => return r,
    };
    let mut dec = value::Decoder::new(btf);
    if m.map_type == MAP_ARRAY
        && m.max_entries == 1
        && let Some(vars) = dec.datasec(m.btf_value_type_id, bytes)
    {
        r.globals = vars;
        return r;
    }
    let (stride, per) = match (m.map_type, m.elem_size) {
        (MAP_ARRAY, Some(e)) => (e as usize, 1),
        (MAP_PERCPU_ARRAY, _) => {
            let cpus = (bytes.len() / (m.value_size as usize).max(1))
                .checked_div(m.max_entries as usize)
                .unwrap_or(0);
            (m.value_size as usize * cpus, cpus)
        }
        _ => return r,
    };
    if stride == 0 || m.btf_value_type_id == 0 {
        return r;
    }
    for entry in bytes.chunks(stride).take(MAX_ENTRIES) {
        let v = if m.map_type == MAP_PERCPU_ARRAY {
            let items = entry
                .chunks(m.value_size as usize)
                .take(per)
                .map(|c| dec.value(m.btf_value_type_id, c, 1))
                .collect();
            Value::Array { items, more: 0 }
        } else {
            dec.value(m.btf_value_type_id, entry, 0)
        };
        r.entries.push(v);
    }
    r
}

fn hash_report(
    r: &mut MapReport,
    m: &BpfMapRecord,
    h: &Result<HashRead, String>,
    btfs: &HashMap<u64, Result<btf_rs::Btf, String>>,
) {
    let h = match h {
        Ok(h) => h,
        Err(e) => {
            r.read = MapRead::Skipped("its entries could not be read".into());
            r.fault = Some(e.clone());
            return;
        }
    };
    r.read = MapRead::AfterThaw;
    r.more_pairs = h.more;
    if let Some(why) = &h.stopped {
        r.fault = Some(why.clone());
    }
    let btf = btfs.get(&m.btf).and_then(|b| b.as_ref().ok());
    let mut dec = btf.map(value::Decoder::new);
    let mut decode = |id: u32, bytes: &[u8]| match (&mut dec, id) {
        (Some(d), id) if id != 0 => d.value(id, bytes, 0),
        // No type: the bytes in memory order.
        _ => Value::Bytes(bytes.iter().map(|b| std::format!("{b:02x}")).collect()),
    };
    for (k, v) in &h.entries {
        let key = decode(m.btf_key_type_id, k);
        let value = decode(m.btf_value_type_id, v);
        r.pairs.push(Pair { key, value });
    }
}

fn skip_reason(m: &BpfMapRecord, late: Option<&BpfLate>) -> String {
    if let Some(n) = late.and_then(|l| l.skipped.get(&m.addr)) {
        return std::format!("{n} bytes over budget");
    }
    match (m.map_type, m.over_budget) {
        (MAP_STRUCT_OPS, _) => "the ops table".into(),
        (MAP_ARRAY | MAP_PERCPU_ARRAY, Some(n)) => {
            std::format!("{n} bytes over the paused budget; no after-thaw read")
        }
        (MAP_ARRAY | MAP_PERCPU_ARRAY, None) => "not read".into(),
        (MAP_RINGBUF | MAP_USER_RINGBUF | MAP_ARENA, _) => "size only".into(),
        (t, _) => std::format!("{} contents are not walked", map_type_name(t)),
    }
}

impl BpfReport {
    pub(super) fn write_text(&self, s: &mut String) -> std::fmt::Result {
        let ops = self.struct_ops.as_ref().map_or_else(
            || "no struct_ops map found".into(),
            |m| std::format!("struct_ops map {} {:?}", m.id, m.name),
        );
        writeln!(
            s,
            "bpf: {ops}, {} programs, {} of {} maps; {} B read paused, {} B after thaw",
            self.programs.len(),
            self.maps.len(),
            self.maps_seen,
            self.bytes_paused,
            self.bytes_after_thaw
        )?;
        for f in &self.faults {
            writeln!(s, "  fault: {f}")?;
        }
        if !self.programs.is_empty() {
            let progs: Vec<String> = self
                .programs
                .iter()
                .map(|p| std::format!("{}:{:?}", p.id, p.name))
                .collect();
            writeln!(s, "  programs: {}", progs.join(" "))?;
        }
        for m in &self.maps {
            let read = match &m.read {
                MapRead::Paused => "paused".into(),
                MapRead::AfterThaw => "after_thaw".into(),
                MapRead::Skipped(why) => std::format!("skipped ({why})"),
            };
            write!(
                s,
                "  map {} {:?} {} key {} value {} max {}",
                m.id, m.name, m.map_type, m.key_size, m.value_size, m.max_entries
            )?;
            if let Some(b) = m.size_bytes {
                write!(s, " size {b} B")?;
            }
            writeln!(s, " read: {read}")?;
            if let Some(f) = &m.fault {
                writeln!(s, "    fault: {f}")?;
            }
            for g in &m.globals {
                writeln!(s, "    {} = {}", g.name, text(&g.value))?;
            }
            for (i, e) in m.entries.iter().enumerate() {
                writeln!(s, "    [{i}] = {}", text(e))?;
            }
            for p in &m.pairs {
                writeln!(s, "    {} => {}", text(&p.key), text(&p.value))?;
            }
            if m.more_pairs > 0 {
                writeln!(s, "    ... {} more entries", m.more_pairs)?;
            }
        }
        Ok(())
    }
}

/// A value as the text view shows it (strings escaped).
pub fn text(v: &Value) -> String {
    match v {
        Value::Int(i) => i.to_string(),
        Value::Uint(u) => u.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Str(t) => std::format!("{t:?}"),
        Value::Enum(e) => e.escape_debug().to_string(),
        Value::Float(f) => f.clone(),
        Value::Ptr(p) => std::format!("{p:#x}"),
        Value::Array { items, more } => {
            let mut out: Vec<String> = items.iter().map(text).collect();
            if *more > 0 {
                out.push(std::format!("... {more} more"));
            }
            std::format!("[{}]", out.join(", "))
        }
        Value::Struct(fields) => {
            let out: Vec<String> = fields
                .iter()
                .map(|f| std::format!("{}: {}", f.name.escape_debug(), text(&f.value)))
                .collect();
            std::format!("{{{}}}", out.join(", "))
        }
        Value::Bytes(h) => std::format!("0x{h}"),
        Value::Undecoded(why) => std::format!("<{why}>"),
    }
}
