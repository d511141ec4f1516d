//! BTF -> [`Layout`]: struct member offsets, per-CPU variable offsets and
//! enum constants from the kernel's own type information (btf-rs), from
//! raw BTF (`/sys/kernel/btf/vmlinux`) or a vmlinux's `.BTF` section.

use std::path::Path;
use std::string::{String, ToString};
use std::vec::Vec;

use btf_rs::{Btf, BtfType, Type};

use crate::layout::{Layout, Member};

mod header;

/// Deepest nesting of anonymous members / type modifiers followed.
const MAX_DEPTH: usize = 16;
/// Members one lookup may visit through anonymous members: a real
/// kernel's deepest lookup visits a few hundred; crafted BTF whose
/// anonymous members fan out at every level would otherwise visit
/// fan-out^MAX_DEPTH.
const MEMBER_BUDGET: u32 = 100_000;
/// Raw BTF magic (`BTF_MAGIC`), little-endian.
const BTF_MAGIC: [u8; 2] = [0x9f, 0xeb];
/// Name of the DATASEC holding per-CPU variables.
const PERCPU_SECTION: &str = ".data..percpu";

/// Why BTF could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// Reading the file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// An ELF without a `.BTF` section.
    #[error(
        "no .BTF section in {0}: the kernel was built without CONFIG_DEBUG_INFO_BTF; rebuild with it or pass a kernel that has it"
    )]
    NoBtfSection(String),
    /// An ELF that could not be parsed.
    #[error("{0} is not a readable ELF file: {1}")]
    Elf(String, String),
    /// Neither raw BTF nor ELF.
    #[error("{0} is neither raw BTF (magic 0xeB9F) nor an ELF file")]
    UnknownFormat(String),
    /// The BTF data is malformed.
    #[error("malformed BTF in {0}: {1}")]
    Parse(String, String),
}

/// One group's resolution, for diagnostics (`ktstr kernel info`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "embed", derive(serde::Serialize))]
pub struct GroupReport {
    /// Group name (as in [`Layout::missing_groups`]).
    pub group: &'static str,
    /// Kernel struct name.
    pub strukt: &'static str,
    /// Whether the struct exists in this kernel's BTF.
    pub struct_found: bool,
    /// Size of the struct chosen, when found.
    pub size: Option<u32>,
    /// Required members not found (the group is unusable if any).
    pub missing_required: Vec<&'static str>,
    /// Optional members not found.
    pub missing_optional: Vec<&'static str>,
}

impl GroupReport {
    /// Whether the group is usable.
    pub fn resolved(&self) -> bool {
        self.struct_found && self.missing_required.is_empty()
    }
}

/// A kernel's BTF, parsed.
pub struct KernelBtf {
    btf: Btf,
    source: String,
}

impl core::fmt::Debug for KernelBtf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KernelBtf")
            .field("source", &self.source)
            .finish()
    }
}

/// Structs, resolved member offsets and sizes for one candidate.
struct Candidate {
    size: u32,
    offsets: Vec<Option<u32>>,
}

impl Candidate {
    fn resolved(&self) -> usize {
        self.offsets.iter().filter(|o| o.is_some()).count()
    }
}

impl KernelBtf {
    /// Parse raw BTF bytes (the `/sys/kernel/btf/vmlinux` format).
    pub fn from_raw(bytes: &[u8], source: &str) -> Result<Self, BtfError> {
        if bytes.get(..2) != Some(&BTF_MAGIC[..]) {
            return Err(BtfError::UnknownFormat(source.to_string()));
        }
        header::check(bytes).map_err(|why| BtfError::Parse(source.to_string(), why))?;
        // btf-rs checks its arithmetic but is not written for hostile
        // input (no panic was found reading it or fuzzing it); a panic
        // inside it must still not take the caller down.
        let parsed = std::panic::catch_unwind(|| Btf::from_bytes(bytes));
        let btf = match parsed {
            Ok(Ok(btf)) => btf,
            Ok(Err(e)) => return Err(BtfError::Parse(source.to_string(), e.to_string())),
            Err(_) => {
                return Err(BtfError::Parse(
                    source.to_string(),
                    "the BTF parser panicked".into(),
                ));
            }
        };
        Ok(Self {
            btf,
            source: source.to_string(),
        })
    }

