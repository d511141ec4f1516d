//! `ktstr gauntlet` and `ktstr report merge`.

use std::path::PathBuf;
use std::process::ExitCode;

use ktstr::gauntlet::GauntletConfig;
use ktstr::summary::Summary;

use super::output::{Progress, install_interrupt_handler, terminal_safe};
use super::{VmArgs, parse_duration};

/// `ktstr gauntlet`'s arguments.
#[derive(clap::Args)]
pub struct GauntletArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Topologies to run on (repeat); default the --topology one.
    #[arg(long = "on", value_name = "TOPOLOGY")]
    topologies: Vec<String>,
    /// The scheduler's flag profiles to run with (repeat; `ktstr
    /// gauntlet --list-profiles` shows them); default `default`.
    #[arg(long = "profile")]
    profiles: Vec<String>,
    /// Scenarios to run (repeat); default `steady`.
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// How long each workload runs.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: std::time::Duration,
    /// Run at most this many VMs, spread evenly over the combinations.
    #[arg(long)]
    max_vms: Option<usize>,
    /// Write each run's JSON report into this directory.
    #[arg(long)]
    json_dir: Option<PathBuf>,
    /// Print the scheduler's known flag profiles and exit.
    #[arg(long)]
    list_profiles: bool,
}

/// Run every combination and summarize; exit 1 when any failed.
pub fn gauntlet(args: GauntletArgs) -> anyhow::Result<ExitCode> {
    let Some(scheduler) = args.vm.scheduler.clone() else {
        anyhow::bail!("a gauntlet needs --scheduler (a name such as bpfland, or a path)");
    };
    if args.list_profiles {
        for p in ktstr::profiles::of(&scheduler) {
            println!("{:<14} {:<40} {}", p.name, p.args.join(" "), p.description);
        }
        return Ok(ExitCode::SUCCESS);
    }
    install_interrupt_handler()?;
    let topology = args.vm.topology.to_string();
    let mut base = args.vm.session()?;
    base.duration = args.duration;
    let cfg = GauntletConfig {
        base,
        scheduler,
        topologies: if args.topologies.is_empty() {
            vec![topology]
        } else {
            args.topologies
        },
        profiles: args.profiles,
        scenarios: args.scenarios,
        max_vms: args.max_vms,
        thresholds: ktstr::checks::Thresholds::default(),
        json_dir: args.json_dir,
    };
    let progress = Progress::new();
    let result = ktstr::gauntlet::run(&cfg, &|p| {
        progress.set(p);
        if !progress.is_terminal() && !p.contains(": ") {
            tracing::info!("{p}");
        }
    });
    progress.done();
    let (_, summary) = result?;
    print!("{}", terminal_safe(&summary.to_text()));
    Ok(exit(&summary))
}

/// `ktstr report merge`: JSON reports of several runs or shards, as one
/// summary.
pub fn merge(paths: Vec<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let summary = Summary::merge(&paths)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", terminal_safe(&summary.to_text()));
    }
    Ok(exit(&summary))
}

fn exit(summary: &Summary) -> ExitCode {
    if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
