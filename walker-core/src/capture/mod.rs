//! Capturing sched_ext state while the guest is paused: raw values into
//! caller-provided fixed-capacity storage ([`CaptureBuf`]), no allocation,
//! no formatting, only the reads that are needed. Each pass (scheduler,
//! CPUs, DSQs, tasks) runs whatever the others' failures; what a pass could
//! not do is recorded as a [`Fault`] in [`Health`]. The members of CPUs
//! and tasks are kept as the bytes read and decoded once the guest runs
//! again ([`Capturer::capture_raw`], then [`Capturer::decode`]).

pub mod bpf;
pub mod buf;
mod cgroups;
mod cpus;
mod dsq;
pub mod fields;
pub mod kick;
mod pre_root;
pub mod records;
mod sched;
#[cfg(feature = "alloc")]
pub mod storage;
mod tasks;
pub mod vcpus;

pub use buf::Slots;
pub use records::{
    CPU_BYTES, CgroupRecord, CpuRecord, DsqOrigin, DsqRecord, EVENT_BYTES, EXIT_BT_LEN,
    EXIT_DUMP_LEN, Fault, GlobalsRecord, ListHealth, SchedRecord, Span, TASK_BYTES, TaskRecord,
    kernel_bytes, kernel_str,
};
use records::{CpuBytes, TaskBytes};

use crate::layout::Layout;
use crate::mem::{CountingMem, GuestMem};
use crate::symbols::Symbols;
use crate::translate::Translator;
use crate::walk::{Broken, HashLimits, WalkSummary};

/// Kernel constants the passes need that are not offsets. The defaults
/// are the values of 6.12 through 7.x; [`crate::kernel::btf`] can read
/// them from a kernel's enums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consts {
    /// `SCX_DSQ_LNODE_ITER_CURSOR`: a DSQ list node that is a cursor.
    pub dsq_iter_cursor: u32,
    /// `SCX_TASK_CURSOR`: an `scx_tasks` entry that is an iterator cursor.
    pub task_cursor: u32,
    /// `SCX_OPS_DISABLED`: `scx_ops_enable_state_var` with no scheduler
    /// (kernels before `scx_root`).
    pub ops_disabled: u32,
    /// Whether `cpumask_var_t` is a pointer (`CONFIG_CPUMASK_OFFSTACK`)
    /// rather than the bitmap itself.
    pub cpumask_ptr: bool,
    /// BTF id of `struct bpf_struct_ops_sched_ext_ops` in the vmlinux: a
    /// struct_ops map with this `btf_vmlinux_value_type_id` holds a
    /// `sched_ext_ops` (unknown without the kernel's BTF).
    pub sched_ext_ops_value: Option<u32>,
}

impl Default for Consts {
    fn default() -> Self {
        Self {
            dsq_iter_cursor: 1,
            task_cursor: 1 << 31,
            ops_disabled: 3,
            cpumask_ptr: true,
            sched_ext_ops_value: None,
        }
    }
}

/// The guest kernel a capture reads.
#[derive(Debug, Clone, Copy)]
pub struct Target<'k> {
    /// Struct offsets.
    pub layout: &'k Layout,
    /// Symbol addresses (runtime, after any KASLR slide).
    pub symbols: &'k Symbols,
    /// CPUs to read (`nr_cpu_ids`).
    pub nr_cpus: u32,
    /// NUMA nodes (`nr_node_ids`).
    pub nr_nodes: u32,
    /// Non-offset constants.
    pub consts: Consts,
}

/// Bounds on the work of one capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries followed in one DSQ or runnable list.
    pub max_list: u32,
    /// Entries followed on `scx_tasks`.
    pub max_tasks: u32,
    /// Bounds of the user-DSQ hash-table walk.
    pub hash: HashLimits,
    /// Bytes of guest memory one capture may read; reads past it fail
    /// (and show as faults), so a hostile guest cannot make a capture
    /// read without end.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_list: 1 << 14,
            max_tasks: 1 << 17,
            hash: HashLimits::default(),
            // ~1 KiB per task at the task bound, plus the CPUs and DSQs.
            max_bytes: 256 << 20,
        }
    }
}

/// The capture's own cost and health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Health {
    /// Guest reads done.
    pub reads: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Why the scheduler pass could not run, if it could not.
    pub sched: Fault,
    /// Why the per-CPU pass could not run, if it could not.
    pub cpus: Fault,
    /// Why the global/user DSQ pass could not run (fully), if it could not.
    pub dsqs: Fault,
    /// Why the task pass could not run, if it could not.
    pub tasks: Fault,
    /// Why the cgroup pass could not run, if it could not.
    pub cgroups: Fault,
    /// How the `scx_tasks` walk ended.
    pub tasks_walk: ListHealth,
    /// How the user-DSQ hash-table walk ended.
    pub dsq_hash_walk: ListHealth,
    /// Why the BPF pass (maps, programs) could not run, if it could not.
    pub bpf: Fault,
}

