//! Capturing sched_ext state while the guest is paused: raw values into
//! caller-provided fixed-capacity storage, no allocation, no formatting.

pub mod buf;

pub use buf::Slots;
pub mod records;

pub use records::{
    CpuRecord, DsqOrigin, DsqRecord, Fault, ListHealth, SchedRecord, Span, TaskRecord,
};
