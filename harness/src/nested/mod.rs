//! The nested-virtualization tier: real KVM on hosts without VT-x/AMD-V.
//!
//! QEMU's TCG emulates an AMD CPU with SVM and nested paging, so an L1
//! Linux guest booted under it can load `kvm_amd` and offer a real
//! `/dev/kvm` to whatever runs inside it: ktstr's own VMM, its tests, or
//! `ktstr run --backend kvm`. This module builds that L1 guest (the
//! fetched kernel, its KVM modules, busybox, the programs to run with
//! their libraries, ktstr's kernel and tool caches), boots it under QEMU
//! with a hard deadline, runs a list of [`Job`]s in it one after the
//! other, and brings back each job's exit code, output and files.
//!
//! The L1 `/init` is a generated busybox script. It reports on L1's second
//! serial port (a host file), one line per event, each starting with
//! [`MARK`]; files come as base64 between `file-begin`/`file-end` lines
//! (base64 has no spaces, so no line of a file can be mistaken for a
//! marker). The console (first serial port) is kept for diagnosis.
//!
//! Flags that matter (measured, see the README's section on backends):
//! `-cpu qemu64,+svm,+npt,...` (never `-cpu max`: L2 kernels die in
//! `fpu__init_system_xstate`), `-smp 1` (multi-threaded TCG with two
//! vCPUs oopses L1 in `kvm_arch_vcpu_ioctl_run`); the initramfs is
//! uncompressed (gunzip under TCG costs more than reading).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::initramfs::{Initramfs, InitramfsError, LIB_DIR};
use crate::kernel::modules::{KVM_MODULES, cached_kvm_modules};

/// The CPU L1 sees: an AMD-flavoured qemu64 with SVM and nested paging,
/// and the instruction-set extensions a distribution kernel and its
/// userland expect.
pub const L1_CPU: &str = "qemu64,+svm,+npt,+popcnt,+sse4.1,+sse4.2,+ssse3,+cx16";
/// L1's RAM: its initramfs (a few hundred MiB, in RAM) plus L2 guests.
pub const L1_MEMORY_MIB: u64 = 4096;
/// Prefix of every line L1's init writes to the results port.
pub const MARK: &str = "KTSTR-NESTED";
/// ktstr's cache inside L1 (`KTSTR_CACHE_DIR`): the kernel directory as
/// `kernels/<release>/`, tools as `tools/bin/`.
pub const GUEST_CACHE: &str = "/ktstr-cache";
/// Where a job's files go in L1 (`<OUT_ROOT>/<job name>/`); everything
/// found there when the job ends is brought back.
pub const OUT_ROOT: &str = "/ktstr-nested/out";
const MODULES_DIR: &str = "/ktstr-nested/modules";
/// At most this much of a job's output (its end) comes back.
const OUTPUT_TAIL_BYTES: u32 = 256 * 1024;
/// L1's kernel command line: `panic=-1` with `-no-reboot` turns a panic
/// into QEMU exiting.
const L1_CMDLINE: &str = "console=ttyS0 panic=-1 rdinit=/init mitigations=off tsc=reliable";
/// Uncompressed L1 archives kept in the cache (the newest ones).
const KEEP_ARCHIVES: usize = 2;
/// L1's init writes a heartbeat line this often (seconds) to its third
/// serial port.
const HEARTBEAT_SECS: u32 = 5;
/// No heartbeat for this long (after the first, or from QEMU's start
/// until the first) and L1 is taken as hung: six missed heartbeats. A
/// hung L1 stays hung, so waiting longer only delays the fresh one.
const HUNG_AFTER: Duration = Duration::from_secs(30);
/// `info registers` samples of a hung L1, and the time between them.
const HUNG_SAMPLES: usize = 3;
/// See [`HUNG_SAMPLES`].
pub const HUNG_SAMPLE_GAP: Duration = Duration::from_millis(500);
/// Most bytes L1's results port may write: every job's output tail and
/// files, base64. Past it L1 is stopped rather than fill the disk.
const RESULTS_MAX: u64 = 1 << 30;
/// Most bytes of heartbeat: a short line every few seconds.
const HEARTBEAT_MAX: u64 = 1 << 20;

