//! A test VM from boot to power-off: resolve the kernel, build the
//! initramfs, boot it on the QEMU backend, follow the agent through the
//! scheduler's attach and the workload, capture the sched_ext state while
//! the guest is frozen, and collect the results.

mod config;
mod error;
mod start;

use std::path::Path;
use std::time::Duration;

use ktstr_walker::Symbols;
use ktstr_walker::discover::{Discovered, VcpuRegs};
use ktstr_walker::embed::{Dumper, Pause};
use ktstr_walker::render::Report;

pub use config::{CMDLINE, SchedulerConfig, SessionConfig, TCG_CMDLINE};
pub use error::SessionError;

use crate::agent::proto::{Msg, SchedExtState, WorkerInfo, WorkerResult};
use crate::guest::GuestKernel;
use crate::machine::Machine;
use crate::vm::{Backend, PauseWindow};

/// The scheduler as the guest reported its attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Its pid.
    pub pid: i32,
    /// `/sys/kernel/sched_ext/root/ops`.
    pub ops: String,
}

/// What the guest reported at the end.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Per worker.
    pub workers: Vec<WorkerResult>,
    /// sched_ext after the workload.
    pub sched_ext: SchedExtState,
    /// How the scheduler ended, if before it was stopped.
    pub scheduler_exit: Option<String>,
    /// The tail of its output.
    pub scheduler_output: String,
    /// Each CPU's busy share per 500 ms window, in thousandths
    /// (`u16::MAX`: offline).
    pub cpu_busy: Vec<Vec<u16>>,
}

/// Where the time to a running workload went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StartPhases {
    /// Resolving the kernel, the initramfs.
    pub prepare_ms: u64,
    /// From starting the VMM to the agent's hello and kallsyms (the host
    /// reads the kernel's BTF and symbols meanwhile).
    pub boot_ms: u64,
    /// Starting the scheduler until it attached (0 without one).
    pub attach_ms: u64,
    /// Creating cgroups and starting the workers.
    pub start_workers_ms: u64,
    /// The guest started from a snapshot of its boot (`boot_ms` is then
    /// QEMU loading it and the agent's first words).
    #[serde(default)]
    pub restored: bool,
}

/// A booted VM whose workload is running.
pub struct Session {
    vm: Machine,
    /// Found on first use (from guest memory and the first vCPU's CR3).
    dumper: Option<Dumper>,
    guest: GuestKernel,
    /// The guest's own `/proc/kallsyms` (for `ktstr dump` users and as a
    /// check of what discovery finds).
    symbols: Symbols,
    duration: Duration,
    /// `uname -r` in the guest.
    pub release: String,
    /// CPUs online in the guest.
    pub nr_cpus: u32,
    /// NUMA nodes the guest sees.
    pub numa_nodes: u32,
    /// KASLR's shift of the kernel image: runtime `_text` minus the
    /// vmlinux's link-time `.text` address.
    pub kernel_offset: Option<u64>,
    /// The scheduler, when one was asked for.
    pub attached: Option<Attached>,
    /// The workers, as started.
    pub workers: Vec<WorkerInfo>,
    /// sched_ext as the guest read it once the workers ran.
    pub sched_ext: SchedExtState,
    /// Where the start's time went.
    pub phases: StartPhases,
}

impl Session {
    /// The dumper for this boot, found once (KASLR, page tables, symbols
    /// from guest memory and the first vCPU's CR3) and reused: a monitor
    /// samples ten times a second.
    fn dumper(&mut self) -> Result<Dumper, SessionError> {
        if let Some(d) = self.dumper.take() {
            return Ok(d);
        }
        let root = self.vm.root()?;
        let guest = &self.guest;
        Ok(self.vm.with_live_mem(|mem| guest.dumper(mem, root))?)
    }

    /// The symbols the guest's own `/proc/kallsyms` gave (discovery
    /// finds them without the guest; this is the guest's word, to check
    /// against).
    pub fn kallsyms_symbols(&self) -> &Symbols {
        &self.symbols
    }

    /// Discovery from the given registers, over live memory, without
    /// touching this session's dumper (tests try other vCPU states).
    pub fn discover_with(&self, regs: VcpuRegs) -> Result<Discovered, SessionError> {
        let kernel = self.guest.kernel();
        Ok(self.vm.with_live_mem(|mem| kernel.discover(mem, regs))?)
    }

    /// What discovery found in this guest (it runs on first use).
    pub fn discovered(&mut self) -> Result<Discovered, SessionError> {
        let d = self.dumper()?;
        let found = *d.discovered();
        self.dumper = Some(d);
        Ok(found)
    }

