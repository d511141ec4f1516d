//! A synthetic kernel: sched_ext structures laid out in a byte buffer
//! according to any [`Layout`] (the synthetic [`compact_layout`] or one
//! resolved from a real kernel's BTF), so walkers see what a kernel would
//! have. Feature `testkit`; for tests, benches and fuzzing only.
//!
//! Memory model: guest-physical bytes from 0; kernel-image globals (the
//! symbols) at `KERNEL_MAP + pa` with `phys_base` 0, everything else in the
//! direct map at `DIRECT_MAP + pa`. Per-CPU data follows the >= 6.15 style
//! (absolute per-CPU symbols) or, with [`PerCpuStyle::ZeroBased`], the
//! <= 6.14 one.

mod bpf;
mod cgroups;
mod layout;
mod pre_root;
mod sched;

pub use bpf::{MAP_HASH, MAP_RINGBUF, MapSpec};
pub use layout::compact_layout;
pub use pre_root::{SCX_OPS_DISABLED, SCX_OPS_ENABLED};

use std::format;
use std::vec::Vec;

use crate::layout::Layout;
use crate::mem::SliceMem;
use crate::symbols::Symbols;

/// Start of the direct map (x86-64, 4-level paging, no KASLR).
pub const DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
/// `__START_KERNEL_map`.
pub const KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// `SCX_DSQ_GLOBAL`.
pub const SCX_DSQ_GLOBAL: u64 = (1 << 63) | 1;
/// `SCX_DSQ_LOCAL`.
pub const SCX_DSQ_LOCAL: u64 = (1 << 63) | 2;
/// `SCX_DSQ_BYPASS`.
pub const SCX_DSQ_BYPASS: u64 = (1 << 63) | 3;
/// `SCX_DSQ_LNODE_ITER_CURSOR`: a DSQ list node that is an iterator cursor.
pub const SCX_DSQ_LNODE_ITER_CURSOR: u32 = 1;

const IMAGE_PA: u64 = 0x10_0000;
const IMAGE_END: u64 = 0x20_0000;
const PERCPU_AREA: u64 = 0x1_0000;

/// How per-CPU symbols are addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PerCpuStyle {
    /// >= 6.15: a per-CPU symbol is an absolute kernel-image address.
    Absolute,
    /// <= 6.14: a per-CPU symbol is an offset from `__per_cpu_start` = 0.
    ZeroBased,
}

