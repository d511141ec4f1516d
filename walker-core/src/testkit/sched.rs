//! The scheduler side of the synthetic kernel: `scx_sched` behind
//! `scx_root`, its DSQ hash table, per-node global and per-CPU bypass DSQs,
//! and its exit info.

use super::{MissingGroup, SCX_DSQ_BYPASS, SCX_DSQ_GLOBAL, SyntheticKernel};
use crate::capture::kick::KickMask;

impl SyntheticKernel {
    /// Attach a scheduler named `name` (`scx_root` = the new `scx_sched`)
    /// whose user-DSQ hash table has `buckets` buckets (a power of two), one
    /// NUMA node, and a bypass DSQ per CPU.
    pub fn attach_scheduler(&mut self, name: &str, buckets: u32) -> Result<u64, MissingGroup> {
        let s = self.layout.sched.ok_or(MissingGroup("sched"))?;
        let ht = self.layout.rhashtable.ok_or(MissingGroup("rhashtable"))?;
        let bt = self
            .layout
            .bucket_table
            .ok_or(MissingGroup("bucket_table"))?;
        let sched = self.alloc(s.struct_size as u64);
        let mut n = [0u8; 128];
        for (d, c) in n.iter_mut().zip(name.bytes().take(127)) {
            *d = c;
        }
        self.write(sched + s.ops_name as u64, &n);
        if let Some(o) = s.dsq_hash {
            let tbl = self.alloc(bt.struct_size as u64 + 8 * buckets as u64);
            self.write_u32(tbl + bt.size as u64, buckets);
            self.write_u64(sched + o as u64 + ht.tbl as u64, tbl);
        }
        if let (Some(o), Some(pn)) = (s.pnode, self.layout.sched_pnode) {
            let array = self.alloc(8);
            let node = self.alloc(pn.struct_size as u64);
            self.dsq_init(node + pn.global_dsq as u64, SCX_DSQ_GLOBAL);
            self.write_u64(array, node);
            self.write_u64(sched + o as u64, array);
        }
        if let (Some(o), Some(pc)) = (s.pcpu, self.layout.sched_pcpu) {
            let pcpu = self.percpu_alloc(pc.struct_size as u64);
            self.write_u64(sched + o as u64, pcpu);
            for cpu in 0..self.nr_cpus() {
                let at = pcpu.wrapping_add(self.per_cpu_offset(cpu));
                self.dsq_init(at + pc.bypass_dsq as u64, SCX_DSQ_BYPASS);
            }
        }
        if let Some(ei) = self.layout.exit_info {
            let info = self.alloc(ei.struct_size as u64);
            self.write_u64(sched + s.exit_info as u64, info);
        }
        if let Some(o) = s.watchdog_timeout {
            self.write_u64(sched + o as u64, 30 * 250);
        }
        let root = self.sym("scx_root");
        self.write_u64(root, sched);
        Ok(sched)
    }

    /// A user DSQ with `id` in `sched`'s hash table, at the head of the
    /// chain of bucket `id % buckets` (as rhashtable inserts).
    pub fn add_user_dsq(&mut self, sched: u64, id: u64) -> u64 {
        let s = self.layout.sched.unwrap_or_default();
        self.hash_user_dsq(sched + s.dsq_hash.unwrap_or(0) as u64, id)
    }

    /// A user DSQ with `id` in the `struct rhashtable` at `table`.
    pub(super) fn hash_user_dsq(&mut self, table: u64, id: u64) -> u64 {
        let ht = self.layout.rhashtable.unwrap_or_default();
        let bt = self.layout.bucket_table.unwrap_or_default();
        let d = self.layout.dsq.unwrap_or_default();
        let dsq = self.new_dsq(id);
        let tbl = self.read_u64(table + ht.tbl as u64);
        let size = self.read_u32(tbl + bt.size as u64).max(1) as u64;
        let bucket = tbl + bt.buckets as u64 + 8 * (id % size);
        let head = self.read_u64(bucket);
        // An empty bucket is NULL; a chain ends in the bucket's nulls marker.
        let next = if head == 0 { bucket | 1 } else { head };
        let node = dsq + d.hash_node.unwrap_or(0) as u64;
        let rh = self.layout.rhash_head.unwrap_or_default();
        self.write_u64(node + rh.next as u64, next);
        self.write_u64(bucket, node);
        dsq
    }

    /// Node `node`'s global DSQ.
    pub fn global_dsq(&self, sched: u64, node: usize) -> u64 {
        let s = self.layout.sched.unwrap_or_default();
        let pn = self.layout.sched_pnode.unwrap_or_default();
        let array = self.read_u64(sched + s.pnode.unwrap_or(0) as u64);
        self.read_u64(array + 8 * node as u64) + pn.global_dsq as u64
    }

    /// `cpu`'s bypass DSQ.
    pub fn bypass_dsq(&self, sched: u64, cpu: usize) -> u64 {
        let s = self.layout.sched.unwrap_or_default();
        let pc = self.layout.sched_pcpu.unwrap_or_default();
        let pcpu = self.read_u64(sched + s.pcpu.unwrap_or(0) as u64);
        pcpu.wrapping_add(self.per_cpu_offset(cpu)) + pc.bypass_dsq as u64
    }