/// Caller-provided storage for one capture.
#[derive(Debug)]
pub struct CaptureBuf<'a> {
    /// One record per CPU.
    pub cpus: Slots<'a, CpuRecord>,
    /// Every DSQ found.
    pub dsqs: Slots<'a, DsqRecord>,
    /// Task addresses queued on DSQs ([`DsqRecord::tasks`] indexes here).
    pub queued: Slots<'a, u64>,
    /// Task addresses on runnable lists ([`CpuRecord::runnable`]).
    pub runnable: Slots<'a, u64>,
    /// Every task on `scx_tasks`.
    pub tasks: Slots<'a, TaskRecord>,
    /// The cgroup of every distinct `css_set` of those tasks.
    pub cgroups: Slots<'a, CgroupRecord>,
    /// The scheduler.
    pub sched: SchedRecord,
    /// `jiffies_64` at the capture, when known (runnable ages count from it).
    pub jiffies: Option<u64>,
    /// Cost and health.
    pub health: Health,
    /// The exit backtrace's return addresses (`exit_info->bt`), as many as
    /// fit (see [`CaptureBuf::with_exit`]).
    pub exit_bt: Slots<'a, u64>,
    /// The kernel's exit dump text (`exit_info->dump`), up to its NUL or
    /// the room given.
    exit_dump: &'a mut [u8],
    /// Bytes of `exit_dump` used.
    exit_dump_len: usize,
    /// Each vCPU's registers and kernel stack window, when the caller
    /// gave them ([`vcpus::capture`]).
    pub vcpus: Slots<'a, vcpus::VcpuRecord>,
    /// Each CPU record's `struct scx_event_stats` bytes, by CPU record
    /// (see [`CaptureBuf::with_events`]).
    events: &'a mut [[u8; EVENT_BYTES]],
    /// The bytes of each CPU's rq reads, by CPU record (see [`Capturer::decode`]).
    cpu_bytes: &'a mut [CpuBytes],
    /// The bytes of each task, by task record.
    task_bytes: &'a mut [TaskBytes],
    /// Whether the records hold every value (see [`Capturer::decode`]).
    decoded: bool,
    /// Every BPF map on `map_idr` (see [`CaptureBuf::with_bpf`]).
    pub bpf_maps: Slots<'a, bpf::BpfMapRecord>,
    /// The scheduler's programs.
    pub bpf_progs: Slots<'a, bpf::BpfProgRecord>,
    /// Map values read while paused ([`bpf::BpfMapRecord::values`]).
    bpf_bytes: &'a mut [u8],
    /// Bytes of `bpf_bytes` used.
    bpf_bytes_len: usize,
    /// How the BPF pass went.
    pub bpf: bpf::BpfSummary,
}

