//! `ktstr run`, `ktstr shell` and `ktstr scenarios`.

use std::process::ExitCode;

use anyhow::Context;

use super::output::{Progress, install_interrupt_handler, terminal_safe};
use super::{VmArgs, parse_bytes, parse_duration};

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
    /// Fail a worker whose 99th-percentile wakeup latency exceeds this
    /// (e.g. 20ms); reported without a limit otherwise.
    #[arg(long, value_parser = parse_duration)]
    max_wake_p99: Option<std::time::Duration>,
    /// Fail when competing weighted cgroups' CPU time per unit of
    /// cpu.weight spreads more than this percentage.
    #[arg(long, default_value_t = 50.0)]
    weight_spread: f64,
    /// Fail a worker that does fewer units of work per second than this
    /// (its own units: spins, messages, forks); reported without a limit
    /// otherwise.
    #[arg(long)]
    min_throughput: Option<f64>,
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
}

/// Run a scenario and report; exit 1 when a check failed.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let RunArgs {
        vm,
        scenario,
        max_gap,
        fairness_spread,
        max_wake_p99,
        weight_spread,
        min_throughput,
        duration,
        dump_at,
        dump_every,
        dump_follow_up,
        dump_budget,
        json,
    } = args;
    install_interrupt_handler()?;
    let mut cfg = vm.session()?;
    cfg.duration = duration;
    let scenario = ktstr::scenario::catalogue::find(&scenario)?;
    let thresholds = ktstr::checks::Thresholds {
        max_gap,
        fairness_spread: fairness_spread / 100.0,
        weight_spread: weight_spread / 100.0,
        max_wake_p99,
        min_throughput,
        ..Default::default()
    };
    let progress = Progress::new();
    let plan = ktstr::series::DumpPlan {
        at: dump_at,
        every: dump_every,
        follow_up: Some(dump_follow_up).filter(|d| !d.is_zero()),
        budget_bytes: dump_budget,
    };
    let report = ktstr::run::run_planned(&cfg, &scenario, &thresholds, &plan, &|p| progress.set(p));
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