/// What went wrong around the L1 guest (not inside it: a job's failure is
/// in its [`JobResult`]).
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    /// The kernel directory lacks what L1 needs.
    #[error("{0}")]
    Missing(String),
    /// The initramfs could not be built.
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    /// A host-side file or process operation failed.
    #[error("{what}: {err}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        err: std::io::Error,
    },
    /// The L1 run directory could not be made.
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    /// A job name that is not `[a-z0-9_-]+`, or given twice.
    #[error("bad job name {0:?}: use [a-z0-9_-], each name once")]
    JobName(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NestedError {
    let what = what.into();
    move |err| NestedError::Io { what, err }
}

/// One program run inside L1.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its name (`[a-z0-9_-]+`): the key of its result.
    pub name: String,
    /// The command and its arguments (L1 paths).
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Killed after this long.
    pub timeout: Duration,
}

impl Job {
    /// Run `argv` as `name`, with a 5-minute timeout.
    pub fn new(name: &str, argv: &[&str]) -> Job {
        Job {
            name: name.to_string(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            timeout: Duration::from_secs(300),
        }
    }

    /// With this environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Job {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Killed after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Job {
        self.timeout = timeout;
        self
    }

    /// The L1 directory whose files come back with the result (also the
    /// job's working directory).
    pub fn out_dir(&self) -> String {
        format!("{OUT_ROOT}/{}", self.name)
    }
}

/// What L1 holds and runs.
#[derive(Debug, Clone)]
pub struct L1Config {
    /// A release directory of the kernel cache (`vmlinux`, `config`,
    /// `kvm-modules/`): L1 boots it, and it is the L2 guests' kernel
    /// inside ([`GUEST_CACHE`]`/kernels/<release>`).
    pub kernel_dir: PathBuf,
    /// Programs, each at an L1 path with its shared libraries (debug
    /// info stripped). Test binaries keep their host paths, so paths
    /// compiled into them (`env!("CARGO_BIN_EXE_...")`) hold in L1 too.
    pub programs: Vec<(String, PathBuf)>,
    /// Environment of every job.
    pub env: Vec<(String, String)>,
    /// The jobs, run in this order.
    pub jobs: Vec<Job>,
    /// L1's RAM.
    pub memory_mib: u64,
    /// L1 is killed after this long, whatever it is doing.
    pub deadline: Duration,
    /// Where the uncompressed initramfs is cached (by digest).
    pub cache_dir: PathBuf,
}

impl L1Config {
    /// Defaults for `kernel_dir`: no programs or jobs, [`L1_MEMORY_MIB`],
    /// a 15-minute deadline, the archive cache under ktstr's cache.
    pub fn new(kernel_dir: impl Into<PathBuf>) -> L1Config {
        let cache_dir = crate::cache::root()
            .map(|r| r.join("nested"))
            .unwrap_or_else(|_| std::env::temp_dir().join("ktstr-nested-cache"));
        L1Config {
            kernel_dir: kernel_dir.into(),
            programs: Vec::new(),
            env: Vec::new(),
            jobs: Vec::new(),
            memory_mib: L1_MEMORY_MIB,
            deadline: Duration::from_secs(15 * 60),
            cache_dir,
        }
    }

    /// A program at its own host path in L1.
    pub fn program(&mut self, host: &Path) {
        self.programs
            .push((host.display().to_string(), host.to_path_buf()));
    }

    /// The release this config boots (the kernel directory's name).
    pub fn release(&self) -> Result<String, NestedError> {
        self.kernel_dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| {
                NestedError::Missing(format!(
                    "{} is not a release directory of the kernel cache",
                    self.kernel_dir.display()
                ))
            })
    }
}

