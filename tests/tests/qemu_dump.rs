//! `ktstr dump` on a real kernel: boot the fetched sched_ext kernel under
//! QEMU TCG with a busybox initramfs whose /init prints the kallsyms lines
//! the walker needs and starts named busy workers, freeze it over QMP,
//! dump guest memory, and check the dump against what the guest said.
//! (No BPF scheduler yet: tasks run under the fair class, `scx_root` is
//! NULL; the scheduler side is covered once the guest agent lands.)

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cpio::NewcBuilder;
use ktstr::dump::{DumpOptions, dump};
use ktstr_tests::qemu::{Qemu, Qmp};
use ktstr_tests::{Need, have_tool, skip};
use ktstr_walker::Symbols;
use ktstr_walker::render::Placement;

const TEST: &str = "qemu_dump_of_a_real_kernel";
const WORKERS: usize = 3;

/// /init: mount proc, print the symbols the walker needs, start named
/// spinners, report their pids, then idle.
fn init_script() -> String {
    let names = Symbols::NAMES.join("|");
    format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         echo KTSTR-KALLSYMS-BEGIN\n\
         /bin/busybox grep -E ' ({names})$' /proc/kallsyms\n\
         echo KTSTR-KALLSYMS-END\n\
         for i in $(/bin/busybox seq {WORKERS}); do\n\
           /bin/busybox sh -c 'echo -n spinner > /proc/self/comm; while :; do :; done' &\n\
           echo KTSTR-WORKER $!\n\
         done\n\
         echo KTSTR-READY\n\
         while :; do /bin/busybox sleep 1; done\n"
    )
}

fn initramfs(busybox: &Path) -> Vec<u8> {
    let dir = |name: &str| {
        (
            NewcBuilder::new(name).mode(0o040755),
            Cursor::new(Vec::new()),
        )
    };
    let file =
        |name: &str, data: Vec<u8>| (NewcBuilder::new(name).mode(0o100755), Cursor::new(data));
    let entries = vec![
        dir("bin"),
        dir("dev"),
        dir("proc"),
        (
            NewcBuilder::new("dev/console")
                .mode(0o020600)
                .rdev_major(5)
                .rdev_minor(1),
            Cursor::new(Vec::new()),
        ),
        file("bin/busybox", std::fs::read(busybox).expect("busybox")),
        file("init", init_script().into_bytes()),
    ];
    cpio::write_cpio(entries.into_iter(), Vec::new()).expect("cpio")
}

#[test]
fn qemu_dump_of_a_real_kernel() {
    for tool in ["qemu-system-x86_64", "busybox"] {
        if !have_tool(tool) {
            return skip(
                TEST,
                Need::Tool,
                &format!("{tool} not installed (./setup.sh installs it)"),
            );
        }
    }
    let dir = match ktstr_tests::cached_kernel_dir() {
        Ok(d) => d,
        Err(e) => return skip(TEST, Need::Kernel, &e),
    };
    let busybox = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let initrd = tmp.path().join("initrd.cpio");
    std::fs::write(&initrd, initramfs(Path::new(busybox.trim()))).unwrap();
    let (qmp_path, console, core) = (
        tmp.path().join("qmp"),
        tmp.path().join("console"),
        tmp.path().join("core"),
    );
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "256",
            "-no-reboot",
        ])
        .args(["-display", "none", "-monitor", "none", "-nodefaults"])
        .arg("-kernel")
        .arg(dir.join("vmlinux"))
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 nokaslr rdinit=/init panic=-1"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut qemu = Qemu(child);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    let mut qmp = Qmp::connect(&qmp_path, deadline);
    let log = loop {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        if log.contains("KTSTR-READY") {
            break log;
        }
        if let Some(status) = qemu.0.try_wait().unwrap() {
            panic!("QEMU exited ({status}) before /init was ready; console:\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "/init not ready within 120 s; console:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let the spinners run a moment so the freeze lands mid-work.
    std::thread::sleep(Duration::from_millis(500));
    qmp.execute("stop", serde_json::json!({}));
    qmp.execute(
        "dump-guest-memory",
        serde_json::json!({ "paging": false, "protocol": format!("file:{}", core.display()) }),
    );
    drop(qemu);

    // What the guest itself said.
    let kallsyms: String = log
        .lines()
        .skip_while(|l| !l.contains("KTSTR-KALLSYMS-BEGIN"))
        .skip(1)
        .take_while(|l| !l.contains("KTSTR-KALLSYMS-END"))
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    let workers: Vec<i32> = log
        .lines()
        .filter_map(|l| l.trim().strip_prefix("KTSTR-WORKER ")?.trim().parse().ok())
        .collect();
    assert_eq!(workers.len(), WORKERS, "console:\n{log}");
    let ksyms = tmp.path().join("kallsyms");
    std::fs::write(&ksyms, &kallsyms).unwrap();

    let report = dump(&DumpOptions {
        core: core.clone(),
        vmlinux: dir.display().to_string(),
        kallsyms: Some(ksyms),
        system_map: None,
        cr3: None,
    })
    .expect("dump of the QEMU core");
    eprintln!(
        "{TEST}: frozen after {:?}\n{}",
        start.elapsed(),
        report.to_text()
    );

    let h = &report.health;
    assert!(
        h.faults.is_empty()
            && h.missing_groups.is_empty()
            && h.truncated.is_empty()
            && h.dropped.is_empty(),
        "{h:?}"
    );
    assert!(!report.scheduler.attached, "no BPF scheduler was loaded");
    assert_eq!(report.cpus.len(), 2, "one rq per vCPU");
    let by_pid: BTreeMap<i32, _> = report.tasks.iter().map(|t| (t.pid, t)).collect();
    for pid in &workers {
        let t = by_pid
            .get(pid)
            .unwrap_or_else(|| panic!("worker {pid} not in the dump"));
        assert_eq!(t.comm, "spinner");
        assert_eq!(t.class, "fair");
        assert!(
            matches!(
                t.placement,
                Placement::Running { .. } | Placement::Runnable | Placement::Migrating
            ),
            "a busy worker is running or runnable: {:?}",
            t.placement
        );
    }
    assert_eq!(by_pid.get(&1).map(|t| t.comm.as_str()), Some("init"));
    let addrs: std::collections::HashSet<u64> = report.tasks.iter().map(|t| t.addr).collect();
    for c in &report.cpus {
        assert!(
            c.curr_is_idle || addrs.contains(&c.curr.addr),
            "cpu {} runs an unknown task {:#x}",
            c.cpu,
            c.curr.addr
        );
        for t in c.local_dsq.iter().chain(&c.runnable) {
            assert!(
                addrs.contains(&t.addr),
                "cpu {} holds unknown task {:#x}",
                c.cpu,
                t.addr
            );
        }
    }
    let running = report
        .tasks
        .iter()
        .filter(|t| matches!(t.placement, Placement::Running { .. }))
        .count();
    assert!(running >= 1, "two vCPUs, three spinners: someone runs");
}