    /// Parse the `.BTF` section of an ELF (a vmlinux).
    pub fn from_elf(bytes: &[u8], source: &str) -> Result<Self, BtfError> {
        let section = btf_section(bytes, source)?;
        Self::from_raw(section, source)
    }

    /// Raw BTF or an ELF, told apart by their magic.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self, BtfError> {
        match bytes.get(..4) {
            Some(b"\x7fELF") => Self::from_elf(bytes, source),
            Some(m) if m.get(..2) == Some(&BTF_MAGIC[..]) => Self::from_raw(bytes, source),
            _ => Err(BtfError::UnknownFormat(source.to_string())),
        }
    }

    /// Map `path`: raw BTF or a vmlinux ELF (a bzImage must first be turned
    /// into its vmlinux, see [`crate::kernel::image`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, BtfError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let io = |source| BtfError::Io {
            path: name.clone(),
            source,
        };
        let map = crate::kernel::map_file(path).map_err(io)?;
        Self::from_bytes(&map, &name)
    }

    /// Where this BTF came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The layout of every group this kernel has.
    pub fn layout(&self) -> Layout {
        Layout::build(|strukt, members, out| {
            let best = self.best_candidate(strukt, members)?;
            for (slot, o) in out.iter_mut().zip(best.offsets) {
                *slot = o;
            }
            Some(best.size)
        })
    }

    /// Per-group diagnostics: what was found, what was not.
    pub fn layout_report(&self) -> Vec<GroupReport> {
        Layout::GROUPS
            .iter()
            .map(|&(group, strukt, members)| {
                let all = self.candidates(strukt, members);
                let chosen = self
                    .best_candidate(strukt, members)
                    .or_else(|| all.into_iter().max_by_key(Candidate::resolved));
                let missing = |required: bool| -> Vec<&'static str> {
                    members
                        .iter()
                        .enumerate()
                        .filter(|(i, m)| {
                            m.required == required
                                && chosen
                                    .as_ref()
                                    .is_none_or(|b| b.offsets.get(*i).copied().flatten().is_none())
                        })
                        .map(|(_, m)| m.name)
                        .collect()
                };
                GroupReport {
                    group,
                    strukt,
                    struct_found: chosen.is_some(),
                    size: chosen.as_ref().map(|b| b.size),
                    missing_required: missing(true),
                    missing_optional: missing(false),
                }
            })
            .collect()
    }

    /// Size of `struct name` (the largest complete definition).
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        self.structs(name).iter().map(|s| s.size() as u32).max()
    }

    /// The named, byte-aligned members of `struct name` (its largest
    /// definition) with their byte offsets, in order: e.g. the `SCX_EV_*`
    /// counters of `struct scx_event_stats`.
    pub fn struct_members(&self, name: &str) -> Vec<(String, u32)> {
        let structs = self.structs(name);
        let Some(s) = structs.iter().max_by_key(|s| s.size()) else {
            return Vec::new();
        };
        s.members
            .iter()
            .filter(|m| m.bitfield_size().is_none_or(|b| b == 0) && m.bit_offset() % 8 == 0)
            .filter_map(|m| Some((self.name(m).filter(|n| !n.is_empty())?, m.bit_offset() / 8)))
            .collect()
    }

    /// Offset of per-CPU variable `name` within the `.data..percpu` section.
    pub fn percpu_var_offset(&self, name: &str) -> Option<u32> {
        let sections = self.btf.resolve_types_by_name(PERCPU_SECTION).ok()?;
        sections.iter().find_map(|t| match t {
            Type::Datasec(ds) => ds.variables.iter().find_map(|v| {
                let Ok(Type::Var(var)) = self.btf.resolve_chained_type(v) else {
                    return None;
                };
                (self.name(&var).as_deref() == Some(name)).then(|| v.offset())
            }),
            _ => None,
        })
    }

    /// Value of enum constant `constant`, in `enum enum_name` when given,
    /// else in any enum (named or anonymous).
    pub fn enum_value(&self, enum_name: Option<&str>, constant: &str) -> Option<i64> {
        let lookup = |t: &Type| -> Option<i64> {
            match t {
                Type::Enum(e) => e.members.iter().find_map(|m| {
                    (self.name(m).as_deref() == Some(constant)).then(|| {
                        if e.is_signed() {
                            m.val() as i32 as i64
                        } else {
                            m.val() as i64
                        }
                    })
                }),
                Type::Enum64(e) => e.members.iter().find_map(|m| {
                    (self.name(m).as_deref() == Some(constant)).then(|| m.val() as i64)
                }),
                _ => None,
            }
        };
        match enum_name {
            Some(n) => self
                .btf
                .resolve_types_by_name(n)
                .ok()?
                .iter()
                .find_map(lookup),
            // Ids are dense from 1; the first id that does not resolve ends
            // the table (bounded by the 24-bit id space BTF allows).
            None => (1..1u32 << 24)
                .map_while(|id| self.btf.resolve_type_by_id(id).ok())
                .find_map(|t| lookup(&t)),
        }
    }

    /// Every constant of `enum enum_name` with its value, in order.
    pub fn enum_members(&self, enum_name: &str) -> Vec<(String, i64)> {
        let types = self
            .btf
            .resolve_types_by_name(enum_name)
            .unwrap_or_default();
        let Some(t) = types
            .iter()
            .find(|t| matches!(t, Type::Enum(_) | Type::Enum64(_)))
        else {
            return Vec::new();
        };
        match t {
            Type::Enum(e) => e
                .members
                .iter()
                .filter_map(|m| {
                    let v = if e.is_signed() {
                        m.val() as i32 as i64
                    } else {
                        m.val() as i64
                    };
                    Some((self.name(m)?, v))
                })
                .collect(),
            Type::Enum64(e) => e
                .members
                .iter()
                .filter_map(|m| Some((self.name(m)?, m.val() as i64)))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The capture's non-offset constants, from this kernel's enums where
    /// it has them (defaults otherwise).
    pub fn consts(&self) -> crate::capture::Consts {
        let d = crate::capture::Consts::default();
        let get = |name: &str, dflt: u32| self.enum_value(None, name).map_or(dflt, |v| v as u32);
        crate::capture::Consts {
            dsq_iter_cursor: get("SCX_DSQ_LNODE_ITER_CURSOR", d.dsq_iter_cursor),
            task_cursor: get("SCX_TASK_CURSOR", d.task_cursor),
            ops_disabled: get("SCX_OPS_DISABLED", d.ops_disabled),
            cpumask_ptr: self
                .typedef_is_pointer("cpumask_var_t")
                .unwrap_or(d.cpumask_ptr),
            sched_ext_ops_value: self
                .btf
                .resolve_ids_by_name("bpf_struct_ops_sched_ext_ops")
                .unwrap_or_default()
                .into_iter()
                .find(|&id| matches!(self.btf.resolve_type_by_id(id), Ok(Type::Struct(_)))),
        }
    }

    /// Whether typedef `name` names a pointer (through qualifiers and
    /// other typedefs); `None` when the BTF has no such typedef.
    fn typedef_is_pointer(&self, name: &str) -> Option<bool> {
        let td = self
            .btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Typedef(x) => Some(x),
                _ => None,
            })?;
        let mut t = self.btf.resolve_chained_type(&td).ok()?;
        for _ in 0..MAX_DEPTH {
            t = match t {
                Type::Ptr(_) => return Some(true),
                Type::Typedef(x) => self.btf.resolve_chained_type(&x).ok()?,
                Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => {
                    self.btf.resolve_chained_type(&x).ok()?
                }
                _ => return Some(false),
            };
        }
        None
    }

    fn name(&self, t: &dyn BtfType) -> Option<String> {
        self.btf.resolve_name(t).ok()
    }

    /// Every struct (not union, not forward declaration) named `name`.
    fn structs(&self, name: &str) -> Vec<btf_rs::Struct> {
        self.btf
            .resolve_types_by_name(name)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| match t {
                Type::Struct(s) if s.size() > 0 => Some(s),
                _ => None,
            })
            .collect()
    }

    /// Every definition of `strukt`, with its members resolved.
    fn candidates(&self, strukt: &str, members: &[Member]) -> Vec<Candidate> {
        self.structs(strukt)
            .iter()
            .map(|s| Candidate {
                size: s.size() as u32,
                offsets: members
                    .iter()
                    .map(|m| self.member_offset(s, m.path))
                    .collect(),
            })
            .collect()
    }

    /// The definition of `strukt` that has every required member, resolving
    /// the most members; `None` when no definition qualifies.
    fn best_candidate(&self, strukt: &str, members: &[Member]) -> Option<Candidate> {
        self.candidates(strukt, members)
            .into_iter()
            .filter(|c| {
                members
                    .iter()
                    .zip(&c.offsets)
                    .all(|(m, o)| !m.required || o.is_some())
            })
            .max_by_key(Candidate::resolved)
    }

    /// Byte offset of `path` (dotted, `|`-separated alternatives) in `s`.
    fn member_offset(&self, s: &btf_rs::Struct, path: &str) -> Option<u32> {
        path.split('|').find_map(|alt| {
            let mut strukt = s.clone();
            let mut total = 0u32;
            let mut parts = alt.split('.').peekable();
            while let Some(part) = parts.next() {
                let mut budget = MEMBER_BUDGET;
                let (bits, member) = self.find_member(&strukt, part, 0, &mut budget)?;
                if bits % 8 != 0 {
                    return None;
                }
                total = total.checked_add(bits / 8)?;
                if parts.peek().is_some() {
                    strukt = self.struct_of(&member)?;
                }
            }
            Some(total)
        })
    }

    /// `(bit offset, member)` of member `name` of `s`, looking through
    /// anonymous struct/union members. Bitfields do not match: the layout
    /// wants byte-addressable members only.
    fn find_member(
        &self,
        s: &btf_rs::Struct,
        name: &str,
        depth: usize,
        budget: &mut u32,
    ) -> Option<(u32, btf_rs::Member)> {
        if depth > MAX_DEPTH {
            return None;
        }
        for m in &s.members {
            *budget = budget.checked_sub(1)?;
            let mname = self.name(m).unwrap_or_default();
            if mname == name {
                if m.bitfield_size().is_some_and(|b| b != 0) {
                    return None;
                }
                return Some((m.bit_offset(), m.clone()));
            }
            if mname.is_empty()
                && let Some(inner) = self.struct_of(m)
                && let Some((bits, found)) = self.find_member(&inner, name, depth + 1, budget)
            {
                return Some((m.bit_offset().checked_add(bits)?, found));
            }
        }
        None
    }

    /// The struct or union a member's type is, through typedefs and
    /// qualifiers.
    fn struct_of(&self, m: &btf_rs::Member) -> Option<btf_rs::Struct> {
        let mut t = self.btf.resolve_chained_type(m).ok()?;
        for _ in 0..MAX_DEPTH {
            t = match t {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(x) => self.btf.resolve_chained_type(&x).ok()?,
                Type::Const(x) | Type::Volatile(x) | Type::Restrict(x) => {
                    self.btf.resolve_chained_type(&x).ok()?
                }
                Type::TypeTag(x) => self.btf.resolve_chained_type(&x).ok()?,
                _ => return None,
            };
        }
        None
    }
}

/// The bytes of the `.BTF` section of an ELF.
pub fn btf_section<'a>(elf: &'a [u8], source: &str) -> Result<&'a [u8], BtfError> {
    if let Some(why) = crate::kernel::elf::not_x86_64_elf(elf) {
        return Err(BtfError::Elf(source.to_string(), why));
    }
    crate::kernel::elf::section(elf, ".BTF")
        .ok_or_else(|| BtfError::NoBtfSection(source.to_string()))
}

#[cfg(test)]
mod tests;