impl<'a> CaptureBuf<'a> {
    /// Storage over the given slices; their capacities bound the capture.
    /// A CPU or task record needs [`CPU_BYTES`] of `cpu_bytes` or
    /// [`TASK_BYTES`] of `task_bytes` too, for its object's bytes between
    /// [`Capturer::capture_raw`] and [`Capturer::decode`]: records beyond
    /// them are not used.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cpus: &'a mut [CpuRecord],
        cpu_bytes: &'a mut [u8],
        dsqs: &'a mut [DsqRecord],
        queued: &'a mut [u64],
        runnable: &'a mut [u64],
        tasks: &'a mut [TaskRecord],
        task_bytes: &'a mut [u8],
        cgroups: &'a mut [CgroupRecord],
    ) -> Self {
        let cpu_bytes = cpu_bytes.as_chunks_mut().0;
        let task_bytes = task_bytes.as_chunks_mut().0;
        let cpus = cpus.split_at_mut(cpu_bytes.len().min(cpus.len())).0;
        let tasks = tasks.split_at_mut(task_bytes.len().min(tasks.len())).0;
        Self {
            cpu_bytes,
            task_bytes,
            decoded: true,
            cpus: Slots::new(cpus),
            dsqs: Slots::new(dsqs),
            queued: Slots::new(queued),
            runnable: Slots::new(runnable),
            tasks: Slots::new(tasks),
            cgroups: Slots::new(cgroups),
            sched: SchedRecord::default(),
            jiffies: None,
            health: Health::default(),
            exit_bt: Slots::new(&mut []),
            exit_dump: &mut [],
            exit_dump_len: 0,
            events: &mut [],
            vcpus: Slots::new(&mut []),
            bpf_maps: Slots::new(&mut []),
            bpf_progs: Slots::new(&mut []),
            bpf_bytes: &mut [],
            bpf_bytes_len: 0,
            bpf: bpf::BpfSummary::default(),
        }
    }

    /// Room for `maps` BPF map headers, `progs` programs of the scheduler
    /// and `bytes` of its small maps' values (the paused read's budget);
    /// without it the BPF pass does not run.
    pub fn with_bpf(
        mut self,
        maps: &'a mut [bpf::BpfMapRecord],
        progs: &'a mut [bpf::BpfProgRecord],
        bytes: &'a mut [u8],
    ) -> Self {
        self.bpf_maps = Slots::new(maps);
        self.bpf_progs = Slots::new(progs);
        self.bpf_bytes = bytes;
        self
    }

    /// The bytes of `span` of the map values read while paused.
    pub fn bpf_bytes(&self, span: bpf::ByteSpan) -> Option<&[u8]> {
        let start = span.start as usize;
        self.bpf_bytes
            .get(..self.bpf_bytes_len)?
            .get(start..start.checked_add(span.len as usize)?)
    }

    /// Room for `vcpus` vCPUs' registers and stacks; without it none are
    /// kept.
    pub fn with_vcpus(mut self, vcpus: &'a mut [vcpus::VcpuRecord]) -> Self {
        self.vcpus = Slots::new(vcpus);
        self
    }

    /// Room for the exit's backtrace (`bt`, [`EXIT_BT_LEN`] is the
    /// kernel's most) and the kernel's dump text (`dump`, up to
    /// [`EXIT_DUMP_LEN`] by default); without it neither is read.
    pub fn with_exit(mut self, bt: &'a mut [u64], dump: &'a mut [u8]) -> Self {
        self.exit_bt = Slots::new(bt);
        self.exit_dump = dump;
        self
    }

    /// Room for [`EVENT_BYTES`] of event counters per CPU record; without
    /// it the counters are not read.
    pub fn with_events(mut self, events: &'a mut [u8]) -> Self {
        self.events = events.as_chunks_mut().0;
        self
    }

    /// The kernel's exit dump text as captured (up to its NUL).
    pub fn exit_dump(&self) -> &[u8] {
        self.exit_dump.get(..self.exit_dump_len).unwrap_or_default()
    }

    /// CPU record `i`'s `struct scx_event_stats` bytes, when they were read.
    pub fn events(&self, i: usize) -> Option<&[u8; EVENT_BYTES]> {
        let read = self.cpus.as_slice().get(i)?.events;
        self.events.get(i).filter(|_| read)
    }

    fn reset(&mut self) {
        self.cpus.clear();
        self.dsqs.clear();
        self.queued.clear();
        self.runnable.clear();
        self.tasks.clear();
        self.cgroups.clear();
        self.exit_bt.clear();
        self.vcpus.clear();
        self.exit_dump_len = 0;
        self.bpf_maps.clear();
        self.bpf_progs.clear();
        self.bpf_bytes_len = 0;
        self.bpf = bpf::BpfSummary::default();
        self.sched = SchedRecord::default();
        self.jiffies = None;
        self.health = Health::default();
        self.decoded = false;
    }

    /// Whether every record holds its values: false between
    /// [`Capturer::capture_raw`] and [`Capturer::decode`].
    pub fn is_decoded(&self) -> bool {
        self.decoded
    }
}

/// Capture the sched_ext state of the (paused) guest into `buf`. Plans
/// the reads anew; a [`Capturer`] kept for the kernel plans them once.
pub fn capture<M: GuestMem + ?Sized>(
    mem: &M,
    tr: &mut Translator,
    target: &Target<'_>,
    limits: &Limits,
    buf: &mut CaptureBuf<'_>,
) {
    Capturer::new(target.layout).capture(mem, tr, target, limits, buf);
}

/// Captures of one kernel layout: what the layout decides (each pass's
/// field plans) is worked out once, here, rather than in every capture,
/// where it was the largest fixed cost of a small one. Keep one per
/// kernel, next to its [`Layout`].
#[derive(Debug, Clone)]
pub struct Capturer {
    /// The layout the plans were made for: a target with another is
    /// refused, since its offsets would be read at the planned ones.
    layout: Layout,
    sched: sched::Plans,
    cpus: Result<cpus::Plans, Fault>,
    dsqs: Result<dsq::DsqReader, Fault>,
    tasks: Result<tasks::Plans, Fault>,
    bpf: bpf::Plans,
}

impl Capturer {
    /// Plan the captures of a kernel with layout `l`.
    pub fn new(l: &Layout) -> Self {
        let dsqs = dsq::DsqReader::new(l);
        Self {
            layout: *l,
            sched: sched::Plans::new(l),
            cpus: cpus::Plans::new(l, &dsqs),
            dsqs,
            tasks: tasks::Plans::new(l),
            bpf: bpf::Plans::new(l),
        }
    }

