//! The scheduler side of a synthetic kernel before 6.16: no `scx_root`,
//! the state in globals (`scx_ops`, `scx_ops_enable_state_var`,
//! `scx_exit_kind`, `scx_exit_info`, `scx_ops_bypass_depth`,
//! `scx_watchdog_timeout`, `global_dsqs`, `dsq_hash`), as 6.12's
//! kernel/sched/ext.c has them.

use super::{MissingGroup, SCX_DSQ_GLOBAL, SyntheticKernel};

/// `SCX_OPS_ENABLED` of 6.12's `enum scx_ops_enable_state`.
pub const SCX_OPS_ENABLED: u32 = 1;
/// `SCX_OPS_DISABLED`.
pub const SCX_OPS_DISABLED: u32 = 3;
/// `SCX_EXIT_DONE`: `scx_exit_kind` with no scheduler.
const SCX_EXIT_DONE: u32 = 1;

impl SyntheticKernel {
    /// Make this a kernel before 6.16 with no scheduler attached: the
    /// globals exist (enable state DISABLED, exit kind DONE, no exit info,
    /// no global DSQs yet) and `scx_root` does not. Returns `scx_ops`.
    pub fn pre_root(&mut self) -> Result<u64, MissingGroup> {
        let ops = self.layout.ops.ok_or(MissingGroup("ops"))?;
        let ht = self.layout.rhashtable.ok_or(MissingGroup("rhashtable"))?;
        self.symbols.scx_root = None;
        let at = self.global("scx_ops", u64::from(ops.struct_size));
        for (name, size) in [
            ("scx_ops_enable_state_var", 4),
            ("scx_exit_kind", 4),
            ("scx_exit_info", 8),
            ("scx_ops_bypass_depth", 4),
            ("scx_watchdog_timeout", 8),
            ("global_dsqs", 8),
        ] {
            self.global(name, size);
        }
        self.global("dsq_hash", u64::from(ht.struct_size));
        self.write_u32(self.sym("scx_ops_enable_state_var"), SCX_OPS_DISABLED);
        self.write_u32(self.sym("scx_exit_kind"), SCX_EXIT_DONE);
        Ok(at)
    }

    /// Attach a scheduler named `name` the pre-6.16 way (after
    /// [`SyntheticKernel::pre_root`]): `scx_ops` filled, state ENABLED,
    /// exit kind NONE, an exit info allocated, one node's global DSQ, a
    /// user-DSQ table of `buckets` buckets. Returns `scx_ops`.
    pub fn attach_scheduler_pre_root(
        &mut self,
        name: &str,
        buckets: u32,
    ) -> Result<u64, MissingGroup> {
        let ops = self.layout.ops.ok_or(MissingGroup("ops"))?;
        let ei = self.layout.exit_info.ok_or(MissingGroup("exit_info"))?;
        let bt = self
            .layout
            .bucket_table
            .ok_or(MissingGroup("bucket_table"))?;
        let ht = self.layout.rhashtable.unwrap_or_default();
        let at = self.sym("scx_ops");
        let mut n = [0u8; 128];
        for (d, c) in n.iter_mut().zip(name.bytes().take(127)) {
            *d = c;
        }
        self.write(at + u64::from(ops.name), &n);
        self.write_u32(self.sym("scx_ops_enable_state_var"), SCX_OPS_ENABLED);
        self.write_u32(self.sym("scx_exit_kind"), 0);
        let info = self.alloc(u64::from(ei.struct_size));
        self.write_u64(self.sym("scx_exit_info"), info);
        self.write_u64(self.sym("scx_watchdog_timeout"), 30 * 250);
        let array = self.alloc(8);
        let global = self.new_dsq(SCX_DSQ_GLOBAL);
        self.write_u64(array, global);
        self.write_u64(self.sym("global_dsqs"), array);
        let tbl = self.alloc(u64::from(bt.struct_size) + 8 * u64::from(buckets));
        self.write_u32(tbl + u64::from(bt.size), buckets);
        self.write_u64(self.sym("dsq_hash") + u64::from(ht.tbl), tbl);
        Ok(at)
    }

    /// A user DSQ with `id` in the global `dsq_hash`.
    pub fn add_user_dsq_pre_root(&mut self, id: u64) -> u64 {
        let table = self.sym("dsq_hash");
        self.hash_user_dsq(table, id)
    }

    /// Node 0's global DSQ (`global_dsqs[0]`).
    pub fn global_dsq_pre_root(&self) -> u64 {
        let array = self.read_u64(self.sym("global_dsqs"));
        self.read_u64(array)
    }

    /// Record an exit the pre-6.16 way: `scx_exit_kind` and the exit info.
    pub fn set_exit_pre_root(&mut self, kind: u32, reason: &str, msg: &str) {
        self.write_u32(self.sym("scx_exit_kind"), kind);
        let info = self.read_u64(self.sym("scx_exit_info"));
        self.fill_exit_info(info, kind, reason, msg);
    }

    /// Set `scx_ops_enable_state_var`.
    pub fn set_enable_state_pre_root(&mut self, state: u32) {
        self.write_u32(self.sym("scx_ops_enable_state_var"), state);
    }
}