    /// Record an exit: `exit_kind` in the scheduler and its exit info, with
    /// `reason` and `msg` strings.
    pub fn set_exit(&mut self, sched: u64, kind: u32, reason: &str, msg: &str) {
        let s = self.layout.sched.unwrap_or_default();
        self.write_u32(sched + s.exit_kind as u64, kind);
        let info = self.read_u64(sched + s.exit_info as u64);
        self.fill_exit_info(info, kind, reason, msg);
    }

    /// Write `kind`, `reason` and `msg` into the exit info at `info` (0: none).
    pub(super) fn fill_exit_info(&mut self, info: u64, kind: u32, reason: &str, msg: &str) {
        let ei = self.layout.exit_info.unwrap_or_default();
        if info == 0 {
            return;
        }
        self.write_u32(info + ei.kind as u64, kind);
        for (off, text) in [(ei.reason, reason), (ei.msg, msg)] {
            let buf = self.alloc(text.len() as u64 + 1);
            self.write(buf, text.as_bytes());
            self.write_u64(info + off as u64, buf);
        }
    }

    /// Fill the exit info's backtrace, CPU and the kernel's dump text, as
    /// `scx_exit_info` holds them after an error exit (`bt` has room for
    /// `SCX_EXIT_BT_LEN` entries; the dump buffer is NUL-terminated).
    pub fn set_exit_detail(&mut self, sched: u64, cpu: i32, bt: &[u64], dump: &str) {
        let s = self.layout.sched.unwrap_or_default();
        let ei = self.layout.exit_info.unwrap_or_default();
        let info = self.read_u64(sched + s.exit_info as u64);
        if info == 0 {
            return;
        }
        if let Some(o) = ei.exit_cpu {
            self.write_u32(info + o as u64, cpu as u32);
        }
        if let (Some(b), Some(n)) = (ei.bt, ei.bt_len) {
            let buf = self.alloc(8 * 64);
            for (i, a) in bt.iter().enumerate() {
                self.write_u64(buf + 8 * i as u64, *a);
            }
            self.write_u64(info + b as u64, buf);
            self.write_u32(info + n as u64, bt.len() as u32);
        }
        if let Some(d) = ei.dump {
            let buf = self.alloc(dump.len() as u64 + 1);
            self.write(buf, dump.as_bytes());
            self.write_u64(info + d as u64, buf);
        }
    }

    /// Set `cpu`'s event counter at byte `offset` of its `scx_event_stats`
    /// (in the scheduler's per-CPU part, as 7.x keeps them).
    pub fn set_event(&mut self, sched: u64, cpu: usize, offset: u32, value: i64) {
        let s = self.layout.sched.unwrap_or_default();
        let pc = self.layout.sched_pcpu.unwrap_or_default();
        let pcpu = self.read_u64(sched + s.pcpu.unwrap_or(0) as u64);
        let at = pcpu.wrapping_add(self.per_cpu_offset(cpu)) + pc.event_stats.unwrap_or(0) as u64;
        self.write_u64(at + offset as u64, value as u64);
    }

    /// Set `cpu`'s kick mask `mask` to `cpus` where the kernel keeps it:
    /// the scheduler's per-CPU part (7.x) or `rq->scx`, as an off-stack
    /// cpumask (a pointer to a bitmap, as Debian's kernels have it).
    pub fn set_kick(&mut self, sched: u64, cpu: usize, mask: KickMask, cpus: &[u32]) {
        let s = self.layout.sched.unwrap_or_default();
        let pc = self.layout.sched_pcpu.unwrap_or_default();
        let rq = self.layout.scx_rq.unwrap_or_default();
        let in_pcpu = match mask {
            KickMask::Kick => pc.cpus_to_kick,
            KickMask::KickIfIdle => pc.cpus_to_kick_if_idle,
            KickMask::Preempt => pc.cpus_to_preempt,
            KickMask::Wait => pc.cpus_to_wait,
            KickMask::Sync => None,
        };
        let in_rq = match mask {
            KickMask::Kick => rq.cpus_to_kick,
            KickMask::KickIfIdle => rq.cpus_to_kick_if_idle,
            KickMask::Preempt => rq.cpus_to_preempt,
            KickMask::Wait => rq.cpus_to_wait,
            KickMask::Sync => rq.cpus_to_sync,
        };
        let pcpu = self.read_u64(sched + s.pcpu.unwrap_or(0) as u64);
        let at = match (in_pcpu, s.pcpu) {
            (Some(o), Some(_)) if pcpu != 0 => {
                pcpu.wrapping_add(self.per_cpu_offset(cpu)) + u64::from(o)
            }
            _ => {
                let scx = self.layout.rq.unwrap_or_default().scx;
                self.rq(cpu) + u64::from(scx) + u64::from(in_rq.expect("a kick mask"))
            }
        };
        let mut words = [0u64; 4];
        for &c in cpus {
            words[c as usize / 64] |= 1 << (c % 64);
        }
        let bitmap = self.alloc(32);
        for (i, w) in words.iter().enumerate() {
            self.write_u64(bitmap + 8 * i as u64, *w);
        }
        self.write_u64(at, bitmap);
    }
}
