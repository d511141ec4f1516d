//! `ktstr run`, `ktstr shell` and `ktstr scenarios`.

use std::process::ExitCode;

use anyhow::Context;

use super::output::{Progress, install_interrupt_handler, terminal_safe};
use super::{VmArgs, parse_duration};

/// `ktstr run`'s arguments.
#[derive(clap::Args)]
pub struct RunArgs {
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
    /// Freeze and dump this long after the workers start (e.g. 2s).
    #[arg(long, value_parser = parse_duration)]
    dump_at: Option<std::time::Duration>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Run a scenario and report; exit 1 when a check failed.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let RunArgs {
        vm,
        scenario,
        max_gap,
        fairness_spread,
        duration,
        dump_at,
        json,
    } = args;
    install_interrupt_handler()?;
    let mut cfg = vm.session()?;
    cfg.duration = duration;
    let scenario = ktstr::scenario::catalogue::find(&scenario)?;
    let thresholds = ktstr::checks::Thresholds {
        max_gap,
        fairness_spread: fairness_spread / 100.0,
    };
    let progress = Progress::new();
    let report = ktstr::run::run_with(&cfg, &scenario, &thresholds, dump_at, &|p| progress.set(p));
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

/// An interactive shell in the guest until its user exits it.
pub fn shell(vm: VmArgs) -> anyhow::Result<ExitCode> {
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

/// The scenario catalogue, as names or as JSON.
pub fn scenarios(json: bool) -> anyhow::Result<ExitCode> {
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
