use super::*;

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[test]
fn results_are_parsed_with_files_output_facts_and_times() {
    let mut r = ResultsReader::default();
    let report = br#"{"a": 1}"#;
    let encoded = b64(report);
    let (first, second) = encoded.split_at(4);
    let text = format!(
        "{MARK} init 1.50\r\n{MARK} fact module-kvm ok\r\n{MARK} fact kvm-dmesg SVM: Nested Paging enabled|x\r\n\
         {MARK} modules 2.00\r\nkernel noise\r\n{MARK} job-begin run 3.00\r\n{MARK} job-end run 1 13.25\r\n\
         {MARK} output-begin run\r\n{}\r\n{MARK} output-end run\r\n\
         {MARK} file-begin run report.json\r\n{first}\r\n{second}\r\n{MARK} file-end run\r\n{MARK} done 14.0\r\n",
        b64(b"line one\nline two\n"),
    );
    // Fed in pieces, as a growing file is read.
    let (a, b) = text.as_bytes().split_at(37);
    r.bytes(a);
    r.bytes(b);
    let run = r.run;
    assert_eq!(run.init_at, Some(1.5));
    assert_eq!(run.modules_at, Some(2.0));
    assert_eq!(run.done_at, Some(14.0));
    assert_eq!(run.facts["module-kvm"], "ok");
    assert_eq!(run.facts["kvm-dmesg"], "SVM: Nested Paging enabled|x");
    let job = &run.jobs[0];
    assert_eq!(job.name, "run");
    assert_eq!(job.exit_code, Some(1));
    assert_eq!(job.secs, Some(10.25));
    assert!(!job.passed());
    assert_eq!(job.output, "line one\nline two\n");
    assert_eq!(job.files["report.json"], report);
}

#[test]
fn a_job_cut_off_has_no_exit_code() {
    let mut r = ResultsReader::default();
    r.bytes(format!("{MARK} job-begin boot 3.0\n").as_bytes());
    assert_eq!(r.run.jobs[0].exit_code, None);
    assert_eq!(r.run.jobs[0].secs, None);
}

#[test]
fn the_init_script_quotes_arguments_and_refuses_bad_names() {
    let mut cfg = L1Config::new("/cache/kernels/7.3.4+deb13-cloud-amd64");
    cfg.jobs.push(
        Job::new("run-1", &["/bin/x", "it's", "$HOME"])
            .env("KTSTR_REQUIRE", "all")
            .timeout(Duration::from_secs(90)),
    );
    let s = init_script(&cfg).unwrap();
    assert!(
        s.contains(r#"job run-1 90 env 'KTSTR_REQUIRE=all' '/bin/x' 'it'\''s' '$HOME'"#),
        "{s}"
    );
    assert!(s.contains("insmod /ktstr-nested/modules/$m.ko"), "{s}");
    assert!(s.contains("for m in irqbypass kvm kvm-amd;"), "{s}");
    assert!(
        s.contains(">/dev/ttyS2; sleep 5; done ) &"),
        "a heartbeat: {s}"
    );
    assert!(s.contains("export KTSTR_CACHE_DIR='/ktstr-cache'"), "{s}");
    assert!(s.trim_end().ends_with("echo o >/proc/sysrq-trigger"), "{s}");
    for bad in ["", "Up", "a b", "x;y"] {
        let mut cfg = cfg.clone();
        cfg.jobs = vec![Job::new(bad, &["/bin/true"])];
        assert!(
            matches!(init_script(&cfg), Err(NestedError::JobName(_))),
            "{bad:?}"
        );
    }
    cfg.jobs.push(Job::new("run-1", &["/bin/true"]));
    assert!(init_script(&cfg).is_err(), "a name given twice");
}

/// The generated script is valid busybox sh (parsed, not run).
#[test]
fn the_init_script_parses() {
    let Some(busybox) = crate::kernel::fetch::which("busybox") else {
        eprintln!("SKIPPED the_init_script_parses: no busybox");
        return;
    };
    let mut cfg = L1Config::new("/cache/kernels/r");
    cfg.jobs.push(Job::new("a", &["/bin/true"]));
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("init");
    std::fs::write(&path, init_script(&cfg).unwrap()).unwrap();
    let out = Command::new(busybox)
        .args(["sh", "-n"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Programs keep their host paths in L1, and a host path may be anywhere
/// (CI clones under /tmp): L1 mounts nothing over a place that may hold
/// one, as a tmpfs on /tmp did.
#[test]
fn the_init_script_hides_no_program_behind_a_mount() {
    let cfg = L1Config::new("/cache/kernels/7.3.4+deb13-cloud-amd64");
    let script = init_script(&cfg).unwrap();
    let mounted: Vec<&str> = script
        .lines()
        .filter(|l| l.trim_start().starts_with("mount "))
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    for dir in &mounted {
        assert!(
            ["/proc", "/sys", "/dev", "/dev/shm"].contains(dir),
            "L1 mounts over {dir}, where a program could sit:\n{script}"
        );
    }
    assert!(mounted.contains(&"/proc"), "{script}");
}

#[test]
fn a_hung_l1s_cpu_is_summarized_per_sample() {
    let mut run = ResultsReader::default().run;
    run.hang_registers = vec![
        // Shape of QEMU 7.2's `info registers`, abridged.
        "RAX=0000000000000000 RBX=ffffffff82a0c940\n\
             RIP=ffffffff8132acdf RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n\
             CR0=80050033 CR2=000055d0c8a4e000 CR3=0000000001c3e000 CR4=00350ef0\n"
            .into(),
        "(no registers: QMP: connection closed)".into(),
    ];
    assert_eq!(
        run.hang_cpu(),
        [
            "RIP=ffffffff8132acdf RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1 CR3=1c3e000",
            "(no registers: QMP: connection closed)",
        ]
    );
}

#[test]
fn a_hung_l1s_local_apic_is_one_line_of_timer_and_interrupt_state() {
    let mut run = ResultsReader::default().run;
    assert_eq!(run.hang_interrupts(), "");
    // QEMU 7.2's `info lapic`, abridged, as a hung L1 printed it: the
    // timer fired (count 0) and its vector waits in IRR, never taken.
    run.hang_lapic = "dumping local APIC state for CPU 0 \n\n\
        LVT0\t 0x00010700 active-hi edge  masked                      ExtINT (vec 0)\n\
        LVTT\t 0x000000ec active-hi edge                 one-shot     Fixed  (vec 236)\n\
        Timer\t DCR=0x3 (divide by 16) initial_count = 6072 current_count = 0\n\
        SPIV\t 0x000001ff APIC enabled, focus=off, spurious vec 255\n\
        ISR\t (none)\n\
        IRR\t 236 \n\n\
        APR 0x00 TPR 0x10 DFR 0x0f LDR 0x00 PPR 0x10\n"
        .into();
    assert_eq!(
        run.hang_interrupts(),
        "LVTT 0x000000ec active-hi edge one-shot Fixed (vec 236); \
         Timer DCR=0x3 (divide by 16) initial_count = 6072 current_count = 0; \
         ISR (none); IRR 236; APR 0x00 TPR 0x10 DFR 0x0f LDR 0x00 PPR 0x10"
    );
    run.hang_lapic = "(no registers: QMP: connection closed)".into();
    assert_eq!(
        run.hang_interrupts(),
        "(no registers: QMP: connection closed)"
    );
}
