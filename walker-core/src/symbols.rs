//! Kernel symbol addresses the walkers use, as plain data.
//!
//! Addresses are kernel virtual addresses as the running guest sees them
//! (after any KASLR slide). Sources: an ELF `.symtab`, a System.map or
//! `/proc/kallsyms` text (feature `std`, [`crate::kernel::ksyms`]), or the
//! guest agent. Each is optional; a pass names what it needed and lacked.

macro_rules! symbols {
    ($( $(#[$doc:meta])* $field:ident = $sym:literal ),* $(,)?) => {
        /// Addresses of the kernel symbols the walkers know about.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        #[cfg_attr(feature = "embed", derive(serde::Serialize, serde::Deserialize))]
        pub struct Symbols {
            $( $(#[$doc])* pub $field: Option<u64>, )*
        }

        impl Symbols {
            /// Kernel names of every symbol this struct holds.
            pub const NAMES: &'static [&'static str] = &[$( $sym ),*];

            /// Record `addr` for the kernel symbol `name`; false if `name` is
            /// not one this struct holds.
            pub fn set(&mut self, name: &str, addr: u64) -> bool {
                match name {
                    $( $sym => { self.$field = Some(addr); true } )*
                    _ => false,
                }
            }

            /// The address recorded for kernel symbol `name`.
            pub fn get(&self, name: &str) -> Option<u64> {
                match name {
                    $( $sym => self.$field, )*
                    _ => None,
                }
            }

            /// Add `slide` (wrapping) to every address: link-time addresses
            /// from a vmlinux become runtime addresses under KASLR.
            pub fn slide(&mut self, slide: u64) {
                $( if let Some(a) = self.$field.as_mut() { *a = a.wrapping_add(slide); } )*
            }
        }
    };
}

symbols! {
    /// Per-CPU `struct rq runqueues`.
    runqueues = "runqueues",
    /// `unsigned long __per_cpu_offset[NR_CPUS]`.
    per_cpu_offset = "__per_cpu_offset",
    /// Start of the per-CPU section (0 on <= 6.14 kernels).
    per_cpu_start = "__per_cpu_start",
    /// `unsigned long page_offset_base`: start of the direct map.
    page_offset_base = "page_offset_base",
    /// `unsigned long phys_base`: physical offset of the kernel image.
    phys_base = "phys_base",
    /// Start of kernel text; its runtime/link-time difference is the KASLR slide.
    text = "_text",
    /// `struct scx_sched *scx_root` (6.16+).
    scx_root = "scx_root",
    /// `struct sched_ext_ops scx_ops` (before `scx_root` existed).
    scx_ops = "scx_ops",
    /// `atomic_t scx_ops_enable_state_var` (before `scx_root`).
    scx_ops_enable_state_var = "scx_ops_enable_state_var",
    /// `atomic_t scx_exit_kind` (before `scx_root`).
    scx_exit_kind = "scx_exit_kind",
    /// `struct scx_exit_info *scx_exit_info` (before `scx_root`).
    scx_exit_info = "scx_exit_info",
    /// `int scx_ops_bypass_depth` (before `scx_root`).
    scx_ops_bypass_depth = "scx_ops_bypass_depth",
    /// `unsigned long scx_watchdog_timeout`, in jiffies (before `scx_root`).
    scx_watchdog_timeout = "scx_watchdog_timeout",
    /// `struct scx_dispatch_q **global_dsqs`: per-node global DSQs
    /// (6.12.y and 6.13 to 6.15).
    global_dsqs = "global_dsqs",
    /// `struct scx_dispatch_q scx_dsq_global`: the one global DSQ of the
    /// first 6.12 releases.
    scx_dsq_global = "scx_dsq_global",
    /// `struct rhashtable dsq_hash`: user DSQs (before `scx_root`).
    dsq_hash = "dsq_hash",
    /// `struct list_head scx_tasks`: every task sched_ext knows.
    scx_tasks = "scx_tasks",
    /// `u64 jiffies_64`.
    jiffies_64 = "jiffies_64",
    /// `unsigned int nr_cpu_ids`.
    nr_cpu_ids = "nr_cpu_ids",
    /// `unsigned int nr_node_ids`.
    nr_node_ids = "nr_node_ids",
    /// `unsigned long max_pfn`: the direct map ends at its page.
    max_pfn = "max_pfn",
    /// `const char linux_banner[]`.
    linux_banner = "linux_banner",
    /// `struct uts_namespace init_uts_ns`: the release and version
    /// `uname` reports.
    init_uts_ns = "init_uts_ns",
    /// `struct task_struct init_task`.
    init_task = "init_task",
    /// The kernel's top-level page table (physical via the image mapping).
    init_top_pgt = "init_top_pgt",
    /// `ext_sched_class`.
    ext_sched_class = "ext_sched_class",
    /// `fair_sched_class`.
    fair_sched_class = "fair_sched_class",
    /// `rt_sched_class`.
    rt_sched_class = "rt_sched_class",
    /// `dl_sched_class`.
    dl_sched_class = "dl_sched_class",
    /// `idle_sched_class`.
    idle_sched_class = "idle_sched_class",
    /// `stop_sched_class`.
    stop_sched_class = "stop_sched_class",
    /// `atomic_t scx_enable_state_var`: `enum scx_enable_state`.
    scx_enable_state_var = "scx_enable_state_var",
    /// `atomic_long_t scx_enable_seq`: schedulers enabled since boot.
    scx_enable_seq = "scx_enable_seq",
    /// `atomic_long_t scx_nr_rejected`: tasks whose switch to sched_ext
    /// was rejected.
    scx_nr_rejected = "scx_nr_rejected",
    /// `bool scx_switching_all`: the scheduler takes every task
    /// (`SCX_OPS_SWITCH_PARTIAL` unset).
    scx_switching_all = "scx_switching_all",
    /// `struct static_key_false __scx_switched_all`.
    scx_switched_all = "__scx_switched_all",
    /// `int scx_bypass_depth` (before it moved into `scx_sched`).
    scx_bypass_depth = "scx_bypass_depth",
    /// `atomic_t scx_breather_depth` (6.15 to 6.19).
    scx_breather_depth = "scx_breather_depth",
    /// `struct idr map_idr`: every BPF map by id.
    map_idr = "map_idr",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_slide() {
        let mut s = Symbols::default();
        assert!(s.set("scx_tasks", 0xffff_ffff_8100_0000));
        assert!(!s.set("not_a_symbol", 1));
        s.slide(0x20_0000);
        assert_eq!(s.get("scx_tasks"), Some(0xffff_ffff_8120_0000));
        assert_eq!(s.scx_root, None);
        assert_eq!(Symbols::NAMES.len(), 39);
        for n in Symbols::NAMES {
            assert!(s.set(n, 7), "{n}");
            assert_eq!(s.get(n), Some(7));
        }
    }
}
