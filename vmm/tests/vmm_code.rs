//! The VMM with tiny hand-assembled guests (no kernel): vCPUs run, freeze
//! stops them all and thaw resumes them, a vCPU stuck in a device model
//! gives a degraded freeze, and every way out of the VM is reported.
//! Needs /dev/kvm (any KVM, PVM included).

use std::time::{Duration, Instant};

use ktstr_tests::{Need, skip};
use ktstr_vmm::walker::GuestMem;
use ktstr_vmm::{CODE_ADDR, COUNTER_ADDR};
use ktstr_vmm::{ExitReason, Topology, Vm, VmConfig};

/// `1: inc dword [ebx]; jmp 1b`
const COUNT_LOOP: &[u8] = &[0xff, 0x03, 0xeb, 0xfc];

/// vCPU 0 counts like [`COUNT_LOOP`]; the others write 'x' to COM1 and
/// count, forever:
/// ```text
///     test esi, esi ; jnz 2f
/// 1:  inc dword [ebx] ; jmp 1b
/// 2:  mov dx, 0x3f8 ; mov al, 'x'
/// 3:  out dx, al ; inc dword [ebx] ; jmp 3b
/// ```
const COUNT_AND_PRINT: &[u8] = &[
    0x85, 0xf6, 0x75, 0x04, 0xff, 0x03, 0xeb, 0xfc, 0x66, 0xba, 0xf8, 0x03, 0xb0, b'x', 0xee, 0xff,
    0x03, 0xeb, 0xfb,
];

fn have_kvm(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skip(test, Need::HwVirt, &format!("cannot open /dev/kvm: {e}"));
            false
        }
    }
}

fn counter<M: GuestMem>(mem: &M, cpu: u64) -> u32 {
    mem.read_pod::<u32>(COUNTER_ADDR + 64 * cpu).unwrap()
}

