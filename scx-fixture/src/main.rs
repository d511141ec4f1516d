//! `scx_fixture`: a sched_ext scheduler that fails on command, the known-bad
//! scheduler ktstr's failure-dump tests run. The BPF half
//! (`src/bpf/main.bpf.c`) queues tasks as `--mode` says and injects the
//! failures the flags ask for; this loader sets them, attaches, waits for
//! SIGINT/SIGTERM or the scheduler's exit, and reports how it ended.

use std::mem::MaybeUninit;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use libbpf_rs::OpenObject;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

mod bpf_skel {
    #![allow(missing_docs, unused_imports, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/bpf_skel.rs"));
}
mod exit;

use bpf_skel::BpfSkelBuilder;
use scx_fixture::intf;

/// How tasks are queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Every task on SCX_DSQ_GLOBAL, FIFO.
    Global,
    /// Every task on its CPU's local DSQ.
    Local,
    /// `--user-dsqs` FIFO DSQs (ids 0x100, 0x101, ...), tasks spread by pid.
    User,
    /// One vtime-ordered DSQ (id 0x200).
    Vtime,
}

/// A sched_ext scheduler for testing ktstr, with failure injection.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// How tasks are queued.
    #[arg(long, value_enum, default_value = "global")]
    mode: Mode,
    /// How many user DSQs `--mode user` creates.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=intf::FIXTURE_MAX_USER_DSQS as i64))]
    user_dsqs: u32,
    /// Never dispatch tasks whose comm starts with this (they wait on DSQ
    /// 0xdead until the kernel's watchdog ejects the scheduler).
    #[arg(long, value_name = "PREFIX")]
    stall_comm: Option<String>,
    /// Give this CPU nothing from ops.dispatch() (user and vtime modes).
    #[arg(long, value_name = "CPU")]
    stall_cpu: Option<u32>,
    /// When `--stall-cpu` starts, after attaching.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    stall_after_ms: u64,
    /// Call scx_bpf_error() this long after attaching (or after
    /// `--error-clock-comm`).
    #[arg(long, value_name = "MS")]
    error_after_ms: Option<u64>,
    /// Start `--error-after-ms`'s clock at the first enqueue of a task
    /// whose comm starts with this (a test's workers), not at attaching.
    #[arg(long, value_name = "PREFIX")]
    error_clock_comm: Option<String>,
    /// The kernel watchdog's timeout (sched_ext_ops.timeout_ms; 0: the
    /// kernel's default).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    watchdog_ms: u32,
    /// Busy-wait this long in ops.exit(): the kernel keeps the exiting
    /// scheduler reachable from `scx_root` until ops.exit() returns, so a
    /// host reading guest memory can see it.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    exit_hold_ms: u64,
}

impl Mode {
    fn id(self) -> u32 {
        match self {
            Mode::Global => intf::FIXTURE_MODE_GLOBAL,
            Mode::Local => intf::FIXTURE_MODE_LOCAL,
            Mode::User => intf::FIXTURE_MODE_USER,
            Mode::Vtime => intf::FIXTURE_MODE_VTIME,
        }
    }
}

impl Args {
    /// Flag combinations that would silently do nothing.
    fn check(&self) -> Result<()> {
        for (flag, prefix) in [
            ("--stall-comm", &self.stall_comm),
            ("--error-clock-comm", &self.error_clock_comm),
        ] {
            if let Some(c) = prefix
                && (c.is_empty() || c.len() > 15)
            {
                bail!("{flag} must be 1 to 15 bytes (a comm is at most 15), got {c:?}");
            }
        }
        if self.error_clock_comm.is_some() && self.error_after_ms.is_none() {
            bail!("--error-clock-comm without --error-after-ms");
        }
        if self.stall_cpu.is_some() && matches!(self.mode, Mode::Global | Mode::Local) {
            bail!(
                "--stall-cpu needs --mode user or vtime: in {:?} mode tasks reach CPUs without ops.dispatch()",
                self.mode
            );
        }
        if self.stall_cpu.is_none() && self.stall_after_ms != 0 {
            bail!("--stall-after-ms without --stall-cpu");
        }
        if self.exit_hold_ms > 10_000 {
            bail!(
                "--exit-hold-ms is at most 10000 (the kernel's RCU stall warnings start at 21 s)"
            );
        }
        Ok(())
    }
}

fn ms_to_ns(ms: u64) -> u64 {
    ms.saturating_mul(1_000_000)
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("scx_fixture: {e:#}");
            std::process::exit(2);
        }
    }
}