/// How L1 ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L1End {
    /// Its init reported every job and QEMU exited (power-off).
    Finished,
    /// QEMU exited before init said it was done (a panic, a crash).
    Exited(String),
    /// The deadline passed; QEMU was killed.
    Deadline(Duration),
    /// L1's heartbeat stopped for this long (QEMU was killed): its one
    /// CPU took no interrupt any more. Seen now and then while an L2 guest
    /// with several vCPUs runs (the L2 vCPU threads share L1's CPU), with
    /// nothing on L1's console; a TCG nested-SVM problem, not a job's.
    Hung(Duration),
    /// L1 wrote more than its bound to a serial port (which, and how
    /// much); QEMU was killed.
    Overflow(&'static str, u64),
}

/// One job's outcome, as L1 reported it.
#[derive(Debug, Clone, Default)]
pub struct JobResult {
    /// The job's name.
    pub name: String,
    /// Its exit code (`timeout -s KILL` gives 137); `None` if L1 never
    /// said (it ended mid-job).
    pub exit_code: Option<i32>,
    /// Seconds of L1 time it took.
    pub secs: Option<f64>,
    /// The end of its output (stdout and stderr interleaved).
    pub output: String,
    /// Files it left in its [`Job::out_dir`], by file name.
    pub files: BTreeMap<String, Vec<u8>>,
}

