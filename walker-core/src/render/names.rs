//! Names for the numbers a capture holds: exit kinds, flag bits, op
//! states, sched classes.

use std::string::{String, ToString};
use std::vec::Vec;

use crate::symbols::Symbols;

/// Enum constants used to decode a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `enum scx_exit_kind`.
    pub exit_kinds: Vec<(String, i64)>,
    /// `enum scx_ent_flags` (task flags; the state field is decoded apart).
    pub task_flags: Vec<(String, i64)>,
    /// `enum scx_rq_flags`.
    pub rq_flags: Vec<(String, i64)>,
    /// `struct scx_event_stats`: each `SCX_EV_*` counter's name and byte
    /// offset (empty: the counters are not shown).
    pub events: Vec<(String, u32)>,
    /// `enum scx_enable_state`.
    pub enable_states: Vec<(String, i64)>,
    /// Ticks per second (`CONFIG_HZ`) for turning jiffies into time.
    pub hz: u64,
}

fn owned(v: &[(&str, i64)]) -> Vec<(String, i64)> {
    v.iter().map(|(n, x)| (n.to_string(), *x)).collect()
}

impl Default for Names {
    /// The values of 7.x kernels, for captures without BTF at hand
    /// (a kernel's own enums, via [`Names::from_btf`], take precedence).
    fn default() -> Self {
        Self {
            exit_kinds: owned(&[
                ("SCX_EXIT_NONE", 0),
                ("SCX_EXIT_DONE", 1),
                ("SCX_EXIT_UNREG", 64),
                ("SCX_EXIT_UNREG_BPF", 65),
                ("SCX_EXIT_UNREG_KERN", 66),
                ("SCX_EXIT_SYSRQ", 67),
                ("SCX_EXIT_ERROR", 1024),
                ("SCX_EXIT_ERROR_BPF", 1025),
                ("SCX_EXIT_ERROR_STALL", 1026),
            ]),
            task_flags: owned(&[
                ("SCX_TASK_QUEUED", 1),
                ("SCX_TASK_RESET_RUNNABLE_AT", 4),
                ("SCX_TASK_DEQD_FOR_SLEEP", 8),
                ("SCX_TASK_STATE_SHIFT", 8),
                ("SCX_TASK_STATE_MASK", 0x700),
                ("SCX_TASK_NONE", 0),
                ("SCX_TASK_INIT", 0x200),
                ("SCX_TASK_READY", 0x300),
                ("SCX_TASK_ENABLED", 0x400),
            ]),
            rq_flags: owned(&[
                ("SCX_RQ_ONLINE", 1),
                ("SCX_RQ_CAN_STOP_TICK", 2),
                ("SCX_RQ_CLK_VALID", 32),
            ]),
            // Offsets moved between kernels: only a kernel's BTF names them.
            events: Vec::new(),
            enable_states: owned(&[
                ("SCX_ENABLING", 0),
                ("SCX_ENABLED", 1),
                ("SCX_DISABLING", 2),
                ("SCX_DISABLED", 3),
            ]),
            hz: 250,
        }
    }
}

impl Names {
    /// Names from a kernel's BTF, falling back to the defaults per enum.
    pub fn from_btf(btf: &crate::kernel::btf::KernelBtf, hz: Option<u64>) -> Self {
        let d = Self::default();
        let or =
            |v: Vec<(String, i64)>, dflt: Vec<(String, i64)>| if v.is_empty() { dflt } else { v };
        Self {
            exit_kinds: or(btf.enum_members("scx_exit_kind"), d.exit_kinds),
            task_flags: or(btf.enum_members("scx_ent_flags"), d.task_flags),
            rq_flags: or(btf.enum_members("scx_rq_flags"), d.rq_flags),
            events: btf.struct_members("scx_event_stats"),
            enable_states: or(btf.enum_members("scx_enable_state"), d.enable_states),
            hz: hz.unwrap_or(d.hz),
        }
    }

    /// The value of task flag `name` (`SCX_TASK_QUEUED`, ...), if known.
    pub fn task_flag(&self, name: &str) -> Option<i64> {
        self.task_flags
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    /// `SCX_EXIT_*` name of `kind`, or its number.
    pub fn exit_kind(&self, kind: u32) -> String {
        self.exit_kinds
            .iter()
            .find(|(_, v)| *v == i64::from(kind))
            .map_or_else(|| kind.to_string(), |(n, _)| n.clone())
    }

    /// Names of the single-bit task flags set in `flags`, then the task
    /// state (`SCX_TASK_ENABLED` ...).
    pub fn task_flags(&self, flags: u32) -> Vec<String> {
        let get = |n: &str| {
            self.task_flags
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| *v)
        };
        let mask = get("SCX_TASK_STATE_MASK").unwrap_or(0) as u32;
        let mut out = bits(&self.task_flags, flags & !mask, |n| {
            !n.contains("STATE") && !n.contains("REENQ")
        });
        let state = i64::from(flags & mask);
        let states = [
            "SCX_TASK_NONE",
            "SCX_TASK_INIT_BEGIN",
            "SCX_TASK_INIT",
            "SCX_TASK_READY",
            "SCX_TASK_ENABLED",
            "SCX_TASK_DEAD",
        ];
        if let Some((n, _)) = self
            .task_flags
            .iter()
            .find(|(n, v)| *v == state && states.contains(&n.as_str()))
        {
            out.push(n.clone());
        }
        out
    }

