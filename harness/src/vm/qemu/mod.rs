//! The QEMU backend: one `qemu-system-x86_64` per VM, with guest RAM in
//! memory-backend files the host maps ([`mem::SharedRam`]), the console on
//! COM1 (QEMU's stdout, copied to a bounded file by [`console`]) and the
//! agent channel on COM2 (to a file), QMP on a private
//! socket for freeze (`stop`), thaw (`cont`), registers and core dumps.
//!
//! Hygiene: QEMU gets SIGKILL when the thread that started it dies
//! (`PR_SET_PDEATHSIG`) and on drop; the RAM files are unlinked as soon as
//! both QEMU and the host have them open, so no exit path leaves one
//! behind; stale files of dead ktstr processes are swept at start.

pub(crate) mod console;
pub mod mem;
pub mod snapshot;

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ktstr_walker::GuestMem;
use ktstr_walker::capture::vcpus::VcpuState;
use ktstr_walker::translate::PageTableRoot;

use crate::agent::proto::Msg;
use crate::channel::AgentLog;
use crate::vm::backend::{
    Backend, BootSpec, GuestVm, PauseWindow, SnapshotSpec, VmDir, VmError, io,
};
use crate::vm::qmp::{self, Qmp, QmpError};
use mem::SharedRam;
use snapshot::{Saver, Stored};

/// The QEMU binary.
const QEMU: &str = "qemu-system-x86_64";
/// Where guest RAM files go.
const SHM: &str = "/dev/shm";
const SHM_PREFIX: &str = "ktstr-";

/// Every live VM of this process, for [`kill_all`].
/// A QEMU this process started and has not reaped.
struct Live {
    pid: u32,
    /// A handle on that very process: signals through it cannot reach
    /// another process that later gets the same pid. `None` on kernels
    /// before 5.3.
    pidfd: Option<OwnedFd>,
    dir: PathBuf,
    ram_files: Vec<PathBuf>,
}

