//! The `ktstr` command line.
//!
//! Exit codes: 0 success; 1 a check failed (the kernel is unusable, the
//! scheduler died, a worker did not run); 2 an infrastructure error
//! (download, file, tool, VM); 130 interrupted (Ctrl-C).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ktstr::kernel::Kernel;
use ktstr::kernel::fetch::{FetchOptions, FetchedFrom, fetch};
use ktstr::kernel::info::KernelInfo;
use ktstr::session::{SchedulerConfig, SessionConfig};

/// Test Linux sched_ext schedulers in throw-away VMs, and see their exact
/// state when they fail.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Kernels: fetch a sched_ext kernel, inspect one.
    Kernel {
        #[command(subcommand)]
        command: KernelCommand,
    },
    /// Boot a kernel in a VM with a scheduler, run a scenario, check how
    /// the scheduler and the workers fared (optionally with a mid-run dump
    /// of the scheduler's state).
    Run {
        #[command(flatten)]
        vm: VmArgs,
        /// The scenario (`ktstr scenarios` lists them).
        #[arg(long, default_value = "steady")]
        scenario: String,
        /// Fail a worker kept from running longer than this.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        max_gap: std::time::Duration,
        /// Fail a cgroup whose identical spinners' CPU time spreads more
        /// than this percentage.
        #[arg(long, default_value_t = 25.0)]
        fairness_spread: f64,
        /// How long the workers run (e.g. 10s, 1m).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// Freeze and dump this long after the workers start (e.g. 2s);
        /// repeat or separate with commas for several (1s,3s).
        #[arg(long, value_parser = parse_duration, value_delimiter = ',')]
        dump_at: Vec<std::time::Duration>,
        /// Freeze and dump every this long (a series, within --dump-budget).
        #[arg(long, value_parser = parse_duration)]
        dump_every: Option<std::time::Duration>,
        /// After each problem the monitor sees, a second dump this long
        /// later, to show what moved (0: none).
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        dump_follow_up: std::time::Duration,
        /// Bytes (of JSON) the run's dumps may take, e.g. 16M; dumps past it
        /// are counted, not kept.
        #[arg(long, default_value = "16M", value_parser = parse_bytes)]
        dump_budget: u64,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
    },
    /// Boot a kernel with a scheduler and give an interactive busybox shell
    /// on this terminal; the VM powers off when the shell exits.
    Shell {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// List the ready scenarios.
    Scenarios {
        /// Print them as JSON (the full definitions).
        #[arg(long)]
        json: bool,
    },
    /// Show the sched_ext state captured in an ELF core file (QEMU's
    /// dump-guest-memory, or a kdump vmcore).
    Dump {
        /// The core file.
        #[arg(long)]
        core: std::path::PathBuf,
        /// The kernel that wrote it: vmlinux, bzImage, build or cache
        /// directory, or cached release (its BTF gives the layout).
        #[arg(long)]
        vmlinux: String,
        /// /proc/kallsyms of the same boot (optional: symbols come from the kernel's own kallsyms tables in the vmlinux otherwise).
        #[arg(long, conflicts_with = "system_map")]
        kallsyms: Option<std::path::PathBuf>,
        /// System.map of the same build.
        #[arg(long)]
        system_map: Option<std::path::PathBuf>,
        /// Page-table root (hex), when the core's notes lack it.
        #[arg(long, value_parser = parse_hex)]
        cr3: Option<u64>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// What a VM is made of: kernel, scheduler, topology, memory.
#[derive(clap::Args)]
struct VmArgs {
    /// Kernel: vmlinux, bzImage, build or cache directory, or a version
    /// (`6.16.12`, `7.3`): cached, or fetched on first use; default the
    /// newest cached one.
    #[arg(long)]
    kernel: Option<String>,
    /// Scheduler binary, or a name such as `bpfland` (found on PATH or
    /// in ~/.cache/ktstr/tools/bin); default the kernel's own scheduler.
    #[arg(long)]
    scheduler: Option<String>,
    /// Scheduler arguments (repeat, or after `--`).
    #[arg(long = "scheduler-arg", allow_hyphen_values = true)]
    scheduler_args: Vec<String>,
    /// NUMA nodes, LLCs, cores per LLC, threads per core.
    #[arg(long, default_value = "1n1l2c1t")]
    topology: ktstr_vmm::Topology,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u64,
    /// Which VMM: `auto` (the built-in KVM VMM with VT-x/AMD-V, else
    /// QEMU), `qemu` or `kvm`.
    #[arg(long, default_value = "auto")]
    backend: ktstr::vm::Backend,
}

impl VmArgs {
    /// The session these arguments describe.
    fn session(self) -> anyhow::Result<SessionConfig> {
        let kernel = match self.kernel {
            Some(k) => k,
            None => ktstr::kernel::store::newest_fetched()?
                .display()
                .to_string(),
        };
        let mut cfg = SessionConfig::new(kernel, self.topology);
        cfg.memory_mib = self.memory;
        cfg.backend = self.backend;
        cfg.scheduler = self
            .scheduler
            .map(|s| {
                Ok::<_, anyhow::Error>(SchedulerConfig {
                    binary: ktstr::scheduler::resolve(&s)?,
                    args: self.scheduler_args,
                })
            })
            .transpose()?;
        Ok(cfg)
    }
}

/// A duration: `10s`, `500ms`, `1m` (humantime), or plain seconds (`2.5`).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return std::time::Duration::try_from_secs_f64(secs)
            .map_err(|e| format!("{s}: not a duration: {e}"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s}: not a duration (e.g. 10s, 500ms, 2.5): {e}"))
}

/// A byte count: a number, optionally with K, M or G (powers of 1024).
fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{s}: not a byte count (e.g. 4096, 512K, 16M)"))
}

fn parse_hex(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| format!("{s}: not a hex number: {e}"))
}

