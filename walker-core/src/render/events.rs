//! sched_ext's event counters (`SCX_EV_*`): each CPU's `struct
//! scx_event_stats`, named from the kernel's BTF, and their sums.

use std::string::String;
use std::vec::Vec;

use serde::{Deserialize, Serialize};

use super::Names;
use crate::capture::{CaptureBuf, EVENT_BYTES};

/// One counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCount {
    /// Its `SCX_EV_*` name.
    pub name: String,
    /// Its value (an `s64`).
    pub value: i64,
}

/// The counters in one CPU's bytes, by the names BTF gave.
pub(super) fn decode(bytes: &[u8; EVENT_BYTES], names: &Names) -> Vec<EventCount> {
    names
        .events
        .iter()
        .filter_map(|(name, off)| {
            let at = *off as usize;
            let v = bytes.get(at..at.checked_add(8)?)?;
            Some(EventCount {
                name: name.clone(),
                value: i64::from_le_bytes(v.try_into().ok()?),
            })
        })
        .collect()
}

/// The counters summed over every CPU that has them (`None`: none has,
/// or this kernel's BTF names none), as `scx_read_events` sums them.
pub(super) fn sum(buf: &CaptureBuf<'_>, names: &Names) -> Option<Vec<EventCount>> {
    let mut total: Option<Vec<EventCount>> = None;
    for i in 0..buf.cpus.len() {
        let Some(bytes) = buf.events(i) else {
            continue;
        };
        let cpu = decode(bytes, names);
        match &mut total {
            None => total = Some(cpu),
            Some(t) => {
                for (a, b) in t.iter_mut().zip(cpu) {
                    a.value = a.value.wrapping_add(b.value);
                }
            }
        }
    }
    total.filter(|t| !t.is_empty())
}