impl JobResult {
    /// Exited 0.
    pub fn passed(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// What an L1 boot produced.
#[derive(Debug, Clone)]
pub struct L1Run {
    /// How it ended.
    pub end: L1End,
    /// Facts init reported: `svm`, `dev-kvm`, `module-<name>` (`ok` or
    /// the error), ...
    pub facts: BTreeMap<String, String>,
    /// L1 uptime when init started, when the modules were loaded, and
    /// when the last job ended (seconds).
    pub init_at: Option<f64>,
    /// See [`Self::init_at`].
    pub modules_at: Option<f64>,
    /// See [`Self::init_at`].
    pub done_at: Option<f64>,
    /// Per job, in the order they ran (those L1 reached).
    pub jobs: Vec<JobResult>,
    /// L1's console.
    pub console: String,
    /// QEMU's stderr.
    pub qemu_stderr: String,
    /// Host wall time from QEMU's start to its end.
    pub wall: Duration,
    /// How long building (or finding) the initramfs took, and its size.
    pub initramfs: (Duration, u64),
    /// When it hung: its CPU's registers (QEMU's `info registers`), a few
    /// samples apart, so a report shows whether L1 was halted or spinning
    /// and where.
    pub hang_registers: Vec<String>,
    /// When it hung: its local APIC (`info lapic`), which tells a timer
    /// that never fired from an interrupt raised and never taken.
    pub hang_lapic: String,
}

impl L1Run {
    /// The job L1 was running when it ended, if any.
    pub fn unfinished_job(&self) -> Option<&str> {
        self.jobs
            .iter()
            .find(|j| j.exit_code.is_none())
            .map(|j| j.name.as_str())
    }

    /// The result of job `name`, if L1 started it.
    pub fn job(&self, name: &str) -> Option<&JobResult> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// The last `n` lines of L1's console.
    pub fn console_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Where a hung L1's CPU was, a line per sample: RIP, the rest of
    /// its line (`CPL`, `HLT`), CR3 (empty unless it hung).
    pub fn hang_cpu(&self) -> Vec<String> {
        self.hang_registers
            .iter()
            .map(|info| {
                let rip = info.lines().find(|l| l.starts_with("RIP=")).map(str::trim);
                match (rip, crate::vm::qmp::register(info, "CR3")) {
                    (Some(rip), Some(cr3)) => format!("{rip} CR3={cr3:x}"),
                    _ => info.lines().next().unwrap_or_default().to_string(),
                }
            })
            .collect()
    }

    /// A hung L1's local APIC in one line: its timer and the interrupts
    /// requested (IRR), in service (ISR) and the priority (PPR) that
    /// gates them (empty unless it hung).
    pub fn hang_interrupts(&self) -> String {
        const KEPT: [&str; 5] = ["LVTT", "Timer", "ISR", "IRR", "APR"];
        self.hang_lapic
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| KEPT.iter().any(|k| l.starts_with(k)) || l.starts_with('('))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A short account: how L1 ended, its facts and timings, each job's
    /// exit code and time.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "L1 {:?} after {:.1} s wall (initramfs {} MiB in {:.1} s); init at {}, modules at {}, done at {} (L1 uptime, s)\n",
            self.end,
            self.wall.as_secs_f64(),
            self.initramfs.1 >> 20,
            self.initramfs.0.as_secs_f64(),
            opt(self.init_at),
            opt(self.modules_at),
            opt(self.done_at),
        );
        for (k, v) in &self.facts {
            s.push_str(&format!("  {k}: {v}\n"));
        }
        for j in &self.jobs {
            s.push_str(&format!(
                "  job {}: exit {} in {} s, files {:?}\n",
                j.name,
                j.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "?".into()),
                opt(j.secs),
                j.files.keys().collect::<Vec<_>>()
            ));
        }
        s
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

/// Single-quote `s` for the shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// L1's `/init`: mounts, loads the KVM modules, reports what L1 has, runs
/// every job and reports it, powers off.
pub fn init_script(cfg: &L1Config) -> Result<String, NestedError> {
    let mut names = std::collections::BTreeSet::new();
    for j in &cfg.jobs {
        let ok = !j.name.is_empty()
            && j.name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok || !names.insert(j.name.as_str()) {
            return Err(NestedError::JobName(j.name.clone()));
        }
    }
    let mut s = format!(
        r#"#!/bin/sh
# The nested tier's L1 init, generated by ktstr::nested.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /root /tmp
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# /tmp stays the initramfs' own (RAM already): programs sit at their host
# paths, which may be under /tmp, and a tmpfs there would hide them.
chmod 1777 /tmp
set -o pipefail
# A heartbeat on the third serial port, apart from the results (a line
# there could split a file's base64): the host tells a hung L1 by its end.
( while :; do cut -d' ' -f1 /proc/uptime >/dev/ttyS2; sleep {HEARTBEAT_SECS}; done ) &
R=/dev/ttyS1
say() {{ echo "{MARK} $*" >$R; }}
up() {{ cut -d' ' -f1 /proc/uptime; }}
send() {{
    say file-begin "$1" "$(basename "$2")"
    base64 "$2" >$R
    say file-end "$1"
}}
say init "$(up)"
for m in {modules}; do
    if insmod {MODULES_DIR}/$m.ko 2>/tmp/insmod.err; then
        say fact module-$m ok
    else
        say fact module-$m "$(tr '\n' ' ' </tmp/insmod.err)"
    fi
done
if grep -qw svm /proc/cpuinfo; then say fact svm yes; else say fact svm no; fi
if [ -c /dev/kvm ]; then say fact dev-kvm yes; else say fact dev-kvm no; fi
say fact kvm-dmesg "$(dmesg | grep -i -e kvm -e svm -e nested | tail -n 8 | tr '\n' '|')"
say modules "$(up)"
"#,
        modules = KVM_MODULES.join(" "),
    );
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), "/root".into()),
        ("KTSTR_CACHE_DIR".into(), GUEST_CACHE.into()),
        ("LD_LIBRARY_PATH".into(), LIB_DIR.into()),
        ("TMPDIR".into(), "/tmp".into()),
    ];
    env.extend(cfg.env.iter().cloned());
    for (k, v) in &env {
        s.push_str(&format!("export {k}={}\n", quote(v)));
    }
    s.push_str(&format!(
        r#"job() {{
    n=$1; t=$2; shift 2
    o={OUT_ROOT}/$n
    mkdir -p $o
    say job-begin $n "$(up)"
    echo "ktstr-nested: job $n starts" >/dev/console
    # The output goes to the console too: if L1 is cut off mid-job, the
    # host still has what the job said so far.
    ( cd $o && exec timeout -s KILL $t "$@" ) 2>&1 </dev/null | tee /tmp/$n.log >/dev/console
    rc=$?
    say job-end $n $rc "$(up)"
    echo "ktstr-nested: job $n exited $rc" >/dev/console
    say output-begin $n
    tail -c {OUTPUT_TAIL_BYTES} /tmp/$n.log | base64 >$R
    say output-end $n
    for f in $o/*; do
        if [ -f "$f" ]; then send $n "$f"; fi
    done
}}
"#
    ));
    for j in &cfg.jobs {
        let mut line = format!("job {} {}", j.name, j.timeout.as_secs().max(1));
        if !j.env.is_empty() {
            line.push_str(" env");
            for (k, v) in &j.env {
                line.push(' ');
                line.push_str(&quote(&format!("{k}={v}")));
            }
        }
        for a in &j.argv {
            line.push(' ');
            line.push_str(&quote(a));
        }
        s.push_str(&line);
        s.push('\n');
    }
    s.push_str(
        r#"say done "$(up)"
sync
poweroff -f
sleep 10
echo o >/proc/sysrq-trigger
"#,
    );
    Ok(s)
}

/// `host` without its debug information (`strip --strip-debug`), or as it
/// is when `strip` is not there or fails: debug info is most of a Rust
/// debug build, and L1 holds everything in RAM.
fn stripped(host: &Path, scratch: &Path) -> Result<Vec<u8>, NestedError> {
    let out = scratch.join("stripped");
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(host)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let bytes = if ok {
        std::fs::read(&out)
    } else {
        std::fs::read(host)
    };
    let _ = std::fs::remove_file(&out);
    bytes.map_err(io(format!("reading {}", host.display())))
}

/// The L1 initramfs for `cfg`.
pub fn initramfs(cfg: &L1Config, scratch: &Path) -> Result<Initramfs, NestedError> {
    let release = cfg.release()?;
    let modules = cached_kvm_modules(&cfg.kernel_dir).ok_or_else(|| {
        NestedError::Missing(format!(
            "{} has no KVM modules: run `ktstr kernel fetch --kvm-modules` (./setup.sh does)",
            cfg.kernel_dir.display()
        ))
    })?;
    let busybox = crate::kernel::fetch::which("busybox").ok_or_else(|| {
        NestedError::Missing("busybox not found: install busybox-static (./setup.sh does)".into())
    })?;
    // It is L1's /init shell, run before any library path is set.
    if crate::initramfs::libs::closure(&busybox)
        .map_err(InitramfsError::from)?
        .interp
        .is_some()
    {
        return Err(NestedError::Missing(format!(
            "{} is dynamically linked: install busybox-static (./setup.sh does)",
            busybox.display()
        )));
    }
    let mut ramfs = Initramfs::bare();
    ramfs.busybox(&busybox)?;
    ramfs.file("/init", init_script(cfg)?.into_bytes(), 0o755)?;
    for (name, file) in KVM_MODULES.iter().zip(&modules) {
        let data = std::fs::read(file).map_err(io(format!("reading {}", file.display())))?;
        ramfs.file(&format!("{MODULES_DIR}/{name}.ko"), data, 0o644)?;
    }
    let guest_kernel = format!("{GUEST_CACHE}/kernels/{release}");
    // Every file of the release (its marker records their sizes, checked
    // on every use), not its subdirectories (the modules are above).
    let entries = std::fs::read_dir(&cfg.kernel_dir)
        .map_err(io(format!("reading {}", cfg.kernel_dir.display())))?;
    for e in entries.flatten() {
        let (host, name) = (e.path(), e.file_name().to_string_lossy().into_owned());
        if !host.is_file() || name.starts_with(".staging") {
            continue;
        }
        let data = std::fs::read(&host).map_err(io(format!("reading {}", host.display())))?;
        ramfs.file(&format!("{guest_kernel}/{name}"), data, 0o644)?;
    }
    if !crate::kernel::store::is_complete(&cfg.kernel_dir) {
        return Err(NestedError::Missing(format!(
            "{} is not a complete cached release: run `ktstr kernel fetch`",
            cfg.kernel_dir.display()
        )));
    }
    // The harness puts the kernel's config at /boot for libbpf in L2; L1's
    // own programs may want it too.
    ramfs.kernel_config(&release, &cfg.kernel_dir.join("config"))?;
    for (guest, host) in &cfg.programs {
        ramfs.file(guest, stripped(host, scratch)?, 0o755)?;
        ramfs.libraries(host)?;
    }
    for d in ["/root", OUT_ROOT] {
        ramfs.directory(d)?;
    }
    Ok(ramfs)
}

/// QEMU, killed and reaped however the caller's scope ends (and killed by
/// the kernel if this thread dies first: `PR_SET_PDEATHSIG`).
struct L1Qemu(Child);

impl Drop for L1Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Build the initramfs, boot L1, run the jobs, and collect what L1
/// reported. Errors are the host's; whatever happened inside L1 (a job
/// failing, L1 crashing, the deadline) is in the [`L1Run`]. Call it from a
/// thread that lives until it returns (QEMU dies with its thread).
pub fn run(cfg: &L1Config) -> Result<L1Run, NestedError> {
    // A VM directory like the backends' (`ktstr-<pid>-vm-*`): removed on
    // drop, and by the CLI's signal handlers.
    let dir = crate::vm::vm_dir()?;
    let (archive, initramfs) = l1_archive(cfg, dir.path())?;
    let files = L1Files::in_dir(dir.path());
    let mut cmd = l1_command(cfg, &archive, &files)?;
    tracing::info!(?cmd, "booting L1");
    let start = Instant::now();
    let mut qemu = L1Qemu(cmd.spawn().map_err(io("starting qemu-system-x86_64"))?);
    // The console through the bound every backend's console has.
    let console = match qemu.0.stdout.take() {
        Some(out) => {
            let limit = crate::vm::qemu::console::limit();
            Some(
                crate::vm::qemu::console::spawn(out, &files.console, limit)
                    .map_err(io("writing L1's console log"))?,
            )
        }
        None => None,
    };
    let (end, reader, hang) = watch(qemu, &files, start, cfg.deadline)?;
    // QEMU is gone: the copy ends with its pipe.
    if let Some(c) = console {
        let _ = c.join();
    }
    let mut run = reader.run;
    run.end = end;
    run.wall = start.elapsed();
    run.initramfs = initramfs;
    (run.hang_registers, run.hang_lapic) = (hang.registers, hang.lapic);
    // Lossy: a serial line can carry bytes that are not UTF-8, and the
    // rest of the console is still worth showing.
    let text =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    run.console = text(&files.console);
    run.qemu_stderr = text(&files.stderr);
    Ok(run)
}

/// L1's initramfs archive (cached by content; older ones pruned), and how
/// long it took and how big it is.
fn l1_archive(cfg: &L1Config, dir: &Path) -> Result<(PathBuf, (Duration, u64)), NestedError> {
    let t = Instant::now();
    let ramfs = initramfs(cfg, dir)?;
    let archive = ramfs.cached_in(&cfg.cache_dir, KEEP_ARCHIVES)?;
    drop(ramfs);
    let size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    let built = t.elapsed();
    tracing::info!(
        "L1 initramfs {} ({} MiB) in {:.1} s",
        archive.display(),
        size >> 20,
        built.as_secs_f64()
    );
    Ok((archive, (built, size)))
}

/// L1's three serial ports, QEMU's stderr and its QMP socket, as files.
struct L1Files {
    console: PathBuf,
    results: PathBuf,
    heartbeat: PathBuf,
    stderr: PathBuf,
    qmp: PathBuf,
}

impl L1Files {
    fn in_dir(dir: &Path) -> L1Files {
        L1Files {
            console: dir.join("console.log"),
            results: dir.join("results.log"),
            heartbeat: dir.join("heartbeat.log"),
            stderr: dir.join("qemu.stderr"),
            qmp: dir.join("qmp.sock"),
        }
    }
}

/// The QEMU command that boots L1 with nested SVM.
fn l1_command(cfg: &L1Config, archive: &Path, files: &L1Files) -> Result<Command, NestedError> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-machine", "q35"])
        .args(["-accel", "tcg,thread=single", "-cpu", L1_CPU, "-smp", "1"])
        .arg("-m")
        .arg(format!("{}M", cfg.memory_mib))
        .arg("-kernel")
        .arg(cfg.kernel_dir.join("vmlinux"))
        .arg("-initrd")
        .arg(archive)
        .arg("-append")
        .arg(L1_CMDLINE);
    cmd.args(["-chardev", "stdio,id=console,signal=off"])
        .args(["-serial", "chardev:console"]);
    for port in [&files.results, &files.heartbeat] {
        cmd.arg("-serial").arg(format!("file:{}", port.display()));
    }
    cmd.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", files.qmp.display()));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&files.stderr).map_err(io("creating QEMU's stderr log"))?);
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Ok(cmd)
}

/// Follow L1 until it powers off, stops beating, or passes the deadline
/// (then it is killed); QEMU is reaped on return. A hung L1's registers
/// are sampled first.
fn watch(
    mut qemu: L1Qemu,
    files: &L1Files,
    start: Instant,
    deadline: Duration,
) -> Result<(L1End, ResultsReader, HangState), NestedError> {
    let mut reader = ResultsReader::default();
    let (mut beats, mut last_beat) = (0u64, Instant::now());
    let end = loop {
        reader.feed(&files.results);
        let len = std::fs::metadata(&files.heartbeat).map_or(0, |m| m.len());
        if reader.pos > RESULTS_MAX {
            break L1End::Overflow("results", reader.pos);
        } else if len > HEARTBEAT_MAX {
            break L1End::Overflow("heartbeat", len);
        }
        if len != beats {
            (beats, last_beat) = (len, Instant::now());
        } else if last_beat.elapsed() >= HUNG_AFTER {
            break L1End::Hung(last_beat.elapsed());
        }
        if let Some(status) = qemu.0.try_wait().map_err(io("waiting for QEMU"))? {
            reader.feed(&files.results);
            break if reader.run.done_at.is_some() {
                L1End::Finished
            } else {
                L1End::Exited(status.to_string())
            };
        }
        if start.elapsed() >= deadline {
            break L1End::Deadline(deadline);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let hang = match end {
        L1End::Hung(_) => hung_state(&files.qmp),
        _ => Default::default(),
    };
    // Killed (if still running) and reaped before the last results read.
    drop(qemu);
    reader.feed(&files.results);
    Ok((end, reader, hang))
}

/// What a hung L1's CPU showed over QMP (see [`L1Run::hang_registers`]).
#[derive(Default)]
struct HangState {
    registers: Vec<String>,
    lapic: String,
}

/// Samples of a hung L1's `info registers`, [`HUNG_SAMPLE_GAP`] apart,
/// then its `info lapic` (each QMP exchange bounded), or why they could
/// not be read.
fn hung_state(qmp: &Path) -> HangState {
    let sample = || -> Result<HangState, crate::vm::qmp::QmpError> {
        let mut q = crate::vm::qmp::Qmp::connect(qmp, Duration::from_secs(5))?;
        let mut out = Vec::new();
        for i in 0..HUNG_SAMPLES {
            if i > 0 {
                std::thread::sleep(HUNG_SAMPLE_GAP);
            }
            out.push(q.hmp("info registers")?);
        }
        Ok(HangState {
            registers: out,
            lapic: q.hmp("info lapic")?,
        })
    };
    sample().unwrap_or_else(|e| {
        let why = format!("(no registers: QMP: {e})");
        HangState {
            registers: vec![why.clone()],
            lapic: why,
        }
    })
}

/// Follows the results file as it grows and parses its lines.
struct ResultsReader {
    pos: u64,
    partial: Vec<u8>,
    /// What is being received: (job, file name or `None` for the job's
    /// output, base64 so far).
    receiving: Option<(String, Option<String>, String)>,
    /// L1 uptime at each job's start.
    started: BTreeMap<String, f64>,
    run: L1Run,
}

impl Default for ResultsReader {
    fn default() -> Self {
        ResultsReader {
            pos: 0,
            partial: Vec::new(),
            receiving: None,
            started: BTreeMap::new(),
            run: L1Run {
                end: L1End::Finished,
                facts: BTreeMap::new(),
                init_at: None,
                modules_at: None,
                done_at: None,
                jobs: Vec::new(),
                console: String::new(),
                qemu_stderr: String::new(),
                wall: Duration::ZERO,
                initramfs: (Duration::ZERO, 0),
                hang_registers: Vec::new(),
                hang_lapic: String::new(),
            },
        }
    }
}

impl ResultsReader {
    fn feed(&mut self, path: &Path) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(path) else {
            return;
        };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return;
        }
        let mut new = Vec::new();
        let n = f.read_to_end(&mut new).unwrap_or(0);
        self.pos += n as u64;
        self.bytes(&new[..n]);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            self.line(line.trim_end_matches(['\r', '\n']));
        }
    }

    fn job(&mut self, name: &str) -> &mut JobResult {
        if let Some(i) = self.run.jobs.iter().position(|j| j.name == name) {
            return &mut self.run.jobs[i];
        }
        self.run.jobs.push(JobResult {
            name: name.to_string(),
            ..JobResult::default()
        });
        self.run.jobs.last_mut().expect("just pushed")
    }

    fn line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix(MARK).and_then(|r| r.strip_prefix(' ')) else {
            // Not a marker: base64 being received, or noise.
            if let Some((_, _, b64)) = &mut self.receiving {
                b64.push_str(line.trim());
            }
            return;
        };
        let words: Vec<&str> = rest.split(' ').collect();
        let num = |i: usize| words.get(i).and_then(|w| w.parse::<f64>().ok());
        match words.as_slice() {
            ["init", ..] => self.run.init_at = num(1),
            ["modules", ..] => self.run.modules_at = num(1),
            ["done", ..] => self.run.done_at = num(1),
            ["fact", key, ..] => {
                let value = rest[5 + key.len()..].trim();
                self.run.facts.insert(key.to_string(), value.to_string());
            }
            ["job-begin", name, ..] => {
                if let Some(at) = num(2) {
                    self.started.insert(name.to_string(), at);
                }
                self.job(name);
            }
            ["job-end", name, code, ..] => {
                let secs = num(3)
                    .zip(self.started.get(*name))
                    .map(|(end, start)| end - start);
                let j = self.job(name);
                j.exit_code = code.parse().ok();
                j.secs = secs;
            }
            ["output-begin", job] => {
                self.receiving = Some((job.to_string(), None, String::new()));
            }
            ["file-begin", job, name] => {
                self.receiving = Some((job.to_string(), Some(name.to_string()), String::new()));
            }
            ["output-end", ..] | ["file-end", ..] => {
                if let Some((job, name, b64)) = self.receiving.take() {
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(b64.as_bytes())
                        .unwrap_or_else(|e| format!("(undecodable base64: {e})").into_bytes());
                    let j = self.job(&job);
                    match name {
                        Some(name) => {
                            j.files.insert(name, data);
                        }
                        None => j.output = String::from_utf8_lossy(&data).into_owned(),
                    }
                }
            }
            _ => {}
        }
    }
}

/// `text` with every line prefixed, for quoting a guest's output inside a
/// test's failure message.
pub fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

#[cfg(test)]
mod tests;