    /// Capture the sched_ext state of the guest into `buf`: both phases,
    /// [`Capturer::capture_raw`] then [`Capturer::decode`]. With a paused
    /// guest, call them apart, with the thaw between them.
    pub fn capture<M: GuestMem + ?Sized>(
        &self,
        mem: &M,
        tr: &mut Translator,
        target: &Target<'_>,
        limits: &Limits,
        buf: &mut CaptureBuf<'_>,
    ) {
        self.capture_raw(mem, tr, target, limits, buf);
        self.decode(buf);
    }

    /// The part of a capture that reads guest memory, for while the guest
    /// is paused: the walks, and each CPU's and task's bytes copied as
    /// read. Until [`Capturer::decode`], a CPU record holds only its CPU,
    /// rq address, DSQ and runnable-list entries, walk health and fault,
    /// and a task record its address and `css_set`; their other fields
    /// are left as they were.
    /// `target.layout` must be the layout this was planned for: with
    /// another, nothing is read and every pass faults with
    /// [`Fault::LayoutMismatch`].
    pub fn capture_raw<M: GuestMem + ?Sized>(
        &self,
        mem: &M,
        tr: &mut Translator,
        target: &Target<'_>,
        limits: &Limits,
        buf: &mut CaptureBuf<'_>,
    ) {
        buf.reset();
        if *target.layout != self.layout {
            let f = Fault::LayoutMismatch;
            let h = &mut buf.health;
            (h.sched, h.cpus, h.dsqs, h.tasks, h.cgroups, h.bpf) = (f, f, f, f, f, f);
            return;
        }
        let counted = CountingMem::new(mem, limits.max_bytes);
        let cx = Cx {
            mem: &counted,
            target,
            limits,
        };
        buf.jiffies = target
            .symbols
            .jiffies_64
            .and_then(|j| tr.read_virt_pod(&counted, j).ok());
        if let Err(f) = sched::capture(&cx, &self.sched, tr, buf) {
            buf.health.sched = f;
        }
        // Shared by the per-CPU and the shared DSQs; its scratch is per capture.
        let mut dsqs = self.dsqs.clone();
        if let Err(f) = cpus::capture(&cx, &self.cpus, tr, buf, &mut dsqs) {
            buf.health.cpus = f;
        }
        if let Err(f) = dsq::capture_shared(&cx, tr, buf, &mut dsqs) {
            buf.health.dsqs = f;
        }
        if let Err(f) = tasks::capture(&cx, &self.tasks, tr, buf) {
            buf.health.tasks = f;
        }
        if let Err(f) = cgroups::capture(&cx, tr, buf) {
            buf.health.cgroups = f;
        }
        if let Err(f) = bpf::capture(&cx, &self.bpf, tr, buf) {
            buf.health.bpf = f;
        }
        buf.health.reads = counted.reads();
        buf.health.bytes = counted.bytes();
    }

    /// The rest of a capture, once the guest runs again: each CPU's and
    /// task's values decoded from the bytes [`Capturer::capture_raw`] of
    /// this capturer copied (no guest reads). Once per capture; later
    /// calls do nothing.
    pub fn decode(&self, buf: &mut CaptureBuf<'_>) {
        if buf.decoded {
            return;
        }
        if let Ok(p) = &self.cpus {
            cpus::decode(p, buf);
        }
        if let Ok(p) = &self.tasks {
            tasks::decode(p, buf);
        }
        buf.decoded = true;
    }
}

/// What every pass reads with.
struct Cx<'c, 'k, M: GuestMem + ?Sized> {
    mem: &'c CountingMem<&'c M>,
    target: &'c Target<'k>,
    limits: &'c Limits,
}

/// A walk's summary as the capture reports it.
fn list_health(s: &WalkSummary) -> ListHealth {
    ListHealth {
        entries: s.visited,
        cursors: s.skipped,
        truncated: s.truncated || s.stopped,
        cycle: s.cycle,
        fault: match s.corrupt {
            None => Fault::None,
            Some(c) => match c.why {
                Broken::Unreadable(_) => Fault::Unreadable(c.at),
                _ => Fault::Corrupt(c.at),
            },
        },
    }
}

/// The pointer at `va`, or the fault naming where it could not be read.
fn read_ptr<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    va: u64,
) -> Result<u64, Fault> {
    tr.read_virt_pod::<u64, _>(cx.mem, va)
        .map_err(|_| Fault::Unreadable(va))
}

/// `ptr - a - b`, for containing objects of embedded members.
#[inline]
fn container_of(ptr: u64, members: &[u32]) -> u64 {
    members
        .iter()
        .fold(ptr, |p, &m| p.wrapping_sub(u64::from(m)))
}
