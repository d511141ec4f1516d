//! The QEMU backend: one `qemu-system-x86_64` per VM, with guest RAM in
//! memory-backend files the host maps ([`mem::SharedRam`]), the console on
//! COM1 and the agent channel on COM2 (both to files), QMP on a private
//! socket for freeze (`stop`), thaw (`cont`), registers and core dumps.
//!
//! Hygiene: QEMU gets SIGKILL when the thread that started it dies
//! (`PR_SET_PDEATHSIG`) and on drop; the RAM files are unlinked as soon as
//! both QEMU and the host have them open, so no exit path leaves one
//! behind; stale files of dead ktstr processes are swept at start.

pub mod mem;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ktstr_walker::GuestMem;
use ktstr_walker::translate::PageTableRoot;

use crate::agent::proto::Msg;
use crate::channel::AgentLog;
use crate::vm::backend::{Backend, BootSpec, GuestVm, PauseWindow, VmDir, VmError, io};
use crate::vm::qmp::{self, Qmp, QmpError};
use mem::SharedRam;

/// Where guest RAM files go.
const SHM: &str = "/dev/shm";
const SHM_PREFIX: &str = "ktstr-";

/// Every live VM of this process, for [`kill_all`].
static LIVE: std::sync::Mutex<Vec<(u32, PathBuf, Vec<PathBuf>)>> =
    std::sync::Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<(u32, PathBuf, Vec<PathBuf>)>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kill every VM this process started and remove its files: for a signal
/// handler (Ctrl-C) that is about to exit the process, when no destructor
/// will run.
pub fn kill_all() {
    for (pid, dir, files) in live().drain(..) {
        // SAFETY: signalling a child we started.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = std::fs::remove_dir_all(dir);
        for f in files {
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
    pub fn start(cfg: &BootSpec, dir: VmDir) -> Result<QemuVm, VmError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        sweep_stale_ram_files();
        let t = cfg.topology;
        let nodes = t.numa_nodes as u64;
        // Each node's RAM, rounded to 2 MiB so backends stay hugepage-aligned.
        let node_mib = (cfg.memory_mib / nodes).div_ceil(2) * 2;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let ram_files: Vec<PathBuf> = (0..nodes)
            .map(|n| {
                PathBuf::from(SHM).join(format!("{SHM_PREFIX}{}-{seq}-node{n}", std::process::id()))
            })
            .collect();
        let qmp_path = dir.path().join("qmp.sock");
        let accel = if ktstr_vmm::hardware_virt() {
            ["-accel", "kvm", "-cpu", "host"]
        } else if std::env::var("KTSTR_TCG_THREAD").as_deref() == Ok("multi") {
            ["-accel", "tcg,thread=multi", "-cpu", "max"]
        } else {
            ["-accel", "tcg,thread=single", "-cpu", "max"]
        };
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-no-reboot", "-machine", "q35"])
            .args(accel)
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
            .args(
                if cfg.console_stdio {
                    // signal=off: Ctrl-C goes to the guest's shell, not QEMU.
                    [
                        "-chardev".to_string(),
                        "stdio,id=console,signal=off".to_string(),
                        "-serial".to_string(),
                        "chardev:console".to_string(),
                    ]
                } else {
                    [
                        "-serial".to_string(),
                        format!("file:{}", dir.path().join("console.log").display()),
                        String::new(),
                        String::new(),
                    ]
                }
                .into_iter()
                .filter(|a| !a.is_empty()),
            )
            .arg("-serial")
            .arg(format!("file:{}", dir.path().join("agent.log").display()))
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
                Stdio::null()
            })
            .stderr(
                std::fs::File::create(dir.path().join("qemu.stderr"))
                    .map_err(io("creating QEMU's stderr log"))?,
            );
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        tracing::debug!(?cmd, "starting QEMU");
        let child = cmd.spawn().map_err(|err| VmError::Spawn {
            bin: "qemu-system-x86_64".into(),
            err,
        })?;
        live().push((child.id(), dir.path().to_path_buf(), ram_files.clone()));
        let mut starting = Starting {
            child: Some(child),
            ram_files: &ram_files,
        };
        let qmp = connect(&mut starting, &qmp_path, dir.path(), cfg.start_timeout)?;
        let ram = SharedRam::open(&ram_files).map_err(io("mapping guest RAM"))?;
        for f in &ram_files {
            let _ = std::fs::remove_file(f);
        }
        let child = starting.child.take().expect("still held");
        drop(starting);
        Ok(QemuVm {
            child,
            agent: AgentLog::new(dir.path().join("agent.log")),
            dir,
            qmp,
            ram: Arc::new(ram),
            ram_files,
        })
    }

    /// Guest RAM, readable while the VM lives (consistent while frozen).
    pub fn ram(&self) -> Arc<SharedRam> {
        Arc::clone(&self.ram)
    }

    /// Pause every vCPU. The returned guard thaws on [`Frozen::thaw`] or
    /// when dropped, so no error path leaves the guest frozen.
    pub fn freeze(&mut self) -> Result<Frozen<'_>, VmError> {
        let asked = Instant::now();
        self.qmp.execute("stop", serde_json::json!({}))?;
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

    fn console_tail(&self) -> String {
        tail(&self.dir.path().join("console.log"))
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
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
        Ok(self.agent.poll()?)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// From `info registers`; the guest may be running.
    fn root(&mut self) -> Result<PageTableRoot, VmError> {
        let info = self.qmp.hmp("info registers")?;
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
        capture: &mut dyn FnMut(&dyn GuestMem),
    ) -> Result<PauseWindow, VmError> {
        let ram = self.ram();
        let mut frozen = self.freeze()?;
        let t = Instant::now();
        capture(&*ram);
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

/// Kill and reap QEMU, forget it in [`LIVE`], remove its RAM files.
fn reap(child: &mut Child, ram_files: &[PathBuf]) {
    let pid = child.id();
    live().retain(|(p, ..)| *p != pid);
    let _ = child.kill();
    let _ = child.wait();
    for f in ram_files {
        let _ = std::fs::remove_file(f);
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        reap(&mut self.child, &self.ram_files);
    }
}

/// QEMU between spawn and a working QMP connection: killed, and its RAM
/// files removed, if starting fails.
struct Starting<'a> {
    child: Option<Child>,
    ram_files: &'a [PathBuf],
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
        let child = s.child.as_mut().expect("held while starting");
        if let Some(status) = child.try_wait().map_err(io("waiting for QEMU"))? {
            return Err(VmError::Exited {
                status: status.to_string(),
                waiting: "QEMU to start".into(),
                stderr: std::fs::read_to_string(dir.join("qemu.stderr")).unwrap_or_default(),
                console: tail(&dir.join("console.log")),
            });
        }
        if let Ok(q) = Qmp::connect(qmp_path, Duration::from_secs(60)) {
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

pub(crate) fn tail(path: &Path) -> String {
    crate::vm::backend::last_lines(&std::fs::read_to_string(path).unwrap_or_default())
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
        self.vm.qmp.execute(
            "dump-guest-memory",
            serde_json::json!({ "paging": false, "protocol": format!("file:{}", path.display()) }),
        )?;
        Ok(())
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
            let _ = self.vm.qmp.execute("cont", serde_json::json!({}));
        }
    }
}
