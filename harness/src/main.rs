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
