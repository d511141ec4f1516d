/* SPDX-License-Identifier: GPL-2.0 */
/*
 * scx_fixture: a small sched_ext scheduler whose queueing is chosen by a
 * flag and which fails on command, so ktstr's failure dumps can be tested
 * against a scheduler that is known to be wrong in a known way.
 *
 * Modes (rodata `mode`):
 *   global: every task on SCX_DSQ_GLOBAL, FIFO.
 *   local:  every task on its CPU's local DSQ.
 *   user:   nr_user_dsqs FIFO DSQs (ids FIXTURE_USER_DSQ_BASE + i), tasks
 *           spread by pid; ops.dispatch() drains them round robin.
 *   vtime:  one vtime-ordered DSQ (FIXTURE_VTIME_DSQ), charged by used
 *           slice over weight.
 *
 * Failures:
 *   stall_comm:  tasks whose comm starts with it go to FIXTURE_STALL_DSQ,
 *                which nothing consumes: they stay runnable until the
 *                kernel's watchdog ejects the scheduler.
 *   stall_cpu:   from stall_cpu_after_ns on, ops.dispatch() gives that CPU
 *                nothing (user and vtime modes).
 *   error_after_ns: scx_bpf_error() from the first callback after it,
 *                counted from attaching or, with error_clock_comm, from
 *                the first enqueue of a task whose comm starts with it.
 *   exit_hold_ns: ops.exit() waits this long before returning; the kernel
 *                clears scx_root only after ops.exit(), so the host can
 *                see the exiting scheduler in guest memory.
 */
#include <scx/common.bpf.h>
#include "intf.h"

char _license[] SEC("license") = "GPL";

#define COMM_LEN	16

/*
 * The running kernel's values through CO-RE enum relocations, rather than
 * the scx headers' rodata copies that userspace would have to fill in.
 */
#undef SCX_DSQ_GLOBAL
#undef SCX_DSQ_LOCAL
#undef SCX_SLICE_DFL
#define DSQ_GLOBAL	bpf_core_enum_value(enum scx_dsq_id_flags, SCX_DSQ_GLOBAL)
#define DSQ_LOCAL	bpf_core_enum_value(enum scx_dsq_id_flags, SCX_DSQ_LOCAL)
#define SLICE_DFL	bpf_core_enum_value(enum scx_public_consts, SCX_SLICE_DFL)

const volatile u32 mode;
const volatile u32 nr_user_dsqs = 4;
const volatile char stall_comm[COMM_LEN];
const volatile s32 stall_cpu = -1;
const volatile u64 stall_cpu_after_ns;
const volatile u64 error_after_ns;
const volatile char error_clock_comm[COMM_LEN];
const volatile u64 exit_hold_ns;

u64 start_ns;
/* When the error clock started (0: not yet). */
u64 error_clock_ns;
u64 vtime_now;
/* Where the next ops.dispatch() starts its round over the user DSQs. */
u32 dispatch_rr;
/* Counters userspace prints at exit. */
u64 nr_enqueued, nr_stalled, nr_dispatch_skipped;

UEI_DEFINE(uei);

static u64 elapsed_ns(void)
{
	return bpf_ktime_get_ns() - start_ns;
}

static __always_inline bool comm_starts_with(const struct task_struct *p,
					     const volatile char *prefix)
{
	u32 i;

	if (!prefix[0])
		return false;
	for (i = 0; i < COMM_LEN; i++) {
		if (!prefix[i])
			return true;
		if (p->comm[i] != prefix[i])
			return false;
	}
	return true;
}

static void maybe_error(void)
{
	u64 since = error_clock_comm[0] ? error_clock_ns : start_ns;

	if (error_after_ns && since && bpf_ktime_get_ns() - since >= error_after_ns)
		scx_bpf_error("fixture: injected error after %llu ms",
			      error_after_ns / 1000000);
}

static bool is_stall_target(const struct task_struct *p)
{
	return comm_starts_with(p, stall_comm);
}

static bool cpu_withheld(s32 cpu)
{
	return stall_cpu >= 0 && cpu == stall_cpu &&
	       elapsed_ns() >= stall_cpu_after_ns;
}

s32 BPF_STRUCT_OPS(fixture_select_cpu, struct task_struct *p, s32 prev_cpu,
		   u64 wake_flags)
{
	bool is_idle = false;
	s32 cpu;

	if (is_stall_target(p))
		return prev_cpu;
	cpu = scx_bpf_select_cpu_dfl(p, prev_cpu, wake_flags, &is_idle);
	if (mode == FIXTURE_MODE_LOCAL && is_idle)
		scx_bpf_dsq_insert(p, DSQ_LOCAL, SLICE_DFL, 0);
	return cpu;
}