/// A group the synthetic kernel needs is absent from the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the layout lacks group {0}, which the synthetic kernel needs")]
pub struct MissingGroup(pub &'static str);

/// `enum scx_ent_flags`: the task is on its rq (enqueue_task_scx).
const SCX_TASK_QUEUED: u32 = 1;

/// A synthetic kernel in memory. Writers take kernel virtual addresses.
#[derive(Debug, Clone)]
pub struct SyntheticKernel {
    /// The layout every structure is written with.
    pub layout: Layout,
    /// Addresses of the globals, as a walker would get them.
    pub symbols: Symbols,
    mem: Vec<u8>,
    image_next: u64,
    percpu_start: u64,
    percpu_next: u64,
    nr_cpus: usize,
    idle: Vec<u64>,
}

macro_rules! group {
    ($k:expr, $g:ident) => {
        $k.layout.$g.ok_or(MissingGroup(stringify!($g)))?
    };
}

impl SyntheticKernel {
    /// A kernel with `nr_cpus` CPUs, each with an rq whose current task is
    /// that CPU's idle task, an empty local DSQ and runnable list; an empty
    /// `scx_tasks`; no scheduler attached (`scx_root` NULL).
    pub fn new(layout: Layout, nr_cpus: usize, style: PerCpuStyle) -> Result<Self, MissingGroup> {
        let mut k = Self {
            layout,
            symbols: Symbols::default(),
            mem: Vec::new(),
            image_next: IMAGE_PA,
            percpu_start: match style {
                PerCpuStyle::Absolute => KERNEL_MAP + IMAGE_END,
                PerCpuStyle::ZeroBased => 0,
            },
            percpu_next: 0,
            nr_cpus,
            idle: Vec::new(),
        };
        let rq = group!(k, rq);
        let scx_rq = group!(k, scx_rq);
        group!(k, task);
        group!(k, entity);
        group!(k, dsq);
        group!(k, list_head);

        let per_cpu_offset = k.global("__per_cpu_offset", 8 * nr_cpus.max(1) as u64);
        for cpu in 0..nr_cpus {
            let area = k.alloc(PERCPU_AREA * 4);
            let off = area.wrapping_sub(k.percpu_start);
            k.write_u64(per_cpu_offset + 8 * cpu as u64, off);
        }
        let runqueues = k.percpu_alloc(rq.struct_size as u64);
        k.symbols.runqueues = Some(runqueues);
        k.symbols.per_cpu_start = Some(k.percpu_start);
        for (name, size) in [
            ("scx_root", 8),
            ("jiffies_64", 8),
            ("nr_cpu_ids", 8),
            ("page_offset_base", 8),
            ("phys_base", 8),
            ("ext_sched_class", 64),
            ("fair_sched_class", 64),
            ("idle_sched_class", 64),
            ("rt_sched_class", 64),
            ("dl_sched_class", 64),
            ("stop_sched_class", 64),
            ("scx_enable_state_var", 8),
            ("scx_enable_seq", 8),
            ("scx_nr_rejected", 8),
            ("scx_switching_all", 8),
            ("__scx_switched_all", 16),
        ] {
            k.global(name, size);
        }
        let scx_tasks = k.global("scx_tasks", 16);
        k.list_init(scx_tasks);
        k.write_u64(k.sym("page_offset_base"), DIRECT_MAP);
        k.write_u32(k.sym("nr_cpu_ids"), nr_cpus as u32);
        k.write_u64(k.sym("jiffies_64"), 1_000_000);

        for cpu in 0..nr_cpus {
            let rq_va = k.rq(cpu);
            let scx = rq_va + rq.scx as u64;
            k.dsq_init(scx + scx_rq.local_dsq as u64, SCX_DSQ_LOCAL);
            k.list_init(scx + scx_rq.runnable_list as u64);
            if let Some(b) = scx_rq.bypass_dsq {
                k.dsq_init(scx + b as u64, SCX_DSQ_BYPASS);
            }
            if let Some(o) = rq.cpu {
                k.write_u32(rq_va + o as u64, cpu as u32);
            }
            k.write_u64(rq_va + rq.clock as u64, 5_000_000_000 + cpu as u64);
            let idle = k.new_task(0, &format!("swapper/{cpu}"), "idle_sched_class");
            k.set_cpu(idle, cpu);
            k.write_u64(rq_va + rq.curr as u64, idle);
            if let Some(o) = rq.idle {
                k.write_u64(rq_va + o as u64, idle);
            }
            k.idle.push(idle);
        }
        Ok(k)
    }

    /// Guest memory holding the kernel.
    pub fn mem(&self) -> SliceMem<'_> {
        SliceMem::new(0, &self.mem)
    }

    /// What a capture of this kernel reads with (one NUMA node).
    pub fn target(&self) -> crate::capture::Target<'_> {
        crate::capture::Target {
            layout: &self.layout,
            symbols: &self.symbols,
            nr_cpus: self.nr_cpus as u32,
            nr_nodes: 1,
            consts: crate::capture::Consts::default(),
        }
    }

    /// The guest-physical bytes, from address 0.
    pub fn bytes(&self) -> &[u8] {
        &self.mem
    }

    /// The symbols as `/proc/kallsyms` text.
    pub fn kallsyms(&self) -> std::string::String {
        Symbols::NAMES
            .iter()
            .filter_map(|n| self.symbols.get(n).map(|a| format!("{a:016x} D {n}\n")))
            .collect()
    }

    /// Number of CPUs.
    pub fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }

    /// Address of symbol `name` (panics if the kit did not create it: a
    /// test bug, not guest data).
    pub fn sym(&self, name: &str) -> u64 {
        self.symbols
            .get(name)
            .unwrap_or_else(|| panic!("testkit has no symbol {name}"))
    }

    /// Guest-physical address of kernel virtual `va` in this kit's mapping.
    pub fn pa(va: u64) -> u64 {
        if va >= KERNEL_MAP {
            va - KERNEL_MAP
        } else {
            va.wrapping_sub(DIRECT_MAP)
        }
    }

    /// `__per_cpu_offset[cpu]`.
    pub fn per_cpu_offset(&self, cpu: usize) -> u64 {
        self.read_u64(self.sym("__per_cpu_offset") + 8 * cpu as u64)
    }

    /// This CPU's `struct rq`.
    pub fn rq(&self, cpu: usize) -> u64 {
        self.sym("runqueues").wrapping_add(self.per_cpu_offset(cpu))
    }

    /// This CPU's local DSQ.
    pub fn local_dsq(&self, cpu: usize) -> u64 {
        let (rq, scx_rq) = (
            self.layout.rq.unwrap_or_default(),
            self.layout.scx_rq.unwrap_or_default(),
        );
        self.rq(cpu) + rq.scx as u64 + scx_rq.local_dsq as u64
    }

    /// This CPU's idle task.
    pub fn idle_task(&self, cpu: usize) -> u64 {
        self.idle.get(cpu).copied().unwrap_or(0)
    }

    fn grow(&mut self, end: u64) {
        if self.mem.len() < end as usize {
            self.mem.resize(end as usize, 0);
        }
    }

    /// Allocate zeroed direct-map memory; returns its virtual address.
    pub fn alloc(&mut self, size: u64) -> u64 {
        let pa = (self.mem.len() as u64).max(IMAGE_END).next_multiple_of(64);
        self.grow(pa + size.max(1));
        DIRECT_MAP + pa
    }

    /// Allocate a kernel-image global and record it as symbol `name`.
    pub fn global(&mut self, name: &str, size: u64) -> u64 {
        let pa = self.image_next;
        self.image_next = (pa + size).next_multiple_of(64);
        assert!(self.image_next <= IMAGE_END, "testkit image area full");
        self.grow(self.image_next);
        let va = KERNEL_MAP + pa;
        self.symbols.set(name, va);
        va
    }

    /// Give the kernel what [`crate::discover`] looks for: 4-level page
    /// tables (`init_top_pgt`, mapping the image's first 8 MiB with 2 MiB
    /// pages; the direct map is not in them), `linux_banner`, `phys_base`,
    /// `page_offset_base`, `nr_node_ids` and `max_pfn`. Returns the
    /// registers of a vCPU running on those tables and the banner (the
    /// vmlinux's bytes, without the NUL).
    pub fn discoverable(&mut self) -> (crate::discover::VcpuRegs, Vec<u8>) {
        let banner = b"Linux version 0.0.0-testkit (ktstr@testkit) #1 SMP".to_vec();
        let at = self.global("linux_banner", banner.len() as u64 + 1);
        self.write(at, &banner);
        let nodes = self.global("nr_node_ids", 8);
        self.write_u32(nodes, 1);
        let max_pfn = self.global("max_pfn", 8);
        // 4 GiB: any later allocation stays inside the direct map.
        self.write_u64(max_pfn, 1 << 20);
        // Three 4 KiB tables in the image area, page-aligned.
        let raw = self.global("init_top_pgt", 4 * 4096);
        let pgd = raw.next_multiple_of(4096);
        self.symbols.init_top_pgt = Some(pgd);
        let (pud, pmd) = (pgd + 4096, pgd + 2 * 4096);
        let entry = |va: u64| Self::pa(va) | 0x3; // present, writable
        self.write_u64(pgd + 8 * ((KERNEL_MAP >> 39) & 0x1ff), entry(pud));
        self.write_u64(pud + 8 * ((KERNEL_MAP >> 30) & 0x1ff), entry(pmd));
        for i in 0..4u64 {
            // 2 MiB leaves: present, writable, PS.
            self.write_u64(pmd + 8 * i, (i << 21) | 0x83);
        }
        let regs = crate::discover::VcpuRegs {
            cr3: Self::pa(pgd),
            cr4: 0,
        };
        (regs, banner)
    }

    /// Allocate per-CPU memory (`alloc_percpu`): returns the per-CPU pointer
    /// to which `__per_cpu_offset[cpu]` is added.
    pub fn percpu_alloc(&mut self, size: u64) -> u64 {
        let off = self.percpu_next;
        self.percpu_next = (off + size).next_multiple_of(64);
        assert!(
            self.percpu_next <= PERCPU_AREA * 4,
            "testkit per-CPU area full"
        );
        self.percpu_start.wrapping_add(off)
    }

    /// Write bytes at kernel virtual `va`.
    pub fn write(&mut self, va: u64, bytes: &[u8]) {
        let pa = Self::pa(va);
        self.grow(pa + bytes.len() as u64);
        self.mem[pa as usize..pa as usize + bytes.len()].copy_from_slice(bytes);
    }
    /// Write a u64.
    pub fn write_u64(&mut self, va: u64, v: u64) {
        self.write(va, &v.to_le_bytes());
    }
    /// Write a u32.
    pub fn write_u32(&mut self, va: u64, v: u32) {
        self.write(va, &v.to_le_bytes());
    }
    /// Write a u8.
    pub fn write_u8(&mut self, va: u64, v: u8) {
        self.write(va, &[v]);
    }
    /// Read a u64.
    pub fn read_u64(&self, va: u64) -> u64 {
        let pa = Self::pa(va) as usize;
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.mem[pa..pa + 8]);
        u64::from_le_bytes(b)
    }
    /// Read a u32.
    pub fn read_u32(&self, va: u64) -> u32 {
        let pa = Self::pa(va) as usize;
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.mem[pa..pa + 4]);
        u32::from_le_bytes(b)
    }

    /// Make `head` an empty list.
    pub fn list_init(&mut self, head: u64) {
        let lh = self.layout.list_head.unwrap_or_default();
        self.write_u64(head + lh.next as u64, head);
        self.write_u64(head + lh.prev as u64, head);
    }

    /// `list_add_tail(node, head)`.
    pub fn list_add_tail(&mut self, head: u64, node: u64) {
        let lh = self.layout.list_head.unwrap_or_default();
        let prev = self.read_u64(head + lh.prev as u64);
        self.write_u64(node + lh.next as u64, head);
        self.write_u64(node + lh.prev as u64, prev);
        self.write_u64(prev + lh.next as u64, node);
        self.write_u64(head + lh.prev as u64, node);
    }

    fn dsq_init(&mut self, dsq: u64, id: u64) {
        let d = self.layout.dsq.unwrap_or_default();
        self.list_init(dsq + d.list as u64);
        self.write_u64(dsq + d.id as u64, id);
    }

    /// A new DSQ with `id`, on no hash table.
    pub fn new_dsq(&mut self, id: u64) -> u64 {
        let size = self.layout.dsq.unwrap_or_default().struct_size as u64;
        let dsq = self.alloc(size);
        self.dsq_init(dsq, id);
        dsq
    }

    fn new_task(&mut self, pid: i32, comm: &str, class: &str) -> u64 {
        let t = self.layout.task.unwrap_or_default();
        let e = self.layout.entity.unwrap_or_default();
        let task = self.alloc(t.struct_size as u64);
        self.write_u32(task + t.pid as u64, pid as u32);
        self.write_u32(task + t.tgid as u64, pid as u32);
        let mut name = [0u8; 16];
        for (d, s) in name.iter_mut().zip(comm.bytes().take(15)) {
            *d = s;
        }
        self.write(task + t.comm as u64, &name);
        let class = self.sym(class);
        self.write_u64(task + t.sched_class as u64, class);
        let scx = task + t.scx as u64;
        self.write_u32(scx + e.weight as u64, 100);
        self.write_u64(scx + e.slice as u64, 20_000_000);
        self.list_init(scx + e.runnable_node as u64);
        self.list_init(scx + e.dsq_list as u64 + self.dsq_node_offset());
        // Nice 0, allowed on every CPU, through its own mask.
        for o in [t.prio, t.static_prio, t.normal_prio].into_iter().flatten() {
            self.write_u32(task + o as u64, 120);
        }
        if let (Some(ptr), Some(mask)) = (t.cpus_ptr, t.cpus_mask) {
            self.write_u64(task + ptr as u64, task + mask as u64);
            let all = u64::MAX >> (64 - self.nr_cpus.clamp(1, 64));
            self.write_u64(task + mask as u64, all);
        }
        if let Some(o) = t.nr_cpus_allowed {
            self.write_u32(task + o as u64, self.nr_cpus as u32);
        }
        task
    }

    fn dsq_node_offset(&self) -> u64 {
        self.layout.dsq_list_node.map_or(0, |n| n.node as u64)
    }

    /// A sched_ext task with `pid` and `comm`, sleeping, on `scx_tasks`.
    pub fn add_task(&mut self, pid: i32, comm: &str) -> u64 {
        let task = self.new_task(pid, comm, "ext_sched_class");
        let t = self.layout.task.unwrap_or_default();
        let e = self.layout.entity.unwrap_or_default();
        self.write_u32(task + t.state as u64, 1); // TASK_INTERRUPTIBLE
        let head = self.sym("scx_tasks");
        self.list_add_tail(head, task + t.scx as u64 + e.tasks_node as u64);
        task
    }

    /// Address of `task->scx`.
    pub fn entity(&self, task: u64) -> u64 {
        task + self.layout.task.unwrap_or_default().scx as u64
    }

    /// Set the task's CPU (`task_cpu()`).
    pub fn set_cpu(&mut self, task: u64, cpu: usize) {
        if let Some(o) = self.layout.task.unwrap_or_default().cpu {
            self.write_u32(task + o as u64, cpu as u32);
        }
    }

    /// `list_del_init(node)`.
    pub fn list_del_init(&mut self, node: u64) {
        let lh = self.layout.list_head.unwrap_or_default();
        let (next, prev) = (
            self.read_u64(node + lh.next as u64),
            self.read_u64(node + lh.prev as u64),
        );
        self.write_u64(prev + lh.next as u64, next);
        self.write_u64(next + lh.prev as u64, prev);
        self.list_init(node);
    }

    /// Mark the task runnable (`on_rq` = 1, state TASK_RUNNING, scx flag
    /// `SCX_TASK_QUEUED`) on `cpu`'s runnable list, as `enqueue_task_scx`
    /// does.
    pub fn make_runnable(&mut self, task: u64, cpu: usize, runnable_at: u64) {
        let t = self.layout.task.unwrap_or_default();
        let (rq, scx_rq) = (
            self.layout.rq.unwrap_or_default(),
            self.layout.scx_rq.unwrap_or_default(),
        );
        let e = self.layout.entity.unwrap_or_default();
        self.write_u32(task + t.state as u64, 0);
        self.write_u8(task + t.on_rq as u64, 1);
        self.set_cpu(task, cpu);
        let scx = self.entity(task);
        self.write_u64(scx + e.runnable_at as u64, runnable_at);
        self.set_queued(task);
        let scx_rq_va = self.rq(cpu) + rq.scx as u64;
        self.list_add_tail(
            scx_rq_va + scx_rq.runnable_list as u64,
            scx + e.runnable_node as u64,
        );
        let nr = scx_rq_va + scx_rq.nr_running as u64;
        self.write_u32(nr, self.read_u32(nr) + 1);
        let nr = self.rq(cpu) + rq.nr_running as u64;
        self.write_u32(nr, self.read_u32(nr) + 1);
    }

    /// Make a runnable task `cpu`'s current task; as `set_next_task_scx`
    /// does, it leaves the runnable list (rq->scx.nr_running still counts
    /// it).
    pub fn run_on(&mut self, task: u64, cpu: usize) {
        let t = self.layout.task.unwrap_or_default();
        let rq = self.layout.rq.unwrap_or_default();
        let e = self.layout.entity.unwrap_or_default();
        self.list_del_init(self.entity(task) + e.runnable_node as u64);
        if let Some(o) = t.on_cpu {
            self.write_u8(task + o as u64, 1);
        }
        let curr = self.rq(cpu) + rq.curr as u64;
        self.write_u64(curr, task);
    }

    /// Mark the task `SCX_TASK_QUEUED`: `enqueue_task_scx` does before any
    /// dispatch puts it on a DSQ.
    fn set_queued(&mut self, task: u64) {
        let e = self.layout.entity.unwrap_or_default();
        let flags = self.entity(task) + e.flags as u64;
        self.write_u32(flags, self.read_u32(flags) | SCX_TASK_QUEUED);
    }

    /// Queue the task at the tail of `dsq` (FIFO), as `dispatch_enqueue` does
    /// (with the `SCX_TASK_QUEUED` that `enqueue_task_scx` set before).
    pub fn enqueue(&mut self, dsq: u64, task: u64) {
        self.set_queued(task);
        let d = self.layout.dsq.unwrap_or_default();
        let e = self.layout.entity.unwrap_or_default();
        let scx = self.entity(task);
        let node = scx + e.dsq_list as u64 + self.dsq_node_offset();
        self.list_add_tail(dsq + d.list as u64, node);
        self.write_u64(scx + e.dsq as u64, dsq);
        let nr = dsq + d.nr as u64;
        self.write_u32(nr, self.read_u32(nr) + 1);
    }

    /// Queue the task on a vtime-ordered DSQ: the kernel keeps such a DSQ's
    /// list in `dsq_vtime` order (next to its rb-tree), so insert before the
    /// first task with a larger vtime.
    pub fn enqueue_vtime(&mut self, dsq: u64, task: u64, vtime: u64) {
        self.set_queued(task);
        let d = self.layout.dsq.unwrap_or_default();
        let e = self.layout.entity.unwrap_or_default();
        let lh = self.layout.list_head.unwrap_or_default();
        let to_node = e.dsq_list as u64 + self.dsq_node_offset();
        self.write_u64(self.entity(task) + e.dsq_vtime as u64, vtime);
        let head = dsq + d.list as u64;
        let mut at = self.read_u64(head + lh.next as u64);
        let mut steps = 0;
        while at != head && steps < 1 << 20 {
            let other = at - to_node;
            if self.read_u64(other + e.dsq_vtime as u64) > vtime {
                break;
            }
            at = self.read_u64(at + lh.next as u64);
            steps += 1;
        }
        // list_add_tail(node, at): insert before `at`.
        self.list_add_tail(at, self.entity(task) + to_node);
        self.write_u64(self.entity(task) + e.dsq as u64, dsq);
        let nr = dsq + d.nr as u64;
        self.write_u32(nr, self.read_u32(nr) + 1);
    }

    /// Put an iterator cursor (`bpf_iter_scx_dsq`'s node) at the tail of `dsq`.
    pub fn insert_cursor(&mut self, dsq: u64) -> u64 {
        let n = self.layout.dsq_list_node.unwrap_or_default();
        let d = self.layout.dsq.unwrap_or_default();
        let cursor = self.alloc(n.struct_size.max(24) as u64);
        self.write_u32(cursor + n.flags as u64, SCX_DSQ_LNODE_ITER_CURSOR);
        self.list_add_tail(dsq + d.list as u64, cursor + n.node as u64);
        cursor
    }
}

#[cfg(test)]
mod tests;