    /// Names of the `SCX_RQ_*` bits set in `flags`.
    pub fn rq_flags(&self, flags: u32) -> Vec<String> {
        bits(&self.rq_flags, flags, |_| true)
    }

    /// Whether `kind` is an error exit (`SCX_EXIT_ERROR` and up): the
    /// kind the kernel writes its own dump for.
    pub fn is_error_exit(&self, kind: u32) -> bool {
        let error = self
            .exit_kinds
            .iter()
            .find(|(n, _)| n == "SCX_EXIT_ERROR")
            .map_or(1024, |(_, v)| *v);
        i64::from(kind) >= error
    }

    /// `SCX_*` name of enable state `v`, or its number.
    pub fn enable_state(&self, v: u32) -> String {
        self.enable_states
            .iter()
            .find(|(_, x)| *x == i64::from(v))
            .map_or_else(|| v.to_string(), |(n, _)| n.clone())
    }

    /// Ticks to milliseconds.
    pub fn jiffies_to_ms(&self, jiffies: u64) -> u64 {
        jiffies.saturating_mul(1000) / self.hz.max(1)
    }
}

/// Names of single-bit constants set in `value`, plus `0x..` for bits no
/// constant names.
fn bits(table: &[(String, i64)], value: u32, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut known = 0u32;
    for (n, v) in table {
        let v = *v as u32;
        if v.is_power_of_two() && keep(n) && value & v != 0 {
            out.push(n.clone());
            known |= v;
        }
    }
    if value & !known != 0 {
        out.push(std::format!("{:#x}", value & !known));
    }
    out
}

/// A task's scheduling class. JSON shows it as the kernel's short name
/// (`ext`, `fair`, ...) or, for a pointer no class symbol matches, the
/// pointer in hex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedClass {
    /// `ext_sched_class`: sched_ext.
    Ext,
    /// `fair_sched_class`: CFS/EEVDF.
    Fair,
    /// `rt_sched_class`.
    Rt,
    /// `dl_sched_class`.
    Dl,
    /// `idle_sched_class`.
    Idle,
    /// `stop_sched_class`.
    Stop,
    /// A pointer no known class symbol has.
    Unknown(u64),
}

const CLASSES: [(SchedClass, &str); 6] = [
    (SchedClass::Ext, "ext"),
    (SchedClass::Fair, "fair"),
    (SchedClass::Rt, "rt"),
    (SchedClass::Dl, "dl"),
    (SchedClass::Idle, "idle"),
    (SchedClass::Stop, "stop"),
];

impl SchedClass {
    /// The class a `sched_class` pointer designates.
    pub fn of(symbols: &Symbols, ptr: u64) -> Self {
        [
            (symbols.ext_sched_class, SchedClass::Ext),
            (symbols.fair_sched_class, SchedClass::Fair),
            (symbols.rt_sched_class, SchedClass::Rt),
            (symbols.dl_sched_class, SchedClass::Dl),
            (symbols.idle_sched_class, SchedClass::Idle),
            (symbols.stop_sched_class, SchedClass::Stop),
        ]
        .into_iter()
        .find(|(a, _)| *a == Some(ptr))
        .map_or(SchedClass::Unknown(ptr), |(_, c)| c)
    }
}

impl core::fmt::Display for SchedClass {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match CLASSES.iter().find(|(c, _)| c == self) {
            Some((_, n)) => f.write_str(n),
            None => match self {
                SchedClass::Unknown(p) => write!(f, "{p:#x}"),
                _ => Ok(()),
            },
        }
    }
}

impl core::str::FromStr for SchedClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((c, _)) = CLASSES.iter().find(|(_, n)| *n == s) {
            return Ok(*c);
        }
        s.strip_prefix("0x")
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .map(SchedClass::Unknown)
            .ok_or_else(|| std::format!("{s:?} is neither a sched class name nor a hex pointer"))
    }
}

impl serde::Serialize for SchedClass {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SchedClass {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
