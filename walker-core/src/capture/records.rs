//! What a capture records: raw values, copied while paused, decoded later.
//!
//! Every record is plain `Copy` data with a `Default`, so callers can
//! provide storage as arrays. Kernel pointers are kept as addresses; the
//! render phase resolves them (a task's `dsq` to a DSQ's id and origin, its
//! sched class to a name).

/// A NUL-padded kernel string (`comm`, an ops name, an exit reason) up to
/// its first NUL, as UTF-8 when it is (kernel strings are bytes).
pub fn kernel_str(bytes: &[u8]) -> Result<&str, core::str::Utf8Error> {
    core::str::from_utf8(kernel_bytes(bytes))
}

/// A NUL-padded kernel string's bytes up to its first NUL.
pub fn kernel_bytes(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    bytes.get(..end).unwrap_or_default()
}

/// Why a pass (or one item of it) could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Nothing went wrong.
    #[default]
    None,
    /// A symbol the pass needs is unknown.
    MissingSymbol(&'static str),
    /// A layout group the pass needs is absent.
    MissingGroup(&'static str),
    /// A kernel virtual address could not be translated or read.
    Unreadable(u64),
    /// A value read from the guest is impossible (e.g. a bucket count that
    /// is not a power of two).
    Corrupt(u64),
    /// The capture's target has another layout than the one its
    /// [`super::Capturer`] was planned for: nothing was read.
    LayoutMismatch,
}

impl Fault {
    /// Whether this records a fault.
    pub fn is_fault(&self) -> bool {
        *self != Fault::None
    }
}

/// How a bounded list walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListHealth {
    /// Entries recorded.
    pub entries: u32,
    /// Iterator cursors skipped.
    pub cursors: u32,
    /// The step bound or the buffer ended the walk early.
    pub truncated: bool,
    /// A cycle that does not pass through the head was found.
    pub cycle: bool,
    /// A pointer that could not be followed, if any.
    pub fault: Fault,
}

/// A range of entries in one of the capture's shared address buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// First index.
    pub start: u32,
    /// Number of entries.
    pub len: u32,
}

/// Where a DSQ lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DsqOrigin {
    /// `rq->scx.local_dsq` of this CPU.
    Local(u32),
    /// The global DSQ of this NUMA node.
    Global(u32),
    /// This CPU's bypass DSQ.
    Bypass(u32),
    /// Created by the BPF scheduler (`scx_bpf_create_dsq`), found in the
    /// scheduler's DSQ hash table.
    #[default]
    User,
}

/// One dispatch queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DsqRecord {
    /// Kernel address of the `scx_dispatch_q`.
    pub addr: u64,
    /// Where it lives.
    pub origin: DsqOrigin,
    /// `dsq->id`.
    pub id: u64,
    /// `dsq->nr`: the kernel's count of queued tasks.
    pub nr: u32,
    /// `dsq->seq`.
    pub seq: u32,
    /// Queued task addresses, in list order, in [`super::CaptureBuf::queued`].
    pub tasks: Span,
    /// How the list walk ended.
    pub walk: ListHealth,
}

/// One CPU's runqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuRecord {
    /// CPU number.
    pub cpu: u32,
    /// Kernel address of its `struct rq`.
    pub rq: u64,
    /// `rq->nr_running`.
    pub nr_running: u32,
    /// `rq->clock` (ns).
    pub clock: u64,
    /// `rq->curr`.
    pub curr: u64,
    /// The current task's `pid`, read while paused (`None`: unreadable).
    pub curr_pid: Option<i32>,
    /// The current task's `comm`, NUL-padded (see [`kernel_str`]).
    pub curr_comm: [u8; 16],
    /// The current task's `sched_class` pointer (0: unreadable).
    pub curr_class: u64,
    /// `rq->idle`, when the layout has it.
    pub idle: Option<u64>,
    /// `rq->scx.nr_running`.
    pub scx_nr_running: u32,
    /// `rq->scx.flags`.
    pub scx_flags: u32,
    /// `rq->scx.cpu_released`.
    pub cpu_released: Option<bool>,
    /// `rq->scx.ops_qseq`.
    pub ops_qseq: Option<u64>,
    /// `rq->scx.clock`.
    pub scx_clock: Option<u64>,
    /// `rq->scx.cpuperf_target`.
    pub cpuperf_target: Option<u32>,
    /// `rq->scx.nr_immed`.
    pub nr_immed: Option<u32>,
    /// Whether this CPU's `scx_event_stats` bytes were read (see
    /// [`super::CaptureBuf::events`]).
    pub events: bool,
    /// Its pending kicks.
    pub kick: super::kick::KickMasks,
    /// Index of its local DSQ in [`super::CaptureBuf::dsqs`].
    pub local_dsq: Option<u32>,
    /// Tasks on `rq->scx.runnable_list`, in [`super::CaptureBuf::runnable`].
    pub runnable: Span,
    /// How the runnable-list walk ended.
    pub runnable_walk: ListHealth,
    /// Why this CPU could not be read (fully), if it could not.
    pub fault: Fault,
}