void BPF_STRUCT_OPS(fixture_enqueue, struct task_struct *p, u64 enq_flags)
{
	u64 vtime;

	if (!error_clock_ns && comm_starts_with(p, error_clock_comm))
		error_clock_ns = bpf_ktime_get_ns();
	maybe_error();
	__sync_fetch_and_add(&nr_enqueued, 1);
	if (is_stall_target(p)) {
		__sync_fetch_and_add(&nr_stalled, 1);
		scx_bpf_dsq_insert(p, FIXTURE_STALL_DSQ, SLICE_DFL, enq_flags);
		return;
	}
	switch (mode) {
	case FIXTURE_MODE_LOCAL:
		scx_bpf_dsq_insert(p, DSQ_LOCAL, SLICE_DFL, enq_flags);
		break;
	case FIXTURE_MODE_USER:
		scx_bpf_dsq_insert(p, FIXTURE_USER_DSQ_BASE + (u32)p->pid % nr_user_dsqs,
				   SLICE_DFL, enq_flags);
		break;
	case FIXTURE_MODE_VTIME:
		/* A sleeper gets at most one slice of credit. */
		vtime = p->scx.dsq_vtime;
		if ((s64)(vtime - (vtime_now - SLICE_DFL)) < 0)
			vtime = vtime_now - SLICE_DFL;
		scx_bpf_dsq_insert_vtime(p, FIXTURE_VTIME_DSQ, SLICE_DFL, vtime, enq_flags);
		break;
	default:
		scx_bpf_dsq_insert(p, DSQ_GLOBAL, SLICE_DFL, enq_flags);
	}
}

void BPF_STRUCT_OPS(fixture_dispatch, s32 cpu, struct task_struct *prev)
{
	u32 i, first;

	maybe_error();
	if (cpu_withheld(cpu)) {
		__sync_fetch_and_add(&nr_dispatch_skipped, 1);
		return;
	}
	if (mode == FIXTURE_MODE_VTIME) {
		scx_bpf_dsq_move_to_local(FIXTURE_VTIME_DSQ, 0);
		return;
	}
	if (mode != FIXTURE_MODE_USER)
		return;
	/*
	 * A rotating start, so that a task only some CPUs may run is not left
	 * behind DSQs those CPUs always find work in.
	 */
	first = __sync_fetch_and_add(&dispatch_rr, 1);
	for (i = 0; i < FIXTURE_MAX_USER_DSQS && i < nr_user_dsqs; i++) {
		if (scx_bpf_dsq_move_to_local(FIXTURE_USER_DSQ_BASE + (first + i) % nr_user_dsqs, 0))
			return;
	}
}

void BPF_STRUCT_OPS(fixture_tick, struct task_struct *p)
{
	maybe_error();
}

void BPF_STRUCT_OPS(fixture_running, struct task_struct *p)
{
	if ((s64)(p->scx.dsq_vtime - vtime_now) > 0)
		vtime_now = p->scx.dsq_vtime;
}

void BPF_STRUCT_OPS(fixture_stopping, struct task_struct *p, bool runnable)
{
	u64 used = SLICE_DFL - p->scx.slice;

	if (used > SLICE_DFL)
		used = SLICE_DFL;
	scx_bpf_task_set_dsq_vtime(p, p->scx.dsq_vtime + used * 100 / p->scx.weight);
}

void BPF_STRUCT_OPS(fixture_enable, struct task_struct *p)
{
	scx_bpf_task_set_dsq_vtime(p, vtime_now);
}

s32 BPF_STRUCT_OPS_SLEEPABLE(fixture_init)
{
	s32 err;
	u32 i;

	start_ns = bpf_ktime_get_ns();
	if (stall_comm[0]) {
		err = scx_bpf_create_dsq(FIXTURE_STALL_DSQ, -1);
		if (err)
			return err;
	}
	if (mode == FIXTURE_MODE_VTIME)
		return scx_bpf_create_dsq(FIXTURE_VTIME_DSQ, -1);
	if (mode != FIXTURE_MODE_USER)
		return 0;
	bpf_for(i, 0, FIXTURE_MAX_USER_DSQS) {
		if (i >= nr_user_dsqs)
			break;
		err = scx_bpf_create_dsq(FIXTURE_USER_DSQ_BASE + i, -1);
		if (err)
			return err;
	}
	return 0;
}

void BPF_STRUCT_OPS(fixture_exit, struct scx_exit_info *ei)
{
	u64 until = bpf_ktime_get_ns() + exit_hold_ns;
	u32 i, j;

	UEI_RECORD(uei, ei);
	if (!exit_hold_ns)
		return;
	/* Busy-wait (no sleeping here); bounded by the iterators either way. */
	bpf_for(i, 0, 1 << 16) {
		bpf_for(j, 0, 1 << 12) {
			if (bpf_ktime_get_ns() >= until)
				break;
		}
		if (bpf_ktime_get_ns() >= until)
			break;
	}
}

SCX_OPS_DEFINE(fixture_ops,
	       .select_cpu	= (void *)fixture_select_cpu,
	       .enqueue		= (void *)fixture_enqueue,
	       .dispatch	= (void *)fixture_dispatch,
	       .tick		= (void *)fixture_tick,
	       .running		= (void *)fixture_running,
	       .stopping	= (void *)fixture_stopping,
	       .enable		= (void *)fixture_enable,
	       .init		= (void *)fixture_init,
	       .exit		= (void *)fixture_exit,
	       .name		= "fixture");
