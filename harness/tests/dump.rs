//! `ktstr dump` end to end through the binary: the real kernel's BTF gives
//! the layout; the memory is a fixture: walker-core's synthetic kernel laid
//! out with that layout, written as an ELF core file the way QEMU writes
//! one (PT_LOAD by physical address), with its symbols as kallsyms text.

use std::process::Command;

use ktstr_tests::{Need, skip};
use ktstr_walker::kernel::btf::KernelBtf;
use ktstr_walker::testkit::{PerCpuStyle, SyntheticKernel};

/// A minimal ELF64 core: one PT_LOAD holding `mem` at physical address 0.
fn core_file(mem: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    f.extend_from_slice(&[0; 8]);
    let u16s =
        |f: &mut Vec<u8>, v: &[u16]| v.iter().for_each(|x| f.extend_from_slice(&x.to_le_bytes()));
    u16s(&mut f, &[4, 62]); // ET_CORE, EM_X86_64
    f.extend_from_slice(&1u32.to_le_bytes());
    for v in [0u64, 64, 0] {
        f.extend_from_slice(&v.to_le_bytes()); // entry, phoff, shoff
    }
    f.extend_from_slice(&0u32.to_le_bytes());
    u16s(&mut f, &[64, 56, 1, 64, 0, 0]);
    f.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    f.extend_from_slice(&6u32.to_le_bytes());
    for v in [4096u64, 0, 0, mem.len() as u64, mem.len() as u64, 4096] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.resize(4096, 0);
    f.extend_from_slice(mem);
    f
}

#[test]
fn dump_reads_a_core_with_the_kernels_btf_layout() {
    let dir = match ktstr_tests::cached_kernel_dir() {
        Ok(d) => d,
        Err(e) => return skip("dump_reads_a_core", Need::Kernel, &e),
    };
    let layout = KernelBtf::open(dir.join("vmlinux")).expect("BTF").layout();
    let mut k = SyntheticKernel::new(layout, 2, PerCpuStyle::Absolute).unwrap();
    let sched = k.attach_scheduler("bpfland_fixture", 8).unwrap();
    let a = k.add_task(4242, "spinner");
    k.make_runnable(a, 1, 999_000);
    let user = k.add_user_dsq(sched, 0x77);
    k.enqueue(user, a);
    let tmp = tempfile::tempdir().unwrap();
    let core = tmp.path().join("core");
    let syms = tmp.path().join("kallsyms");
    std::fs::write(&core, core_file(k.bytes())).unwrap();
    std::fs::write(&syms, k.kallsyms()).unwrap();

    let run = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ktstr"));
        c.args(["dump", "--core"])
            .arg(&core)
            .arg("--vmlinux")
            .arg(&dir)
            .args(extra);
        c.output().unwrap()
    };
    let out = run(&["--kallsyms", syms.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["scheduler"]["ops_name"], "bpfland_fixture");
    assert_eq!(v["cpus"].as_array().unwrap().len(), 2);
    let task = v["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["pid"] == 4242)
        .expect("task 4242");
    assert_eq!(task["comm"], "spinner");
    assert_eq!(task["placement"]["dsq"], "user 0x77");
    assert!(
        v["health"]["faults"].as_array().unwrap().is_empty(),
        "{}",
        v["health"]
    );

    let text = run(&["--kallsyms", syms.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with("scheduler: bpfland_fixture"), "{text}");

    // Without symbols for a stripped vmlinux: a clear error, exit 2.
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kallsyms"), "{err}");
}