static LIVE: Mutex<Vec<Live>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<Live>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: a plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    // SAFETY: `fd` was just returned by pidfd_open and nothing else owns it.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// SIGKILL the process behind `pidfd`; false if it is gone (reaped).
fn pidfd_kill(pidfd: &OwnedFd) -> bool {
    // SAFETY: a plain syscall on an fd we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// Kill every VM this process started and remove its files: for a signal
/// handler (Ctrl-C, SIGTERM) that is about to exit the process, when no
/// destructor will run.
pub fn kill_all() {
    for l in live().drain(..) {
        match &l.pidfd {
            Some(fd) => {
                pidfd_kill(fd);
            }
            // SAFETY: signalling a child we started; without pidfds this is
            // the best there is.
            None => unsafe {
                libc::kill(l.pid as i32, libc::SIGKILL);
            },
        }
        let _ = std::fs::remove_dir_all(l.dir);
        for f in l.ram_files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// A running QEMU.
pub struct QemuVm {
    child: Child,
    dir: VmDir,
    qmp: Qmp,
    ram: Arc<SharedRam>,
    ram_files: Vec<PathBuf>,
    agent: AgentLog,
    /// Copies the console to `console.log` until QEMU exits.
    console: Option<std::thread::JoinHandle<()>>,
    /// The snapshot's boot console, when the guest was restored.
    console_prefix: String,
    /// Where the job goes when the agent is ready.
    job: Option<JobPort>,
    /// Saves this boot when the agent is ready.
    saver: Option<Saver>,
    restored: bool,
}

/// The agent's job port (the guest's third serial port, a socket here)
/// and the job to send on it, once: a guest that says it is ready again
/// gets nothing more (repeated sends would fill the socket and block).
struct JobPort {
    stream: UnixStream,
    frame: String,
    sent: bool,
}

/// A QEMU just started, before it is a [`QemuVm`].
struct Launched {
    child: Child,
    qmp: Qmp,
    ram: SharedRam,
    ram_files: Vec<PathBuf>,
    console: Option<std::thread::JoinHandle<()>>,
    job: Option<JobPort>,
}

/// Guest RAM files, made by us before QEMU opens them: exclusive (no file
/// another user planted is ever used), mode 0600, under names no one can
/// guess; removed on drop (they are unlinked anyway once mapped).
struct RamFiles(Vec<PathBuf>);

impl RamFiles {
    fn create(dir: &Path, nodes: u64) -> Result<RamFiles, VmError> {
        let mut files = RamFiles(Vec::new());
        for n in 0..nodes {
            let file = tempfile::Builder::new()
                .prefix(&format!("{SHM_PREFIX}{}-", std::process::id()))
                .suffix(&format!("-node{n}"))
                .rand_bytes(16)
                .permissions(std::fs::Permissions::from_mode(0o600))
                .tempfile_in(dir)
                .map_err(io(format!(
                    "creating a guest RAM file in {}",
                    dir.display()
                )))?;
            let (_, path) = file
                .keep()
                .map_err(|e| io("keeping a guest RAM file")(e.error))?;
            files.0.push(path);
        }
        Ok(files)
    }
}

impl Drop for RamFiles {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Remove RAM files left by ktstr processes that no longer exist.
fn sweep_stale_ram_files() {
    let Ok(dir) = std::fs::read_dir(SHM) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(SHM_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl QemuVm {
    /// Start QEMU and connect to it; the guest is running when this returns.
    /// `dir` (from [`crate::vm::vm_dir`]) holds the VM's files and goes with it.
    /// With `cfg.snapshot`, a saved snapshot of this boot is started
    /// instead (a snapshot QEMU cannot load is removed and the kernel
    /// booted), or this boot is saved when the agent is ready.
    pub fn start(cfg: &BootSpec, dir: VmDir) -> Result<QemuVm, VmError> {
        sweep_stale_ram_files();
        let mut saver = None;
        if let Some(spec) = &cfg.snapshot {
            let key = snapshot_key(cfg, spec, &dir)?;
            if let Some(stored) = Stored::find(spec, &key) {
                match launch(cfg, &dir, Some(&stored)) {
                    Ok(l) => return Ok(QemuVm::new(l, dir, Some(stored), None)),
                    Err(e) => {
                        tracing::warn!(
                            "cannot start from the snapshot {}, booting the kernel instead (and removing the snapshot): {e}",
                            stored.dir().display()
                        );
                        stored.discard();
                    }
                }
            }
            saver = Saver::try_new(spec, &key);
        }
        let l = launch(cfg, &dir, None)?;
        Ok(QemuVm::new(l, dir, None, saver))
    }

    fn new(l: Launched, dir: VmDir, restored: Option<Stored>, saver: Option<Saver>) -> QemuVm {
        let console_prefix = restored.as_ref().map_or_else(String::new, |s| {
            format!(
                "{}\n[ktstr] restored from the snapshot {}: the boot above is the snapshot's\n",
                s.console().trim_end(),
                s.dir().display()
            )
        });
        QemuVm {
            child: l.child,
            agent: AgentLog::new(dir.path().join("agent.log")),
            dir,
            qmp: l.qmp,
            ram: Arc::new(l.ram),
            ram_files: l.ram_files,
            console: l.console,
            console_prefix,
            job: l.job,
            saver,
            restored: restored.is_some(),
        }
    }

    /// The agent waits for its job: save the snapshot when this VM is to,
    /// then send the job.
    fn agent_ready(&mut self) -> Result<(), VmError> {
        if let Some(saver) = self.saver.take() {
            let t = Instant::now();
            let log = self.dir.path().join("agent.log");
            let bound = dump_timeout(self.ram.size());
            let console = self.console();
            match saver.save(&mut self.qmp, &log, &console, bound) {
                Ok(dir) => tracing::info!(
                    "saved the booted guest as {} in {:.2} s: VMs like this one start from there",
                    dir.display(),
                    t.elapsed().as_secs_f64()
                ),
                Err(e) => tracing::warn!("could not save a snapshot of the booted guest: {e}"),
            }
            self.qmp
                .within(QUICK_TIMEOUT, |q| q.execute("cont", serde_json::json!({})))?;
        }
        let port = self.job.as_mut().ok_or_else(|| {
            VmError::Unsupported(
                "the agent waits for a job on its port, but this VM's job is in the initramfs"
                    .into(),
            )
        })?;
        if std::mem::replace(&mut port.sent, true) {
            return Ok(());
        }
        port.stream
            .write_all(port.frame.as_bytes())
            .map_err(io("sending the agent its job"))
    }

    /// Guest RAM, readable while the VM lives (consistent while frozen).
    pub fn ram(&self) -> Arc<SharedRam> {
        Arc::clone(&self.ram)
    }

    /// Pause every vCPU. The returned guard thaws on [`Frozen::thaw`] or
    /// when dropped, so no error path leaves the guest frozen.
    pub fn freeze(&mut self) -> Result<Frozen<'_>, VmError> {
        let asked = Instant::now();
        match self.qmp.within(QUICK_TIMEOUT, Qmp::stop) {
            Err(QmpError::Timeout { cmd, after }) => {
                return Err(VmError::Timeout {
                    waiting: format!("QEMU to answer QMP {cmd} (freezing the guest)"),
                    secs: after.as_secs(),
                    console: self.console_tail(),
                });
            }
            r => r?,
        }
        Ok(Frozen {
            asked,
            stopped: asked.elapsed(),
            vm: self,
            thawed: false,
        })
    }
}

impl GuestVm for QemuVm {
    fn backend(&self) -> Backend {
        Backend::Qemu
    }

    fn console(&self) -> String {
        let live = read_tail(&self.dir.path().join("console.log"));
        if self.console_prefix.is_empty() {
            live
        } else {
            format!("{}{live}", self.console_prefix)
        }
    }

    fn restored(&self) -> bool {
        self.restored
    }

    fn exited(&mut self, waiting: &str) -> Option<VmError> {
        let status = self.child.try_wait().ok().flatten()?;
        Some(VmError::Exited {
            status: status.to_string(),
            waiting: waiting.to_string(),
            stderr: std::fs::read_to_string(self.dir.path().join("qemu.stderr"))
                .unwrap_or_default(),
            console: self.console_tail(),
        })
    }

    fn poll_agent(&mut self) -> Result<Vec<Msg>, VmError> {
        let mut msgs = self.agent.poll()?;
        let n = msgs.len();
        msgs.retain(|m| !matches!(m, Msg::Ready));
        if msgs.len() < n {
            self.agent_ready()?;
        }
        Ok(msgs)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// From `info registers`; the guest may be running.
    fn root(&mut self) -> Result<PageTableRoot, VmError> {
        let info = self
            .qmp
            .within(QUICK_TIMEOUT, |q| q.hmp("info registers"))?;
        let cr3 = qmp::register(&info, "CR3")
            .ok_or_else(|| QmpError::Protocol(format!("no CR3 in `info registers`: {info}")))?;
        Ok(crate::guest::root(cr3, qmp::register(&info, "CR4")))
    }

    fn live_mem(&self) -> &dyn GuestMem {
        &*self.ram
    }

    fn frozen(
        &mut self,
        core: Option<&Path>,
        capture: &mut dyn FnMut(&dyn GuestMem, &[VcpuState]),
    ) -> Result<PauseWindow, VmError> {
        let ram = self.ram();
        let mut frozen = self.freeze()?;
        let t = Instant::now();
        let vcpus = frozen.registers();
        capture(&*ram, &vcpus);
        if let Some(core) = core {
            frozen.dump_core(core)?;
        }
        let capture = t.elapsed();
        let stop = frozen.stop_time();
        let (resume, total) = frozen.thaw()?;
        Ok(PauseWindow::new(stop, capture, resume, total))
    }

    /// QEMU exits when the guest powers off (`-no-reboot`: or resets).
    fn wait_exit(&mut self, timeout: Duration) -> Result<(), VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .child
                .try_wait()
                .map_err(io("waiting for QEMU"))?
                .is_some()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                return Err(VmError::Timeout {
                    waiting: "the guest to power off".into(),
                    secs: timeout.as_secs(),
                    console: self.console_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Start QEMU for `cfg` with its files in `dir`: booting the kernel, or
/// loading `restore` and resuming it. The guest runs when this returns.
fn launch(cfg: &BootSpec, dir: &VmDir, restore: Option<&Stored>) -> Result<Launched, VmError> {
    let nodes = cfg.topology.numa_nodes as u64;
    let ram_guard = RamFiles::create(Path::new(SHM), nodes)?;
    let ram_files = ram_guard.0.clone();
    let qmp_path = dir.path().join("qmp.sock");
    // QEMU appends to the agent log: a restored guest's starts with what
    // its agent said before the snapshot.
    let agent_log = dir.path().join("agent.log");
    match restore {
        Some(s) => std::fs::copy(s.agent_log(), &agent_log).map(drop),
        None => std::fs::File::create(&agent_log).map(drop),
    }
    .map_err(io("preparing the agent log"))?;
    let mut cmd = command(cfg, dir, &ram_files, node_mib(cfg), &qmp_path)?;
    let state = restore.map(Stored::open_state).transpose()?;
    let inherit = state.as_ref().map(|f| f.as_raw_fd());
    if let Some(fd) = inherit {
        cmd.arg("-incoming").arg(format!("fd:{fd}"));
    }
    // SAFETY: prctl and fcntl are async-signal-safe; nothing else runs in
    // the child. The state file's descriptor is the child's own copy.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(fd) = inherit
                && libc::fcntl(fd, libc::F_SETFD, 0) == -1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    tracing::debug!(?cmd, "starting QEMU");
    let mut child = cmd.spawn().map_err(|err| VmError::Spawn {
        bin: QEMU.into(),
        err,
    })?;
    drop(state);
    let console_log = dir.path().join("console.log");
    let console = match child.stdout.take() {
        Some(out) => match console::spawn(out, &console_log, console::limit()) {
            Ok(h) => Some(h),
            Err(e) => {
                reap(&mut child, &ram_files);
                return Err(io("writing the console log")(e));
            }
        },
        None => None,
    };
    live().push(Live {
        pid: child.id(),
        pidfd: pidfd_open(child.id()),
        dir: dir.path().to_path_buf(),
        ram_files: ram_files.clone(),
    });
    let mut starting = Starting {
        child: Some(child),
        ram_files: &ram_files,
    };
    let mut qmp = connect(&mut starting, &qmp_path, dir.path(), cfg.start_timeout)?;
    if restore.is_some() {
        wait_loaded(&mut starting, &mut qmp, dir.path(), cfg.start_timeout)?;
    }
    let job = match &cfg.job_frame {
        Some(frame) => {
            let stream = UnixStream::connect(dir.path().join("job.sock"))
                .map_err(io("connecting to the agent's job port"))?;
            // A job is kilobytes and the socket buffers more: a write that
            // waits means QEMU is wedged.
            stream
                .set_write_timeout(Some(QUICK_TIMEOUT))
                .map_err(io("bounding writes to the agent's job port"))?;
            Some(JobPort {
                stream,
                frame: frame.clone(),
                sent: false,
            })
        }
        None => None,
    };
    if restore.is_some() {
        qmp.within(QUICK_TIMEOUT, |q| q.execute("cont", serde_json::json!({})))?;
    }
    let ram = SharedRam::open(&ram_files).map_err(io("mapping guest RAM"))?;
    for f in &ram_files {
        let _ = std::fs::remove_file(f);
    }
    let child = starting.child.take().expect("still held");
    drop(starting);
    Ok(Launched {
        child,
        qmp,
        ram,
        ram_files,
        console,
        job,
    })
}

/// Each NUMA node's RAM in MiB, rounded to 2 MiB so backends stay
/// hugepage-aligned.
fn node_mib(cfg: &BootSpec) -> u64 {
    (cfg.memory_mib / cfg.topology.numa_nodes as u64).div_ceil(2) * 2
}

/// The snapshot key of `cfg`'s boot: its command line as [`launch`] would
/// give it, with this VM's own paths taken out.
fn snapshot_key(cfg: &BootSpec, spec: &SnapshotSpec, dir: &VmDir) -> Result<String, VmError> {
    let ram: Vec<PathBuf> = (0..cfg.topology.numa_nodes)
        .map(|n| dir.path().join(format!("ram{n}")))
        .collect();
    let cmd = command(cfg, dir, &ram, node_mib(cfg), &dir.path().join("qmp.sock"))?;
    let args: Vec<OsString> = cmd.get_args().map(OsString::from).collect();
    let qemu = crate::kernel::fetch::which(QEMU).unwrap_or_else(|| PathBuf::from(QEMU));
    Ok(snapshot::key(spec, &qemu, &args, &[dir.path()]))
}

/// Wait until QEMU has loaded a snapshot (the guest is paused).
fn wait_loaded(
    s: &mut Starting<'_>,
    qmp: &mut Qmp,
    dir: &Path,
    timeout: Duration,
) -> Result<(), VmError> {
    const WAITING: &str = "QEMU to load the snapshot";
    let deadline = Instant::now() + timeout;
    loop {
        s.check_alive(dir, WAITING)?;
        let status = qmp.within(QUICK_TIMEOUT, |q| {
            q.execute("query-status", serde_json::json!({}))
        })?;
        match status.get("status").and_then(serde_json::Value::as_str) {
            Some("paused") => return Ok(()),
            Some("inmigrate") if Instant::now() < deadline => {}
            Some("inmigrate") => {
                return Err(VmError::Timeout {
                    waiting: WAITING.into(),
                    secs: timeout.as_secs(),
                    console: String::new(),
                });
            }
            _ => {
                return Err(QmpError::Protocol(format!(
                    "QEMU is not paused after loading the snapshot: {status}"
                ))
                .into());
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kill and reap QEMU, forget it in [`LIVE`], remove its RAM files.
fn reap(child: &mut Child, ram_files: &[PathBuf]) {
    let pid = child.id();
    live().retain(|l| l.pid != pid);
    let _ = child.kill();
    let _ = child.wait();
    for f in ram_files {
        let _ = std::fs::remove_file(f);
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        reap(&mut self.child, &self.ram_files);
        // QEMU is gone: its stdout has ended, and so does the copy.
        if let Some(c) = self.console.take() {
            let _ = c.join();
        }
    }
}

/// QEMU between spawn and a working QMP connection: killed, and its RAM
/// files removed, if starting fails.
struct Starting<'a> {
    child: Option<Child>,
    ram_files: &'a [PathBuf],
}

impl Starting<'_> {
    /// QEMU's end as an error, if it has ended, with its complaints.
    fn check_alive(&mut self, dir: &Path, waiting: &str) -> Result<(), VmError> {
        let child = self.child.as_mut().expect("held while starting");
        match child.try_wait().map_err(io("waiting for QEMU"))? {
            None => Ok(()),
            Some(status) => Err(VmError::Exited {
                status: status.to_string(),
                waiting: waiting.into(),
                stderr: std::fs::read_to_string(dir.join("qemu.stderr")).unwrap_or_default(),
                console: tail(&dir.join("console.log")),
            }),
        }
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            reap(&mut c, self.ram_files);
        }
    }
}

fn connect(
    s: &mut Starting<'_>,
    qmp_path: &Path,
    dir: &Path,
    timeout: Duration,
) -> Result<Qmp, VmError> {
    let deadline = Instant::now() + timeout;
    loop {
        s.check_alive(dir, "QEMU to start")?;
        // A QEMU that takes the connection but never greets is waited
        // for no longer than the start's own deadline.
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(q) = Qmp::connect(qmp_path, QUICK_TIMEOUT.min(left).max(MIN_READ)) {
            return Ok(q);
        }
        if Instant::now() >= deadline {
            return Err(VmError::Timeout {
                waiting: "QEMU's QMP socket".into(),
                secs: timeout.as_secs(),
                console: tail(&dir.join("console.log")),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long QEMU may take to pause or resume the guest, or to show its
/// registers: milliseconds normally, even under TCG; longer means QEMU
/// itself hangs, and a run must not wait QMP's minute for it.
const QUICK_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest read bound a QMP connection gets.
const MIN_READ: Duration = Duration::from_millis(100);

/// How long `dump-guest-memory` may take: writing guest RAM to a file, a
/// fixed 30 s plus a second per 50 MiB (far below any disk's speed).
fn dump_timeout(ram_bytes: u64) -> Duration {
    Duration::from_secs(30 + (ram_bytes >> 20) / 50)
}

/// Bytes of a console log read back: the guest decides how much it writes.
const CONSOLE_READ_LIMIT: u64 = 1 << 20;

/// The last [`CONSOLE_READ_LIMIT`] bytes of a log, as text, saying how
/// much came before them.
fn read_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let skip = len.saturating_sub(CONSOLE_READ_LIMIT);
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(skip)).is_err()
        || f.take(CONSOLE_READ_LIMIT).read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    if skip > 0 {
        format!("[{skip} earlier bytes not shown]\n{text}")
    } else {
        text.into_owned()
    }
}

pub(crate) fn tail(path: &Path) -> String {
    crate::vm::backend::last_lines(&read_tail(path))
}

/// A paused guest.
pub struct Frozen<'a> {
    vm: &'a mut QemuVm,
    /// When `stop` was sent: the guest stopped between then and its answer.
    asked: Instant,
    /// How long `stop` took to answer.
    stopped: Duration,
    thawed: bool,
}

impl Frozen<'_> {
    /// Write an ELF core of guest memory (QEMU's `dump-guest-memory`).
    pub fn dump_core(&mut self, path: &Path) -> Result<(), VmError> {
        let args =
            serde_json::json!({ "paging": false, "protocol": format!("file:{}", path.display()) });
        let bound = dump_timeout(self.vm.ram.size());
        self.vm
            .qmp
            .within(bound, |q| q.execute("dump-guest-memory", args))?;
        Ok(())
    }

    /// Every vCPU's registers (`info registers -a`); none, with a
    /// warning, when QEMU does not say.
    pub fn registers(&mut self) -> Vec<VcpuState> {
        match self
            .vm
            .qmp
            .within(QUICK_TIMEOUT, |q| q.hmp("info registers -a"))
        {
            Ok(text) => qmp::vcpu_registers(&text),
            Err(e) => {
                tracing::warn!("no vCPU registers for the dump: {e}");
                Vec::new()
            }
        }
    }

    /// How long QMP's `stop` took to answer.
    pub fn stop_time(&self) -> Duration {
        self.stopped
    }

    /// Resume the guest; returns how long `cont` took to answer and the
    /// whole pause (from sending `stop` to `cont`'s answer: an upper bound).
    pub fn thaw(mut self) -> Result<(Duration, Duration), VmError> {
        self.thawed = true;
        let t = Instant::now();
        self.vm.qmp.execute("cont", serde_json::json!({}))?;
        Ok((t.elapsed(), self.asked.elapsed()))
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        if !self.thawed {
            // A QEMU that did not answer `stop` in time may not answer
            // this either: the same bound.
            let _ = self
                .vm
                .qmp
                .within(QUICK_TIMEOUT, |q| q.execute("cont", serde_json::json!({})));
        }
    }
}

/// QEMU's command line for `cfg`: the topology, one shared RAM file per
/// NUMA node, the console on stdout, the agent channel to `agent.log` in
/// `dir`, its job port on `job.sock` there, and QMP on `qmp_path`.
fn command(
    cfg: &BootSpec,
    dir: &VmDir,
    ram_files: &[PathBuf],
    node_mib: u64,
    qmp_path: &Path,
) -> Result<Command, VmError> {
    let t = cfg.topology;
    let nodes = ram_files.len() as u64;
    let mut cmd = Command::new(QEMU);
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-machine", "q35"])
        .args(accel())
        .args(firmware())
        .arg("-m")
        .arg(format!("{}M", node_mib * nodes))
        .arg("-smp")
        .arg(format!(
            "cpus={},sockets={},dies={},cores={},threads={}",
            t.nr_cpus(),
            t.numa_nodes,
            t.llcs_per_node(),
            t.cores_per_llc,
            t.threads_per_core
        ));
    for (n, file) in ram_files.iter().enumerate() {
        let first = n as u32 * t.cpus_per_node();
        cmd.arg("-object")
            .arg(format!(
                "memory-backend-file,id=ram{n},size={node_mib}M,mem-path={},share=on",
                file.display()
            ))
            .arg("-numa")
            .arg(format!(
                "node,nodeid={n},cpus={first}-{},memdev=ram{n}",
                first + t.cpus_per_node() - 1
            ));
    }
    cmd.arg("-kernel")
        .arg(&cfg.vmlinux)
        .arg("-initrd")
        .arg(&cfg.initrd)
        .arg("-append")
        .arg(&cfg.cmdline)
        // COM1 on QEMU's stdout: the terminal in a shell, else a pipe to
        // the thread that bounds console.log. signal=off: Ctrl-C goes
        // to the guest's shell, not QEMU.
        .args(["-chardev", "stdio,id=console,signal=off"])
        .args(["-serial", "chardev:console"])
        .arg("-chardev")
        .arg(format!(
            "file,id=agent,path={},append=on",
            dir.path().join("agent.log").display()
        ))
        .args(["-serial", "chardev:agent"])
        // COM3: the agent's job port, for a job that is not in the
        // initramfs (always there, so every boot has the same machine).
        .arg("-chardev")
        .arg(format!(
            "socket,id=job,path={},server=on,wait=off",
            dir.path().join("job.sock").display()
        ))
        .args(["-serial", "chardev:job"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .stdin(if cfg.console_stdio {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stdout(if cfg.console_stdio {
            Stdio::inherit()
        } else {
            Stdio::piped()
        })
        .stderr(
            std::fs::File::create(dir.path().join("qemu.stderr"))
                .map_err(io("creating QEMU's stderr log"))?,
        );
    Ok(cmd)
}

/// qboot instead of SeaBIOS when QEMU has it: it loads the kernel (and
/// QEMU's ACPI tables) without a BIOS's device probing, about 0.3 s
/// sooner under TCG.
fn firmware() -> Vec<&'static str> {
    const QBOOT: &str = "/usr/share/qemu/qboot.rom";
    if std::env::var_os("KTSTR_SEABIOS").is_none() && Path::new(QBOOT).is_file() {
        vec!["-bios", QBOOT]
    } else {
        Vec::new()
    }
}

/// KVM when the host has hardware virtualization, else single-threaded TCG
/// (multi-threaded TCG crashed about one boot in 20 while the kernel
/// patched its own text; `KTSTR_TCG_THREAD=multi` opts back in).
fn accel() -> [&'static str; 4] {
    if ktstr_vmm::hardware_virt() {
        ["-accel", "kvm", "-cpu", "host"]
    } else if std::env::var("KTSTR_TCG_THREAD").as_deref() == Ok("multi") {
        ["-accel", "tcg,thread=multi", "-cpu", "max"]
    } else {
        ["-accel", "tcg,thread=single", "-cpu", "max"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A QMP socket that accepts and never greets (a wedged QEMU) ends the
    /// start at its own deadline, not QMP's default minute per attempt.
    #[test]
    fn a_silent_qmp_socket_times_out_at_the_start_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let held = std::thread::spawn(move || {
            let conns: Vec<_> = listener.incoming().take(1000).collect();
            drop(conns);
        });
        let mut s = Starting {
            child: Some(Command::new("sleep").arg("60").spawn().unwrap()),
            ram_files: &[],
        };
        let t = Instant::now();
        match connect(&mut s, &path, dir.path(), Duration::from_secs(1)) {
            Err(VmError::Timeout { .. }) => {}
            Err(e) => panic!("expected a timeout, got {e:?}"),
            Ok(_) => panic!("a socket that never greets is not QMP"),
        }
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        drop(s);
        drop(held);
    }

    #[test]
    fn a_dump_may_take_longer_for_more_ram() {
        assert!(dump_timeout(16 << 30) > dump_timeout(256 << 20));
        assert!(dump_timeout(0) >= QUICK_TIMEOUT);
    }

    #[test]
    fn a_pidfd_kills_its_process_and_nothing_after_it_is_reaped() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let fd = pidfd_open(child.id()).expect("pidfd_open (Linux 5.3+)");
        assert!(pidfd_kill(&fd));
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        // Reaped: its pid may belong to anyone now, the pidfd to no one.
        assert!(!pidfd_kill(&fd));
    }

    #[test]
    fn console_reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut text = "a\n".repeat(CONSOLE_READ_LIMIT as usize);
        text.push_str("last line\n");
        std::fs::write(&log, &text).unwrap();
        let read = read_tail(&log);
        assert!(
            read.len() < CONSOLE_READ_LIMIT as usize + 64,
            "{}",
            read.len()
        );
        assert!(read.starts_with(&format!(
            "[{} earlier bytes not shown]",
            text.len() as u64 - CONSOLE_READ_LIMIT
        )));
        assert!(tail(&log).ends_with("last line"));
        assert_eq!(read_tail(&dir.path().join("none")), "");
    }

    #[test]
    fn ram_files_are_private_unguessable_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let files = RamFiles::create(dir.path(), 2).unwrap();
        let paths = files.0.clone();
        assert_eq!(paths.len(), 2);
        for (n, p) in paths.iter().enumerate() {
            let meta = std::fs::metadata(p).unwrap();
            assert_eq!(meta.mode() & 0o777, 0o600, "{}", p.display());
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let pid = format!("{SHM_PREFIX}{}-", std::process::id());
            let random = name
                .strip_prefix(&pid)
                .and_then(|r| r.strip_suffix(&format!("-node{n}")))
                .unwrap_or_else(|| panic!("{name}"));
            assert!(random.len() >= 16, "{name}: a guessable name");
        }
        assert_ne!(paths[0], paths[1]);
        drop(files);
        assert!(paths.iter().all(|p| !p.exists()), "removed on drop");
    }
}