/// One task on `scx_tasks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskRecord {
    /// Kernel address of the `task_struct`.
    pub addr: u64,
    /// `pid`.
    pub pid: i32,
    /// `tgid`.
    pub tgid: i32,
    /// `comm`, NUL-padded.
    pub comm: [u8; 16],
    /// `__state`.
    pub state: u32,
    /// `on_rq` (0, 1 = queued, 2 = migrating).
    pub on_rq: u8,
    /// `on_cpu`.
    pub on_cpu: Option<u8>,
    /// `task_cpu()`.
    pub cpu: Option<u32>,
    /// `sched_class` pointer.
    pub sched_class: u64,
    /// `scx.flags`.
    pub scx_flags: u32,
    /// `scx.ops_state`.
    pub ops_state: u64,
    /// `scx.dsq`: the DSQ the task is queued on (0: none).
    pub dsq: u64,
    /// `scx.weight`.
    pub weight: u32,
    /// `scx.slice` (ns).
    pub slice: u64,
    /// `scx.dsq_vtime`.
    pub dsq_vtime: u64,
    /// `scx.sticky_cpu`.
    pub sticky_cpu: Option<i32>,
    /// `scx.holding_cpu`.
    pub holding_cpu: Option<i32>,
    /// `scx.runnable_at` (jiffies).
    pub runnable_at: u64,
    /// `prio`.
    pub prio: Option<i32>,
    /// `static_prio`.
    pub static_prio: Option<i32>,
    /// `normal_prio`.
    pub normal_prio: Option<i32>,
    /// `nr_cpus_allowed`.
    pub nr_cpus_allowed: Option<i32>,
    /// The first 64 CPUs of `cpus_ptr`'s mask, when it points at the
    /// task's own `cpus_mask` (it does unless migration is disabled or
    /// the kernel changed it): read with the task, no extra read.
    pub cpus_mask: Option<u64>,
    /// `scx.dsq_flags`.
    pub dsq_flags: Option<u32>,
    /// `scx.ops_qseq` (7.x).
    pub ops_qseq: Option<u32>,
    /// `migration_disabled`: nesting of `migrate_disable()`; non-zero pins
    /// the task to its CPU whatever the scheduler asks.
    pub migration_disabled: Option<u16>,
    /// `cgroups`: the task's `css_set` (0: unknown).
    pub css_set: u64,
}

/// Longest cgroup path kept, in bytes.
pub const CGROUP_PATH_LEN: usize = 128;

/// The default-hierarchy cgroup of one `css_set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupRecord {
    /// The `css_set` tasks point at.
    pub css_set: u64,
    /// Its cgroup's path (`/a/b`; `/` for the root), possibly cut short.
    pub path: [u8; CGROUP_PATH_LEN],
    /// Bytes of `path` used.
    pub len: u8,
    /// Why the path is incomplete, if it is.
    pub fault: Fault,
}

impl Default for CgroupRecord {
    fn default() -> Self {
        Self {
            css_set: 0,
            path: [0; CGROUP_PATH_LEN],
            len: 0,
            fault: Fault::None,
        }
    }
}

