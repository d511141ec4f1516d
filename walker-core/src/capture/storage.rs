//! Heap-backed storage for a [`CaptureBuf`] (feature `alloc`): allocate it
//! before pausing the guest, capture into it while paused.

use alloc::vec;
use alloc::vec::Vec;

use super::bpf::{BpfMapRecord, BpfProgRecord};
use super::{
    CPU_BYTES, CaptureBuf, CgroupRecord, CpuRecord, DsqRecord, EVENT_BYTES, EXIT_BT_LEN,
    EXIT_DUMP_LEN, TASK_BYTES, TaskRecord,
};

/// Capacities of a capture's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// CPU records.
    pub cpus: usize,
    /// DSQ records.
    pub dsqs: usize,
    /// Task addresses queued on DSQs, over all DSQs.
    pub queued: usize,
    /// Task addresses on runnable lists, over all CPUs.
    pub runnable: usize,
    /// Task records.
    pub tasks: usize,
    /// Distinct cgroups of those tasks.
    pub cgroups: usize,
}

impl Capacity {
    /// Room for `nr_cpus` CPUs (local and bypass DSQs each), 1024 more
    /// DSQs, `tasks` tasks everywhere, and 1024 cgroups.
    pub fn for_guest(nr_cpus: usize, tasks: usize) -> Self {
        Self {
            cpus: nr_cpus,
            dsqs: nr_cpus.saturating_mul(2).saturating_add(1024),
            queued: tasks,
            runnable: tasks,
            tasks,
            cgroups: 1024,
        }
    }
}

/// Owned buffers for one capture at a time.
#[derive(Debug, Clone)]
pub struct CaptureStorage {
    cpus: Vec<CpuRecord>,
    /// [`CPU_BYTES`] per CPU record: zeroed pages, committed as used.
    cpu_bytes: Vec<u8>,
    dsqs: Vec<DsqRecord>,
    queued: Vec<u64>,
    runnable: Vec<u64>,
    tasks: Vec<TaskRecord>,
    /// [`TASK_BYTES`] per task record.
    task_bytes: Vec<u8>,
    cgroups: Vec<CgroupRecord>,
    exit_bt: Vec<u64>,
    exit_dump: Vec<u8>,
    /// [`EVENT_BYTES`] per CPU record.
    events: Vec<u8>,
    /// One per CPU: the vCPUs, when the caller gives their registers.
    vcpus: Vec<super::vcpus::VcpuRecord>,
    bpf_maps: Vec<BpfMapRecord>,
    bpf_progs: Vec<BpfProgRecord>,
    bpf_bytes: Vec<u8>,
}

/// BPF maps a capture records (every map on `map_idr`).
pub const BPF_MAPS: usize = 512;
/// Programs of the scheduler a capture records.
pub const BPF_PROGS: usize = 128;
/// Bytes of the scheduler's small maps' values read while paused.
pub const BPF_BYTES: usize = 64 << 10;

impl CaptureStorage {
    /// The capacities these buffers were made with.
    pub fn capacity(&self) -> Capacity {
        Capacity {
            cpus: self.cpus.len(),
            dsqs: self.dsqs.len(),
            queued: self.queued.len(),
            runnable: self.runnable.len(),
            tasks: self.tasks.len(),
            cgroups: self.cgroups.len(),
        }
    }

    /// Buffers of the given capacities.
    pub fn new(c: Capacity) -> Self {
        Self {
            cpus: vec![CpuRecord::default(); c.cpus],
            cpu_bytes: vec![0; c.cpus.saturating_mul(CPU_BYTES)],
            dsqs: vec![DsqRecord::default(); c.dsqs],
            queued: vec![0; c.queued],
            runnable: vec![0; c.runnable],
            tasks: vec![TaskRecord::default(); c.tasks],
            task_bytes: vec![0; c.tasks.saturating_mul(TASK_BYTES)],
            cgroups: vec![CgroupRecord::default(); c.cgroups],
            exit_bt: vec![0; EXIT_BT_LEN],
            exit_dump: vec![0; EXIT_DUMP_LEN],
            events: vec![0; c.cpus.saturating_mul(EVENT_BYTES)],
            vcpus: vec![super::vcpus::VcpuRecord::default(); c.cpus],
            bpf_maps: vec![BpfMapRecord::default(); BPF_MAPS],
            bpf_progs: vec![BpfProgRecord::default(); BPF_PROGS],
            bpf_bytes: vec![0; BPF_BYTES],
        }
    }

    /// A capture buffer over this storage.
    pub fn buf(&mut self) -> CaptureBuf<'_> {
        CaptureBuf::new(
            &mut self.cpus,
            &mut self.cpu_bytes,
            &mut self.dsqs,
            &mut self.queued,
            &mut self.runnable,
            &mut self.tasks,
            &mut self.task_bytes,
            &mut self.cgroups,
        )
        .with_exit(&mut self.exit_bt, &mut self.exit_dump)
        .with_events(&mut self.events)
        .with_vcpus(&mut self.vcpus)
        .with_bpf(&mut self.bpf_maps, &mut self.bpf_progs, &mut self.bpf_bytes)
    }
}