    /// Read the sched_ext state while the guest runs (for the monitor):
    /// no pause, and values may be caught mid-update.
    pub fn sample(&mut self) -> Result<Report, SessionError> {
        let mut dumper = self.dumper()?;
        let (report, needed) = self.vm.with_live_mem(|mem| {
            let c = dumper.capture(mem);
            let needed = c.needed();
            (c.report(None), needed)
        });
        grow(&mut dumper, needed);
        self.dumper = Some(dumper);
        Ok(report)
    }

    /// The run's end, if the guest reported it already (no waiting).
    pub fn poll_finished(&mut self) -> Result<bool, SessionError> {
        Ok(self
            .vm
            .poll_for("the workload to finish", |m| {
                matches!(m, Msg::Finished { .. } | Msg::Error { .. })
            })?
            .is_some())
    }

    /// Freeze the guest, capture its sched_ext state (and write an ELF core
    /// to `core` while still frozen, when given), thaw, and render; the
    /// report and where the pause went. A capture that ran out of room
    /// tells the dumper how much it needs; the room is made after the
    /// thaw, for the next capture.
    pub fn capture(&mut self, core: Option<&Path>) -> Result<(Report, PauseWindow), SessionError> {
        let mut dumper = self.dumper()?;
        let d = &mut dumper;
        let (captured, pause) = match self
            .vm
            .frozen(core, move |mem, vcpus| d.capture_with(mem, vcpus))
        {
            Ok(v) => v,
            Err(e) => {
                self.dumper = Some(dumper);
                return Err(e.into());
            }
        };
        let needed = captured.needed();
        // Decoding is done after the thaw.
        let ns = |us: u64| Some(us * 1000);
        let p = Pause {
            total_ns: ns(pause.total_us),
            stop_ns: ns(pause.stop_us),
            resume_ns: ns(pause.resume_us),
        };
        // The BPF scheduler's BTF and larger maps: read from the running
        // guest (the report says which maps were read when).
        let report = self
            .vm
            .with_live_mem(|mem| captured.report_after_thaw(Some(p), mem));
        grow(&mut dumper, needed);
        self.dumper = Some(dumper);
        Ok((report, pause))
    }

    /// Which backend runs the guest.
    pub fn backend(&self) -> Backend {
        self.vm.backend()
    }

    /// The symbols of this boot, in kallsyms format (for `ktstr dump`).
    pub fn kallsyms_text(&self) -> String {
        self.vm
            .messages
            .iter()
            .find_map(|m| match m {
                Msg::Kallsyms { text } => Some(text.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The guest console so far.
    pub fn console(&self) -> String {
        self.vm.console()
    }

    /// Wait for the workload's end and the guest's power-off.
    pub fn finish(self) -> Result<Finished, SessionError> {
        let wait = self.duration + Duration::from_secs(90);
        self.finish_within(wait)
    }

    /// [`Session::finish`], waiting at most `wait` (a shell: as long as
    /// its user likes).
    pub fn finish_within(mut self, wait: Duration) -> Result<Finished, SessionError> {
        const WAITING: &str = "the workload to finish";
        // `poll_finished` may have taken the end (or the agent's error)
        // already.
        let done = |m: &Msg| matches!(m, Msg::Finished { .. } | Msg::Error { .. });
        let msg = match self.vm.messages.iter().find(|m| done(m)) {
            Some(Msg::Error { message }) => {
                return Err(SessionError::Agent {
                    waiting: WAITING,
                    message: message.clone(),
                });
            }
            Some(m) => m.clone(),
            None => start::next(&mut self.vm, WAITING, wait, done)?,
        };
        let Msg::Finished {
            workers,
            sched_ext,
            scheduler_exit,
            scheduler_output,
            cpu_busy,
        } = msg
        else {
            return Err(start::unexpected(WAITING, msg));
        };
        self.vm.wait_exit(Duration::from_secs(30))?;
        Ok(Finished {
            workers,
            sched_ext,
            scheduler_exit,
            scheduler_output,
            cpu_busy,
        })
    }
}

/// Make room for what the last capture saw, for the next one.
fn grow(dumper: &mut Dumper, needed: ktstr_walker::capture::storage::Capacity) {
    let have = dumper.capacity();
    let more = |need: usize, have: usize| {
        if need > have {
            need.next_power_of_two()
        } else {
            have
        }
    };
    let want = ktstr_walker::capture::storage::Capacity {
        cpus: more(needed.cpus, have.cpus),
        dsqs: more(needed.dsqs, have.dsqs),
        queued: more(needed.queued, have.queued),
        runnable: more(needed.runnable, have.runnable),
        tasks: more(needed.tasks, have.tasks),
        cgroups: more(needed.cgroups, have.cgroups),
    };
    dumper.reserve(want);
}
