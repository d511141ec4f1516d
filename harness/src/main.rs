//! The `ktstr` command line.
//!
//! Exit codes: 0 success; 1 a check failed (the kernel is unusable);
//! 2 an infrastructure error (download, file, tool).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ktstr::kernel::Kernel;
use ktstr::kernel::fetch::{FetchOptions, fetch};
use ktstr::kernel::info::KernelInfo;

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
        /// /proc/kallsyms of the same boot (needed for stripped kernels).
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

fn parse_hex(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| format!("{s}: not a hex number: {e}"))
}

#[derive(Subcommand)]
enum KernelCommand {
    /// Download the newest Debian trixie-backports cloud kernel (sched_ext,
    /// BTF) into the cache; prints its directory as the last line.
    Fetch {
        /// A version (`7.3.4+deb13`) or release to fetch instead of the newest.
        #[arg(long)]
        release: Option<String>,
        /// Do not contact the archive; use the newest cached kernel.
        #[arg(long)]
        offline: bool,
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
            eprintln!("ktstr: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
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
                print!("{}", report.to_text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Kernel { command } => match command {
            KernelCommand::Fetch { release, offline } => {
                let dir = fetch(&FetchOptions { release, offline })?;
                println!("{}", dir.display());
                Ok(ExitCode::SUCCESS)
            }
            KernelCommand::Info { kernel, json } => {
                let k = Kernel::resolve(&kernel)?;
                let info = KernelInfo::gather(&k);
                if json {
                    println!("{}", serde_json::to_string_pretty(&info)?);
                } else {
                    print!("{}", info.to_text());
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
