//! `ktstr dump`: the sched_ext state in an ELF core.

use std::process::ExitCode;

use super::output::terminal_safe;
use super::parse_hex;

/// `ktstr dump`'s arguments.
#[derive(clap::Args)]
pub struct DumpArgs {
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
}

/// Print what the core holds, as text or JSON.
pub fn dump(args: DumpArgs) -> anyhow::Result<ExitCode> {
    let DumpArgs {
        core,
        vmlinux,
        kallsyms,
        system_map,
        cr3,
        json,
    } = args;
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