/// Longest scheduler name kept (`SCX_OPS_NAME_LEN`).
pub const OPS_NAME_LEN: usize = 128;
/// Bytes of the exit reason kept.
pub const EXIT_REASON_LEN: usize = 64;
/// Bytes of the exit message kept.
pub const EXIT_MSG_LEN: usize = 256;

/// Most return addresses of the exit backtrace kept (`SCX_EXIT_BT_LEN`).
pub const EXIT_BT_LEN: usize = 64;
/// Bytes of the kernel's exit dump text kept: the kernel's default
/// `exit_dump_len` (`SCX_EXIT_DUMP_DFL_LEN`).
pub const EXIT_DUMP_LEN: usize = 32 << 10;
/// Bytes of one CPU's `struct scx_event_stats` kept (7.3 has 168).
pub const EVENT_BYTES: usize = 256;

/// sched_ext's kernel-wide state, kept in globals whatever scheduler is
/// attached; `None` where this kernel has no such global.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GlobalsRecord {
    /// `scx_enable_state_var` (`enum scx_enable_state`).
    pub enable_state: Option<u32>,
    /// `scx_enable_seq`.
    pub enable_seq: Option<u64>,
    /// `scx_nr_rejected`.
    pub nr_rejected: Option<u64>,
    /// `scx_switching_all`.
    pub switching_all: Option<bool>,
    /// `__scx_switched_all` is enabled.
    pub switched_all: Option<bool>,
    /// `scx_bypass_depth` (kernels that keep it global).
    pub bypass_depth: Option<i32>,
    /// `scx_breather_depth`.
    pub breather_depth: Option<i32>,
}

/// The attached scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedRecord {
    /// `scx_root` (0: no scheduler attached).
    pub root: u64,
    /// `ops.name`, NUL-padded.
    pub ops_name: [u8; OPS_NAME_LEN],
    /// `exit_kind` (0: still running).
    pub exit_kind: u32,
    /// `bypass_depth`.
    pub bypass_depth: Option<i32>,
    /// `aborting`.
    pub aborting: Option<bool>,
    /// `watchdog_timeout` (jiffies).
    pub watchdog_timeout: Option<u64>,
    /// `exit_info->exit_code`.
    pub exit_code: Option<i64>,
    /// `exit_info->reason`, NUL-padded.
    pub exit_reason: [u8; EXIT_REASON_LEN],
    /// `exit_info->msg`, NUL-padded.
    pub exit_msg: [u8; EXIT_MSG_LEN],
    /// `exit_info->exit_cpu`.
    pub exit_cpu: Option<i32>,
    /// `exit_info->flags`.
    pub exit_flags: Option<u64>,
    /// `exit_info->bt_len`: return addresses the kernel recorded (those
    /// kept are in [`super::CaptureBuf::exit_bt`]).
    pub exit_bt_len: Option<u32>,
    /// Kernel-wide state.
    pub globals: GlobalsRecord,
    /// Why the scheduler could not be read, if it could not.
    pub fault: Fault,
}

impl Default for SchedRecord {
    fn default() -> Self {
        Self {
            root: 0,
            ops_name: [0; OPS_NAME_LEN],
            exit_kind: 0,
            bypass_depth: None,
            aborting: None,
            watchdog_timeout: None,
            exit_code: None,
            exit_reason: [0; EXIT_REASON_LEN],
            exit_msg: [0; EXIT_MSG_LEN],
            exit_cpu: None,
            exit_flags: None,
            exit_bt_len: None,
            globals: GlobalsRecord::default(),
            fault: Fault::None,
        }
    }
}

/// Bytes of a CPU's rq and rq->scx reads kept between the two phases of a
/// capture: room for two reads planned within half of it each.
pub const CPU_BYTES: usize = 1024;

/// Bytes of a task's reads kept between the two phases of a capture.
pub const TASK_BYTES: usize = 512;

/// One CPU's bytes between the two phases of a capture.
pub(crate) type CpuBytes = [u8; CPU_BYTES];

/// One task's bytes between the two phases of a capture.
pub(crate) type TaskBytes = [u8; TASK_BYTES];