fn wait_all_counting(vm: &Vm, n: u64) {
    let t = Instant::now();
    while (0..n).any(|c| counter(vm.memory(), c) == 0) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "vCPUs never ran: {:?}",
            (0..n).map(|c| counter(vm.memory(), c)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn freeze_parks_every_vcpu_and_stops_the_guest_until_thaw() {
    if !have_kvm("freeze_parks_every_vcpu_and_stops_the_guest_until_thaw") {
        return;
    }
    let topo: Topology = "1n1l2c2t".parse().unwrap();
    let mut cfg = VmConfig::code(topo, COUNT_LOOP);
    // 4 busy vCPUs on a small, shared CI host: parking is about scheduling;
    // this test is about correctness, not latency.
    cfg.park_timeout = Duration::from_secs(10);
    let vm = Vm::boot(cfg).unwrap();
    wait_all_counting(&vm, 4);
    let mut pauses = Vec::new();
    for round in 0..100 {
        let (report, (before, after)) = vm
            .freeze(|f| {
                let before: Vec<u32> = (0..4).map(|c| counter(f.mem, c)).collect();
                std::thread::sleep(Duration::from_millis(1));
                let after: Vec<u32> = (0..4).map(|c| counter(f.mem, c)).collect();
                (before, after)
            })
            .unwrap();
        assert!(!report.degraded(), "round {round}: {report:?}");
        assert_eq!(report.vcpus.len(), 4);
        assert_eq!(before, after, "round {round}: a vCPU ran while frozen");
        for (i, v) in report.vcpus.iter().enumerate() {
            assert_eq!(v.index as usize, i);
            assert!(
                (CODE_ADDR..CODE_ADDR + COUNT_LOOP.len() as u64).contains(&v.rip),
                "round {round}: vCPU {i} parked at {:#x}",
                v.rip
            );
            assert_eq!(v.apic_id, i as u32, "1n1l2c2t APIC IDs are 0..4");
        }
        assert!(report.pause >= report.park + report.capture);
        pauses.push(report.pause);
        // Every vCPU runs again after the thaw.
        let t = Instant::now();
        while (0..4).any(|c| counter(vm.memory(), c) == after[c as usize]) {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "round {round}: not thawed"
            );
            std::thread::yield_now();
        }
    }
    pauses.sort();
    eprintln!(
        "pause window over 100 freezes of 4 vCPUs: min {:?} median {:?} max {:?}",
        pauses[0], pauses[50], pauses[99]
    );
    assert_eq!(vm.stop(), ExitReason::HostRequest);
}

#[test]
fn a_vcpu_stuck_in_a_device_is_named_and_the_vm_is_thawed() {
    if !have_kvm("a_vcpu_stuck_in_a_device_is_named_and_the_vm_is_thawed") {
        return;
    }
    let topo: Topology = "1n1l2c1t".parse().unwrap();
    let mut cfg = VmConfig::code(topo, COUNT_AND_PRINT);
    cfg.park_timeout = Duration::from_secs(2);
    cfg.output_limit = 4096;
    let vm = Vm::boot(cfg).unwrap();
    wait_all_counting(&vm, 2);
    // While the console buffer is held here, vCPU 1 blocks inside its
    // next serial write and cannot park; vCPU 0 can.
    let mut report = None;
    vm.console().wait_until(Duration::from_secs(5), |_| {
        std::thread::sleep(Duration::from_millis(50));
        let c1 = counter(vm.memory(), 1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            counter(vm.memory(), 1),
            c1,
            "vCPU 1 is blocked in its write"
        );
        report = Some(vm.freeze(|f| f.not_parked.to_vec()).unwrap());
        true
    });
    let (report, seen_by_capture) = report.unwrap();
    assert!(report.degraded());
    assert_eq!(report.not_parked, [1]);
    assert_eq!(seen_by_capture, [1]);
    assert_eq!(report.vcpus.len(), 1);
    assert_eq!(report.vcpus[0].index, 0);
    assert!(report.park >= Duration::from_secs(2));
    // Not left frozen: both vCPUs make progress again.
    let c0 = counter(vm.memory(), 0);
    let t = Instant::now();
    while counter(vm.memory(), 0) == c0 {
        assert!(t.elapsed() < Duration::from_secs(10), "vCPU 0 left frozen");
        std::thread::yield_now();
    }
    let (report, ()) = vm.freeze(|_| ()).unwrap();
    assert!(!report.degraded(), "{report:?}");
    // The console kept only the newest bytes.
    assert!(vm.console().total() > 0);
    assert!(vm.console().bytes().len() <= 4096);
    assert!(vm.console().bytes().iter().all(|b| *b == b'x'));
    assert_eq!(vm.stop(), ExitReason::HostRequest);
}

#[test]
fn guest_exits_are_reported() {
    if !have_kvm("guest_exits_are_reported") {
        return;
    }
    let one: Topology = "1n1l1c1t".parse().unwrap();
    // Keyboard-controller reset: mov al, 0xfe; out 0x64, al; spin.
    let vm = Vm::boot(VmConfig::code(one, &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe])).unwrap();
    assert_eq!(vm.wait(Duration::from_secs(20)), ExitReason::Reset);
    // ud2 with no IDT: #UD, #GP, double fault, triple fault.
    let vm = Vm::boot(VmConfig::code(one, &[0x0f, 0x0b])).unwrap();
    let r = vm.wait(Duration::from_secs(20));
    assert!(
        matches!(
            r,
            ExitReason::TripleFault { vcpu: 0 } | ExitReason::InternalError { vcpu: 0, .. }
        ),
        "{r}"
    );
    // A guest that never stops is stopped by the timeout.
    let vm = Vm::boot(VmConfig::code(one, COUNT_LOOP)).unwrap();
    assert_eq!(vm.wait(Duration::from_millis(300)), ExitReason::Timeout);
    assert!(matches!(
        vm.freeze(|_| ()),
        Err(ktstr_vmm::VmError::NotRunning(ExitReason::Timeout))
    ));
}

/// Echo COM2 input back to COM2, polling the line status register:
/// ```text
/// 1:  mov dx, 0x2fd ; in al, dx ; test al, 1 ; jz 1b
///     mov dx, 0x2f8 ; in al, dx ; out dx, al ; jmp 1b
/// ```
const COM2_ECHO: &[u8] = &[
    0x66, 0xba, 0xfd, 0x02, 0xec, 0xa8, 0x01, 0x74, 0xf7, 0x66, 0xba, 0xf8, 0x02, 0xec, 0xee, 0xeb,
    0xef,
];

#[test]
fn host_and_guest_talk_over_com2() {
    if !have_kvm("host_and_guest_talk_over_com2") {
        return;
    }
    let one: Topology = "1n1l1c1t".parse().unwrap();
    let vm = Vm::boot(VmConfig::code(one, COM2_ECHO)).unwrap();
    // More than the UART's 64-byte FIFO: the rest waits in the VMM's
    // bounded queue and follows as the guest reads.
    let msg: String = (0..50)
        .map(|i| format!("line {i:02} from the host\n"))
        .collect();
    assert_eq!(vm.send(msg.as_bytes()), msg.len());
    let echoed = vm
        .channel()
        .wait_until(Duration::from_secs(20), |t| t.len() >= msg.len());
    assert!(echoed, "echoed so far: {:?}", vm.channel().text());
    assert_eq!(vm.channel().text(), msg);
    assert_eq!(vm.console().total(), 0, "nothing on COM1");
    assert_eq!(vm.stop(), ExitReason::HostRequest);
}
