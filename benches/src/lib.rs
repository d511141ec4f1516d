//! What the benchmarks in `benches/` share: the synthetic guest they time.

use ktstr_walker::testkit::SyntheticKernel;

/// Attach a scheduler to `k` and add `tasks` tasks: every other one
/// runnable, queued round robin on a CPU's local DSQ or a user DSQ; the
/// rest sleeping.
pub fn populate(k: &mut SyntheticKernel, tasks: usize) {
    let cpus = k.nr_cpus();
    let sched = k.attach_scheduler("bench", 64).unwrap();
    let user = k.add_user_dsq(sched, 1);
    for i in 0..tasks {
        let t = k.add_task(i as i32 + 1, "worker");
        if i % 2 == 0 {
            let cpu = (i / 2) % cpus;
            k.make_runnable(t, cpu, 0);
            let dsq = if i % 4 == 0 { k.local_dsq(cpu) } else { user };
            k.enqueue(dsq, t);
        }
    }
}
