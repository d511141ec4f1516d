//! The embedding examples of ktstr-walker, run as a VMM author would run
//! them, against a QEMU that is not ours: the fetched kernel booted from
//! its bzImage (KASLR) with no initramfs, left hanging in its root-mount
//! panic (a kernel that runs no scheduler is still a kernel to find);
//! `qemu_live` maps its RAM file and pauses it over QMP, `dump_core` reads
//! the ELF core QEMU writes. One boot for both.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ktstr::dump::{DumpOptions, dump};
use ktstr_tests::qemu::{Qemu, connect};
use ktstr_tests::{Need, have_tool, skip};

const TEST: &str = "walker_examples_find_a_kaslr_guest_in_qemu_and_its_core";

/// `cargo run` of a ktstr-walker example; its stdout.
fn example(name: &str, features: &str, args: &[&Path]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["run", "-q", "-p", "ktstr-walker", "--features", features])
        .args(["--example", name, "--"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "example {name}: {}\n{text}",
        out.status
    );
    text
}

/// The report's text without the lines about the read itself.
fn state(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with("capture:") && !l.contains("pause split"))
        .collect()
}

#[test]
fn walker_examples_find_a_kaslr_guest_in_qemu_and_its_core() {
    if !have_tool("qemu-system-x86_64") {
        return skip(TEST, Need::Tool, "qemu-system-x86_64 not installed");
    }
    let dir = match ktstr_tests::cached_kernel_dir() {
        Ok(d) => d,
        Err(e) => return skip(TEST, Need::Kernel, &e),
    };
    let (bzimage, vmlinux) = (dir.join("vmlinuz"), dir.join("vmlinux"));
    let tmp = tempfile::tempdir().unwrap();
    let (ram, sock, core) = (
        tmp.path().join("ram"),
        tmp.path().join("qmp"),
        tmp.path().join("core"),
    );
    let console = tmp.path().join("console");
    let qemu = Command::new("qemu-system-x86_64")
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args([
            "-machine",
            "q35,memory-backend=m",
            "-m",
            "256M",
            "-smp",
            "2",
        ])
        .args(["-accel", "tcg,thread=single", "-cpu", "max"])
        .arg("-object")
        .arg(format!(
            "memory-backend-file,id=m,size=256M,mem-path={},share=on",
            ram.display()
        ))
        .arg("-kernel")
        .arg(&bzimage)
        // No initramfs: the boot ends in a root-mount panic and stays there.
        .args(["-append", "console=ttyS0 panic=0"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start QEMU");
    let qemu = Qemu(qemu);
    let deadline = Instant::now() + Duration::from_secs(240);
    // QMP serves one client at a time: the test lets go of it while the
    // live example uses it.
    drop(connect(&sock, deadline));
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("Kernel panic")
    {
        assert!(
            Instant::now() < deadline,
            "the kernel never reached its panic"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // (a) The live guest, through its RAM file and QMP.
    let live = example("qemu_live", "embed,vm-memory", &[&sock, &ram, &vmlinux]);
    eprintln!("{live}");
    assert!(live.contains("scheduler: none attached"), "{live}");
    assert!(live.contains("cpu 0") && live.contains("cpu 1"), "{live}");
    let split = live.lines().find(|l| l.contains("pause split")).unwrap();
    assert!(
        !split.contains("stop -") && !split.contains("resume -"),
        "{split}"
    );

    // (b) The same guest's ELF core, with the vmlinux alone.
    let mut qmp = connect(&sock, deadline);
    qmp.execute("stop", serde_json::json!({})).unwrap();
    qmp.execute(
        "dump-guest-memory",
        serde_json::json!({ "paging": false, "protocol": format!("file:{}", core.display()) }),
    )
    .unwrap();
    let from_core = example("dump_core", "embed", &[&core, &vmlinux]);
    // ktstr dump of the same core, through the harness: the same state.
    let harness = dump(&DumpOptions {
        core: core.clone(),
        vmlinux: vmlinux.display().to_string(),
        kallsyms: None,
        system_map: None,
        cr3: None,
    })
    .expect("ktstr dump");
    assert_eq!(state(&from_core), state(&harness.to_text()));
    assert!(from_core.contains("scheduler: none attached"));
    drop(qmp);
    drop(qemu);
    ktstr_tests::assert_no_vm_left_behind();
}
