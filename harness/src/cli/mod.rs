//! The command line: what `ktstr` accepts, and a module per command.

mod dump;
mod gauntlet;
mod kernel;
pub mod output;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ktstr::session::{SchedulerConfig, SessionConfig};

/// Test Linux sched_ext schedulers in throw-away VMs, and see their exact
/// state when they fail.
#[derive(Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Kernels: fetch or build a sched_ext kernel, list, clean, inspect.
    Kernel {
        #[command(subcommand)]
        command: kernel::KernelCommand,
    },
    /// Boot a kernel in a VM with a scheduler, run a scenario, check how
    /// the scheduler and the workers fared (optionally with a mid-run dump
    /// of the scheduler's state).
    Run(run::RunArgs),
    /// Boot a kernel with a scheduler and give an interactive busybox shell
    /// on this terminal; the VM powers off when the shell exits.
    Shell {
        #[command(flatten)]
        vm: VmArgs,
    },
    /// Run one scheduler across topologies, flag profiles and scenarios,
    /// one VM each, and summarize.
    Gauntlet(gauntlet::GauntletArgs),
    /// Reports: merge the JSON reports of many runs or shards into one
    /// summary.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
    },
    /// List the ready scenarios.
    Scenarios {
        /// Print them as JSON (the full definitions).
        #[arg(long)]
        json: bool,
    },
    /// Show the sched_ext state captured in an ELF core file (QEMU's
    /// dump-guest-memory, or a kdump vmcore).
    Dump(dump::DumpArgs),
}

/// What a VM is made of: kernel, scheduler, topology, memory.
#[derive(clap::Args)]
pub struct VmArgs {
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
    pub fn session(self) -> anyhow::Result<SessionConfig> {
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
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        return std::time::Duration::try_from_secs_f64(secs)
            .map_err(|e| format!("{s}: not a duration: {e}"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{s}: not a duration (e.g. 10s, 500ms, 2.5): {e}"))
}

/// A byte count: a number, optionally with K, M or G (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
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

pub fn parse_hex(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| format!("{s}: not a hex number: {e}"))
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Summarize every `*.json` run report under the given files or
    /// directories (e.g. each shard's target/ktstr/); exit 1 if any failed.
    Merge {
        /// Report files or directories.
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Carry out one command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Shell { vm } => run::shell(vm),
        Command::Scenarios { json } => run::scenarios(json),
        Command::Gauntlet(args) => gauntlet::gauntlet(args),
        Command::Report {
            command: ReportCommand::Merge { paths, json },
        } => gauntlet::merge(paths, json),
        Command::Dump(args) => dump::dump(args),
        Command::Kernel { command } => kernel::kernel(command),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
