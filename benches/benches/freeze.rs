//! The freeze/thaw round trip of the KVM VMM: kick every vCPU out of
//! `KVM_RUN`, wait until all have parked with their registers, run an empty
//! capture, restore kvmclock, release them. Measured is the pause window
//! the VMM reports (first kick to release), with 1, 2 and 8 vCPUs running
//! a tight guest loop. Needs /dev/kvm; without it the bench says so and
//! measures nothing.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ktstr_vmm::{Topology, Vm, VmConfig};

/// `1: inc dword [ebx]; jmp 1b` on every vCPU.
const COUNT_LOOP: &[u8] = &[0xff, 0x03, 0xeb, 0xfc];

fn bench(c: &mut Criterion) {
    if let Err(e) = std::fs::File::open("/dev/kvm") {
        eprintln!("SKIPPED freeze bench: /dev/kvm: {e}");
        return;
    }
    let mut g = c.benchmark_group("freeze");
    g.measurement_time(Duration::from_secs(5));
    for (vcpus, topo) in [(1u32, "1n1l1c1t"), (2, "1n1l2c1t"), (8, "1n2l2c2t")] {
        let topo: Topology = topo.parse().unwrap();
        assert_eq!(topo.nr_cpus(), vcpus);
        let mut config = VmConfig::code(topo, COUNT_LOOP);
        // More vCPUs than host CPUs: give each time to be scheduled.
        config.park_timeout = Duration::from_secs(5);
        let vm = Vm::boot(config).unwrap();
        g.bench_with_input(BenchmarkId::new("pause_window", vcpus), &vm, |b, vm| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (report, ()) = vm.freeze(|_| ()).unwrap();
                    assert!(!report.degraded(), "{report:?}");
                    total += report.pause;
                }
                total
            })
        });
        vm.stop();
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
