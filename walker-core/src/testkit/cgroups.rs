//! cgroups for synthetic tasks: `task->cgroups` (a `css_set`) ->
//! `dfl_cgrp` (a `cgroup`) -> `kn` (a `kernfs_node` with name and parent,
//! up to a parentless root), as the kernel links them.

use super::SyntheticKernel;

impl SyntheticKernel {
    /// A `css_set` whose default cgroup is `path` (`/` or `/a/b`); each call
    /// builds its own chain of nodes.
    pub fn cgroup(&mut self, path: &str) -> u64 {
        let cs = self.layout.css_set.unwrap_or_default();
        let cg = self.layout.cgroup.unwrap_or_default();
        let kn = self.layout.kernfs_node.unwrap_or_default();
        let root = self.alloc(u64::from(kn.struct_size));
        let mut parent = root;
        for name in path.split('/').filter(|s| !s.is_empty()) {
            let node = self.alloc(u64::from(kn.struct_size));
            let text = self.alloc(name.len() as u64 + 1);
            self.write(text, name.as_bytes());
            self.write_u64(node + u64::from(kn.name), text);
            self.write_u64(node + u64::from(kn.parent), parent);
            parent = node;
        }
        let cgroup = self.alloc(u64::from(cg.struct_size));
        self.write_u64(cgroup + u64::from(cg.kn), parent);
        let css_set = self.alloc(u64::from(cs.struct_size));
        self.write_u64(css_set + u64::from(cs.dfl_cgrp), cgroup);
        css_set
    }

    /// Put `task` in the cgroup of `css_set` (from [`Self::cgroup`]).
    pub fn set_cgroup(&mut self, task: u64, css_set: u64) {
        if let Some(o) = self.layout.task.unwrap_or_default().cgroups {
            self.write_u64(task + u64::from(o), css_set);
        }
    }
}