/// Attach, wait, report; the exit code: 0 when stopped by a signal or a
/// clean unregistration, 1 when the kernel or the BPF side ended it.
fn run(args: &Args) -> Result<i32> {
    args.check()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("installing the SIGINT/SIGTERM handler")?;

    let mut object = MaybeUninit::<OpenObject>::uninit();
    let mut open = BpfSkelBuilder::default()
        .open(&mut object)
        .context("opening the BPF object")?;
    let rodata = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("the BPF object has no .rodata")?;
    rodata.mode = args.mode.id();
    rodata.nr_user_dsqs = args.user_dsqs;
    for (prefix, field) in [
        (&args.stall_comm, &mut rodata.stall_comm),
        (&args.error_clock_comm, &mut rodata.error_clock_comm),
    ] {
        if let Some(c) = prefix {
            for (dst, src) in field.iter_mut().zip(c.bytes()) {
                *dst = src as i8;
            }
        }
    }
    rodata.stall_cpu = args.stall_cpu.map_or(-1, |c| c as i32);
    rodata.stall_cpu_after_ns = ms_to_ns(args.stall_after_ms);
    rodata.error_after_ns = args.error_after_ms.map_or(0, ms_to_ns);
    rodata.exit_hold_ns = ms_to_ns(args.exit_hold_ms);
    open.struct_ops.fixture_ops_mut().timeout_ms = args.watchdog_ms;
    // The library's migration probe is for schedulers that ask
    // is_migration_disabled(); this one does not.
    open.progs.scx_lib_init_probe.set_autoload(false);

    let mut skel = open
        .load()
        .context("loading the BPF scheduler (a kernel with sched_ext and BTF is needed)")?;
    let link = skel
        .maps
        .fixture_ops
        .attach_struct_ops()
        .context("attaching (is another sched_ext scheduler attached?)")?;
    println!("scx_fixture: attached, {args:?}");

    let exited = loop {
        let uei = skel
            .maps
            .data_data
            .as_deref()
            .map(|d| exit::ExitInfo::read(&d.uei));
        if let Some(e) = uei.filter(|e| e.kind != 0) {
            break Some(e);
        }
        if stop.load(Ordering::Relaxed) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(link);
    if let Some(bss) = skel.maps.bss_data.as_deref() {
        println!(
            "scx_fixture: enqueued {}, stalled {}, dispatches withheld {}",
            bss.nr_enqueued, bss.nr_stalled, bss.nr_dispatch_skipped
        );
    }
    match exited {
        None => {
            println!("scx_fixture: stopped by signal");
            Ok(0)
        }
        Some(e) => {
            eprintln!("scx_fixture: {e}");
            Ok(if e.is_error() { 1 } else { 0 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str]) -> Result<()> {
        Args::try_parse_from(std::iter::once("scx_fixture").chain(args.iter().copied()))?.check()
    }

    #[test]
    fn flags_that_would_do_nothing_are_refused_with_the_reason() {
        assert!(check(&["--mode=user", "--stall-cpu=1", "--stall-after-ms=5"]).is_ok());
        assert!(check(&["--stall-comm=ktstr-spin", "--error-after-ms=10"]).is_ok());
        let err = |a: &[&str]| check(a).unwrap_err().to_string();
        assert!(err(&["--stall-cpu=1"]).contains("needs --mode user or vtime"));
        assert!(err(&["--mode=local", "--stall-cpu=0"]).contains("needs --mode user or vtime"));
        assert!(err(&["--stall-after-ms=3"]).contains("without --stall-cpu"));
        assert!(err(&["--stall-comm="]).contains("1 to 15 bytes"));
        assert!(err(&["--stall-comm=a-very-long-comm-name"]).contains("1 to 15 bytes"));
        assert!(err(&["--exit-hold-ms=60000"]).contains("at most 10000"));
        assert!(check(&["--error-after-ms=10", "--error-clock-comm=ktstr-"]).is_ok());
        assert!(err(&["--error-clock-comm=ktstr-"]).contains("without --error-after-ms"));
        assert!(
            err(&["--error-after-ms=1", "--error-clock-comm="])
                .contains("--error-clock-comm must be 1 to 15 bytes")
        );
        assert!(err(&["--user-dsqs=0"]).contains("0"));
        assert!(err(&["--user-dsqs=65"]).contains("65"));
        assert!(err(&["--mode=fifo"]).contains("fifo"));
    }
}