#[derive(Subcommand)]
enum KernelCommand {
    /// Download a Debian cloud kernel with sched_ext and BTF (the newest,
    /// or --release) from trixie or trixie-backports into the cache;
    /// prints its directory as the last line.
    Fetch {
        /// A version (`6.16`, `6.16.12`, `7.3.4+deb13`) or release
        /// (`7.3.4+deb13-cloud-amd64`): the newest matching one.
        #[arg(long)]
        release: Option<String>,
        /// Do not contact the archive; use what is cached.
        #[arg(long)]
        offline: bool,
        /// Also fetch the kernel's KVM modules (irqbypass, kvm, kvm-amd
        /// from its linux-modules package), for booting it as the L1 guest
        /// of the nested-virtualization tier (README: backends).
        #[arg(long)]
        kvm_modules: bool,
    },
    /// List cached kernels: version, origin, sched_ext and BTF, size,
    /// last use.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove cached kernels (all, or those matching VERSION), keeping the
    /// --keep N most recently used.
    Clean {
        /// Only kernels matching this version (`6.16`, `6.16.12+deb13`).
        version: Option<String>,
        /// Keep the N most recently used of them.
        #[arg(long)]
        keep: Option<usize>,
    },
    /// Show what ktstr knows about a kernel: release, image, required config
    /// options, and the struct layout its BTF gives.
    Info {
        /// A bzImage, vmlinux, build directory, cache directory or cached
        /// release name.
        kernel: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KTSTR_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ktstr: error: {}", terminal_safe(&error_text(&e)));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run {
            vm,
            scenario,
            max_gap,
            fairness_spread,
            duration,
            dump_at,
            dump_every,
            dump_follow_up,
            dump_budget,
            json,
        } => {
            install_interrupt_handler()?;
            let mut cfg = vm.session()?;
            cfg.duration = duration;
            let scenario = ktstr::scenario::catalogue::find(&scenario)?;
            let thresholds = ktstr::checks::Thresholds {
                max_gap,
                fairness_spread: fairness_spread / 100.0,
            };
            let progress = Progress::new();
            let plan = ktstr::series::DumpPlan {
                at: dump_at,
                every: dump_every,
                follow_up: Some(dump_follow_up).filter(|d| !d.is_zero()),
                budget_bytes: dump_budget,
            };
            let report =
                ktstr::run::run_planned(&cfg, &scenario, &thresholds, &plan, &|p| progress.set(p));
            progress.done();
            let report = report?;
            print!("{}", terminal_safe(&report.to_text()));
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Shell { vm } => {
            install_interrupt_handler()?;
            let mut cfg = vm.session()?;
            cfg.shell = true;
            let progress = Progress::new();
            let session = ktstr::session::Session::start_with(&cfg, &|p| progress.set(p));
            progress.done();
            let session = session?;
            if let Some(a) = &session.attached {
                tracing::info!(
                    ops = a.ops,
                    "scheduler attached; exit the shell to power off"
                );
            }
            // Ten years: as long as its user likes.
            session.finish_within(std::time::Duration::from_secs(10 * 365 * 86_400))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Scenarios { json } => {
            let all = ktstr::scenario::catalogue::all();
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for s in all {
                    println!("{:<14} {}", s.name, s.description);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dump {
            core,
            vmlinux,
            kallsyms,
            system_map,
            cr3,
            json,
        } => {
            let report = ktstr::dump::dump(&ktstr::dump::DumpOptions {
                core,
                vmlinux,
                kallsyms,
                system_map,
                cr3,
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", terminal_safe(&report.to_text()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Kernel { command } => match command {
            KernelCommand::Fetch {
                release,
                offline,
                kvm_modules,
            } => {
                let got = fetch(&FetchOptions { release, offline })?;
                match &got.from {
                    FetchedFrom::Cache => tracing::info!("{} (cached)", got.release),
                    FetchedFrom::Archive { suite } => {
                        tracing::info!("{} (downloaded from {suite})", got.release)
                    }
                    FetchedFrom::StaleCache { reason } => eprintln!(
                        "WARNING: could not ask the archive ({reason}); using the newest CACHED kernel {}, which may not be the newest available",
                        got.release
                    ),
                }
                let dir = got.dir;
                if kvm_modules {
                    for m in ktstr::kernel::modules::fetch_kvm_modules(&dir, offline)? {
                        tracing::info!("KVM module {}", m.display());
                    }
                }
                println!("{}", dir.display());
                Ok(ExitCode::SUCCESS)
            }
            KernelCommand::List { json } => {
                let kernels = ktstr::cache::kernels_dir()?;
                let all = ktstr::kernel::store::list(&kernels);
                if json {
                    println!("{}", serde_json::to_string_pretty(&all)?);
                } else if all.is_empty() {
                    println!("no kernels cached under {}", kernels.display());
                } else {
                    print!("{}", kernel_table(&all));
                }
                Ok(ExitCode::SUCCESS)
            }
            KernelCommand::Clean { version, keep } => {
                let kernels = ktstr::cache::kernels_dir()?;
                let removed = ktstr::kernel::store::clean(
                    &kernels,
                    &ktstr::kernel::store::CleanOptions { keep, version },
                )?;
                for d in &removed {
                    println!("removed {}", d.display());
                }
                if removed.is_empty() {
                    println!("nothing to remove");
                }
                Ok(ExitCode::SUCCESS)
            }
            KernelCommand::Info { kernel, json } => {
                let k = Kernel::resolve(&kernel)?;
                let info = KernelInfo::gather(&k);
                if json {
                    println!("{}", serde_json::to_string_pretty(&info)?);
                } else {
                    print!("{}", terminal_safe(&info.to_text()));
                }
                Ok(if info.usable() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
        },
    }
}

/// An error and its causes, each said once: errors that print their source
/// and also chain it would otherwise repeat it.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// `ktstr kernel list`'s table.
fn kernel_table(all: &[ktstr::kernel::store::CachedKernel]) -> String {
    let yn = |b: bool| if b { "yes" } else { "NO" };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut s = format!(
        "{:<28} {:<28} {:<9} {:<4} {:>8} {}\n",
        "VERSION", "SOURCE", "SCHED_EXT", "BTF", "SIZE", "LAST USED"
    );
    for k in all {
        let mut source = match &k.suite {
            Some(suite) => format!("{} ({suite})", k.origin),
            None => k.origin.to_string(),
        };
        if k.config_from_image {
            // Footnoted below the table.
            source.push('*');
        }
        let used = k.last_used.map_or("never".to_string(), |t| {
            let ago = std::time::Duration::from_secs(now.saturating_sub(t));
            let coarse: Vec<String> = humantime::format_duration(ago)
                .to_string()
                .split(' ')
                .take(2)
                .map(str::to_string)
                .collect();
            format!("{} ago", coarse.join(" "))
        });
        s += &format!(
            "{:<28} {:<28} {:<9} {:<4} {:>6}MB {}\n",
            k.release,
            source,
            yn(k.sched_ext),
            yn(k.btf),
            k.size / 1_000_000,
            used
        );
    }
    if all.iter().any(|k| k.config_from_image) {
        s += "* the archive has no config for it: sched_ext and BTF were checked in the image's BTF\n";
    }
    s
}

/// `text` with the control characters a guest or a file may have put in
/// it (escape sequences that would drive the terminal) shown as `\xNN`;
/// newlines and tabs stay.
fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.contains(bad) {
        return text.into();
    }
    // Serial consoles end lines with \r\n; only a lone \r is suspect.
    text.replace("\r\n", "\n")
        .chars()
        .map(|c| {
            if bad(c) {
                format!("\\x{:02x}", u32::from(c))
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// Ctrl-C, SIGTERM, SIGHUP: no destructor runs when the process exits from
/// the handler, so stop the VMs and remove their files there.
fn install_interrupt_handler() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        ktstr::vm::kill_all();
        // stderr may be gone with the terminal: no panic over it.
        let _ = writeln!(std::io::stderr(), "ktstr: interrupted");
        std::process::exit(130);
    })?;
    Ok(())
}

/// A spinner with the current phase on a terminal; nothing otherwise (the
/// log lines say enough in CI logs).
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Progress(Some(bar))
    }

    fn set(&self, phase: &str) {
        if let Some(b) = &self.0 {
            b.set_message(phase.to_string());
        }
    }

    fn done(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_says_each_cause_once() {
        let io = std::io::Error::other("is a FIFO");
        let e = anyhow::Error::new(io)
            .context("cannot read core file x: is a FIFO")
            .context("dumping");
        assert_eq!(
            error_text(&e),
            "dumping: cannot read core file x: is a FIFO"
        );
    }

    #[test]
    fn byte_counts_take_binary_suffixes_and_refuse_the_rest() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("16M"), Ok(16 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        for bad in ["", "M", "-1K", "1.5M", "99999999999999G"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn guest_text_cannot_drive_the_terminal() {
        let hostile = "comm \u{1b}]0;owned\u{7}\u{1b}[2Jx\ry\r\n\tok";
        let safe = terminal_safe(hostile);
        assert!(!safe.contains('\u{1b}') && !safe.contains('\r') && !safe.contains('\u{7}'));
        assert_eq!(safe, "comm \\x1b]0;owned\\x07\\x1b[2Jx\\x0dy\n\tok");
        assert!(matches!(
            terminal_safe("plain\n"),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
