//! Struct member offsets the sched_ext walkers need, as plain data.
//!
//! Offsets come from the kernel's BTF (feature `std`, [`crate::kernel::btf`])
//! or from a test fixture. Each kernel struct is one group; a group the
//! kernel does not have (or whose required members are absent) is `None`,
//! and [`Layout::missing_groups`] names it. Members that exist only on some
//! kernel versions are `Option<u32>`: never "0 as a fallback".

/// One member a group wants from its kernel struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Field name in the group (and in reports).
    pub name: &'static str,
    /// Member path in the kernel struct: dotted for nested members
    /// (`ops.name`), `|` between alternatives tried in order
    /// (`cpu|thread_info.cpu`). Anonymous structs/unions are transparent.
    pub path: &'static str,
    /// Whether the group is unusable without this member.
    pub required: bool,
}

/// Most members any group declares.
pub const MAX_MEMBERS: usize = 24;

/// A group of offsets within one kernel struct.
pub trait Group: Sized {
    /// Name used in reports and `missing_groups()`.
    const NAME: &'static str;
    /// The kernel struct's name (`struct <STRUCT>`).
    const STRUCT: &'static str;
    /// What the group wants, in field order.
    const MEMBERS: &'static [Member];
    /// Build the group from the struct's byte size and one resolved offset
    /// per entry of [`Group::MEMBERS`]; `None` when a required one is absent.
    fn from_offsets(size: u32, offsets: &[Option<u32>]) -> Option<Self>;
}

macro_rules! layout_group {
    (
        $(#[$doc:meta])*
        $ty:ident, $name:literal, $strukt:literal {
            $( $req:ident : $rpath:literal ),* $(,)?
        }
        optional {
            $( $opt:ident : $opath:literal ),* $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        #[cfg_attr(feature = "embed", derive(serde::Serialize, serde::Deserialize))]
        pub struct $ty {
            /// Size of the whole struct in bytes.
            pub struct_size: u32,
            $(
                #[doc = concat!("Offset of `", $rpath, "`.")]
                pub $req: u32,
            )*
            $(
                #[doc = concat!("Offset of `", $opath, "`, when this kernel has it.")]
                pub $opt: Option<u32>,
            )*
        }

        impl Group for $ty {
            const NAME: &'static str = $name;
            const STRUCT: &'static str = $strukt;
            const MEMBERS: &'static [Member] = &[
                $( Member { name: stringify!($req), path: $rpath, required: true }, )*
                $( Member { name: stringify!($opt), path: $opath, required: false }, )*
            ];

            #[allow(unused_assignments, unused_mut, unused_variables)]
            fn from_offsets(size: u32, offsets: &[Option<u32>]) -> Option<Self> {
                let mut it = offsets.iter().copied();
                Some(Self {
                    struct_size: size,
                    $( $req: it.next().flatten()?, )*
                    $( $opt: it.next().flatten(), )*
                })
            }
        }
    };
}

layout_group! {
    /// `struct list_head`.
    ListHeadLayout, "list_head", "list_head" {
        next: "next",
        prev: "prev",
    }
    optional {}
}

layout_group! {
    /// `struct rq`: the per-CPU runqueue (`runqueues`).
    RqLayout, "rq", "rq" {
        nr_running: "nr_running",
        curr: "curr",
        clock: "clock",
        scx: "scx",
    }
    optional {
        idle: "idle",
        cpu: "cpu",
        nr_switches: "nr_switches",
    }
}

layout_group! {
    /// `struct scx_rq`: `rq->scx`.
    ScxRqLayout, "scx_rq", "scx_rq" {
        local_dsq: "local_dsq",
        runnable_list: "runnable_list",
        nr_running: "nr_running",
        flags: "flags",
    }
    optional {
        cpu_released: "cpu_released",
        ops_qseq: "ops_qseq",
        clock: "clock",
        cpuperf_target: "cpuperf_target",
        nr_immed: "nr_immed",
        bypass_dsq: "bypass_dsq",
        cpus_to_kick: "cpus_to_kick",
        cpus_to_kick_if_idle: "cpus_to_kick_if_idle",
        cpus_to_preempt: "cpus_to_preempt",
        cpus_to_wait: "cpus_to_wait",
        cpus_to_sync: "cpus_to_sync",
        kick_sync: "kick_sync",
    }
}

layout_group! {
    /// `struct task_struct`.
    TaskLayout, "task_struct", "task_struct" {
        pid: "pid",
        tgid: "tgid",
        comm: "comm",
        state: "__state",
        on_rq: "on_rq",
        sched_class: "sched_class",
        scx: "scx",
    }
    optional {
        on_cpu: "on_cpu",
        cpu: "cpu|thread_info.cpu",
        prio: "prio",
        static_prio: "static_prio",
        flags: "flags",
        cgroups: "cgroups",
        normal_prio: "normal_prio",
        nr_cpus_allowed: "nr_cpus_allowed",
        cpus_ptr: "cpus_ptr",
        cpus_mask: "cpus_mask",
        migration_disabled: "migration_disabled",
    }
}

layout_group! {
    /// `struct css_set`: a task's cgroups (`task_struct.cgroups`).
    CssSetLayout, "css_set", "css_set" {
        dfl_cgrp: "dfl_cgrp",
    }
    optional {}
}

layout_group! {
    /// `struct cgroup`: its kernfs directory names it.
    CgroupLayout, "cgroup", "cgroup" {
        kn: "kn",
    }
    optional {}
}

layout_group! {
    /// `struct kernfs_node`: a cgroup directory's name and parent
    /// (`__parent` since 6.15, `parent` before).
    KernfsNodeLayout, "kernfs_node", "kernfs_node" {
        name: "name",
        parent: "__parent|parent",
    }
    optional {}
}

layout_group! {
    /// `struct sched_ext_entity`: `task_struct.scx`.
    SchedExtEntityLayout, "sched_ext_entity", "sched_ext_entity" {
        dsq: "dsq",
        dsq_list: "dsq_list",
        flags: "flags",
        weight: "weight",
        slice: "slice",
        dsq_vtime: "dsq_vtime",
        runnable_at: "runnable_at",
        runnable_node: "runnable_node",
        tasks_node: "tasks_node",
        ops_state: "ops_state",
    }
    optional {
        sticky_cpu: "sticky_cpu",
        holding_cpu: "holding_cpu",
        selected_cpu: "selected_cpu",
        dsq_seq: "dsq_seq",
        dsq_flags: "dsq_flags",
        sched: "sched",
        ops_qseq: "ops_qseq",
    }
}

layout_group! {
    /// `struct scx_dsq_list_node`: a DSQ list link, or an iterator cursor.
    DsqListNodeLayout, "scx_dsq_list_node", "scx_dsq_list_node" {
        node: "node",
        flags: "flags",
    }
    optional {
        priv_: "priv",
    }
}

layout_group! {
    /// `struct scx_dispatch_q`: a dispatch queue.
    DsqLayout, "scx_dispatch_q", "scx_dispatch_q" {
        list: "list",
        nr: "nr",
        seq: "seq",
        id: "id",
    }
    optional {
        hash_node: "hash_node",
        first_task: "first_task",
        priq: "priq",
        sched: "sched",
    }
}

layout_group! {
    /// `struct sched_ext_ops`: the BPF scheduler's operation table.
    SchedExtOpsLayout, "sched_ext_ops", "sched_ext_ops" {
        name: "name",
    }
    optional {
        timeout_ms: "timeout_ms",
        flags: "flags",
    }
}

layout_group! {
    /// `struct scx_sched` (6.16+): the scheduler instance behind `scx_root`.
    ScxSchedLayout, "scx_sched", "scx_sched" {
        ops_name: "ops.name",
        exit_kind: "exit_kind",
        exit_info: "exit_info",
    }
    optional {
        dsq_hash: "dsq_hash",
        global_dsqs: "global_dsqs",
        pnode: "pnode",
        pcpu: "pcpu",
        bypass_depth: "bypass_depth",
        aborting: "aborting",
        watchdog_timeout: "watchdog_timeout",
        level: "level",
        event_stats_cpu: "event_stats_cpu",
    }
}

layout_group! {
    /// `struct scx_sched_pcpu`: per-CPU part of `scx_sched`.
    ScxSchedPcpuLayout, "scx_sched_pcpu", "scx_sched_pcpu" {
        bypass_dsq: "bypass_dsq",
    }
    optional {
        flags: "flags",
        event_stats: "event_stats",
        cpus_to_kick: "cpus_to_kick",
        cpus_to_kick_if_idle: "cpus_to_kick_if_idle",
        cpus_to_preempt: "cpus_to_preempt",
        cpus_to_wait: "cpus_to_wait",
    }
}

layout_group! {
    /// `struct scx_sched_pnode`: per-NUMA-node part of `scx_sched`.
    ScxSchedPnodeLayout, "scx_sched_pnode", "scx_sched_pnode" {
        global_dsq: "global_dsq",
    }
    optional {}
}

layout_group! {
    /// `struct scx_exit_info`: why the scheduler exited.
    ScxExitInfoLayout, "scx_exit_info", "scx_exit_info" {
        kind: "kind",
        reason: "reason",
        msg: "msg",
    }
    optional {
        exit_code: "exit_code",
        exit_cpu: "exit_cpu",
        flags: "flags",
        bt: "bt",
        bt_len: "bt_len",
        dump: "dump",
    }
}

layout_group! {
    /// `struct scx_event_stats`: sched_ext's event counters, one `s64` per
    /// `SCX_EV_*` member (their names and offsets come from BTF at render;
    /// the group holds the size, which bounds the capture's read).
    ScxEventStatsLayout, "scx_event_stats", "scx_event_stats" {
        select_cpu_fallback: "SCX_EV_SELECT_CPU_FALLBACK",
    }
    optional {}
}

layout_group! {
    /// `struct rhashtable`: e.g. `scx_sched.dsq_hash`.
    RhashtableLayout, "rhashtable", "rhashtable" {
        tbl: "tbl",
    }
    optional {
        nelems: "nelems",
        key_len: "key_len",
    }
}

layout_group! {
    /// `struct bucket_table`: an rhashtable's bucket array.
    BucketTableLayout, "bucket_table", "bucket_table" {
        size: "size",
        buckets: "buckets",
    }
    optional {
        nest: "nest",
        future_tbl: "future_tbl",
    }
}

layout_group! {
    /// `struct rhash_head`: an rhashtable chain link.
    RhashHeadLayout, "rhash_head", "rhash_head" {
        next: "next",
    }
    optional {}
}

layout_group! {
    /// `struct idr`: an ID allocator over an xarray (`map_idr`).
    IdrLayout, "idr", "idr" {
        xa_head: "idr_rt.xa_head",
    }
    optional {
        idr_base: "idr_base",
    }
}

layout_group! {
    /// `struct xa_node`: an interior node of an xarray (64 slots).
    XaNodeLayout, "xa_node", "xa_node" {
        shift: "shift",
        slots: "slots",
    }
    optional {
        count: "count",
    }
}

layout_group! {
    /// `struct bpf_map`: the kernel's header of every BPF map.
    BpfMapLayout, "bpf_map", "bpf_map" {
        map_type: "map_type",
        key_size: "key_size",
        value_size: "value_size",
        max_entries: "max_entries",
        map_flags: "map_flags",
        id: "id",
        name: "name",
        btf: "btf",
        btf_value_type_id: "btf_value_type_id",
        btf_vmlinux_value_type_id: "btf_vmlinux_value_type_id",
        btf_key_type_id: "btf_key_type_id",
    }
    optional {
        map_extra: "map_extra",
    }
}

layout_group! {
    /// `struct bpf_array`: an array map; its values (or, per-CPU, the
    /// per-CPU pointers) follow the header.
    BpfArrayLayout, "bpf_array", "bpf_array" {
        elem_size: "elem_size",
        value: "value",
    }
    optional {
        pptrs: "pptrs",
    }
}

layout_group! {
    /// `struct bpf_struct_ops_map`: a struct_ops map, its links to the
    /// programs and the kernel's copy of the ops (`kvalue.data`).
    BpfStructOpsMapLayout, "bpf_struct_ops_map", "bpf_struct_ops_map" {
        links: "links",
        funcs_cnt: "funcs_cnt",
        kvalue_data: "kvalue.data",
    }
    optional {}
}

layout_group! {
    /// `struct bpf_link`: a struct_ops slot's link to its program.
    BpfLinkLayout, "bpf_link", "bpf_link" {
        prog: "prog",
    }
    optional {}
}

layout_group! {
    /// `struct bpf_prog`.
    BpfProgLayout, "bpf_prog", "bpf_prog" {
        prog_type: "type",
        aux: "aux",
    }
    optional {}
}

layout_group! {
    /// `struct bpf_prog_aux`: a program's id, name and the maps it uses.
    BpfProgAuxLayout, "bpf_prog_aux", "bpf_prog_aux" {
        id: "id",
        name: "name",
        used_maps: "used_maps",
        used_map_cnt: "used_map_cnt",
    }
    optional {}
}

layout_group! {
    /// `struct btf`: a BPF object's type information as loaded (`data`,
    /// `data_size`: the raw BTF user space gave).
    BtfObjLayout, "btf", "btf" {
        data: "data",
        data_size: "data_size",
    }
    optional {}
}

layout_group! {
    /// `struct bpf_htab`: a hash map's bucket array.
    BpfHtabLayout, "bpf_htab", "bpf_htab" {
        buckets: "buckets",
        n_buckets: "n_buckets",
    }
    optional {}
}

layout_group! {
    /// `struct bucket`: one hash bucket, an `hlist_nulls_head` first.
    HtabBucketLayout, "bucket", "bucket" {
        head: "head",
    }
    optional {}
}

layout_group! {
    /// `struct htab_elem`: a hash map entry; its key, then its value at
    /// the key's size rounded up to 8.
    HtabElemLayout, "htab_elem", "htab_elem" {
        hash_node: "hash_node",
        key: "key",
    }
    optional {}
}

macro_rules! layout {
    ($( $field:ident : $ty:ty ),* $(,)?) => {
        /// Every offset group the walkers use; `None` where the kernel lacks it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        #[cfg_attr(feature = "embed", derive(serde::Serialize, serde::Deserialize))]
        pub struct Layout {
            $(
                #[doc = concat!("`struct ", stringify!($field), "` offsets (see [`", stringify!($ty), "`]).")]
                pub $field: Option<$ty>,
            )*
        }

        impl Layout {
            /// Resolve every group through `resolve(struct_name, members, offsets)`,
            /// which fills one offset per member and returns the struct's size,
            /// or `None` when the struct does not exist.
            pub fn build<F>(mut resolve: F) -> Self
            where
                F: FnMut(&'static str, &'static [Member], &mut [Option<u32>]) -> Option<u32>,
            {
                Self { $( $field: build_group::<$ty, F>(&mut resolve), )* }
            }

            /// Names of the groups that are absent, in declaration order.
            pub fn missing_groups(&self) -> impl Iterator<Item = &'static str> + '_ {
                [$( (self.$field.is_none(), <$ty as Group>::NAME) ),*]
                    .into_iter()
                    .filter_map(|(missing, name)| missing.then_some(name))
            }

            /// Kernel struct name and members of every group, for resolvers and docs.
            pub const GROUPS: &'static [(&'static str, &'static str, &'static [Member])] = &[
                $( (<$ty as Group>::NAME, <$ty as Group>::STRUCT, <$ty as Group>::MEMBERS), )*
            ];
        }
    };
}

fn build_group<G: Group, F>(resolve: &mut F) -> Option<G>
where
    F: FnMut(&'static str, &'static [Member], &mut [Option<u32>]) -> Option<u32>,
{
    let mut offsets = [None; MAX_MEMBERS];
    let offsets = offsets.get_mut(..G::MEMBERS.len())?;
    let size = resolve(G::STRUCT, G::MEMBERS, offsets)?;
    G::from_offsets(size, offsets)
}

layout! {
    list_head: ListHeadLayout,
    rq: RqLayout,
    scx_rq: ScxRqLayout,
    task: TaskLayout,
    entity: SchedExtEntityLayout,
    dsq_list_node: DsqListNodeLayout,
    dsq: DsqLayout,
    ops: SchedExtOpsLayout,
    sched: ScxSchedLayout,
    sched_pcpu: ScxSchedPcpuLayout,
    sched_pnode: ScxSchedPnodeLayout,
    exit_info: ScxExitInfoLayout,
    rhashtable: RhashtableLayout,
    bucket_table: BucketTableLayout,
    rhash_head: RhashHeadLayout,
    css_set: CssSetLayout,
    cgroup: CgroupLayout,
    kernfs_node: KernfsNodeLayout,
    event_stats: ScxEventStatsLayout,
    idr: IdrLayout,
    xa_node: XaNodeLayout,
    bpf_map: BpfMapLayout,
    bpf_array: BpfArrayLayout,
    struct_ops_map: BpfStructOpsMapLayout,
    bpf_link: BpfLinkLayout,
    bpf_prog: BpfProgLayout,
    prog_aux: BpfProgAuxLayout,
    btf: BtfObjLayout,
    bpf_htab: BpfHtabLayout,
    htab_bucket: HtabBucketLayout,
    htab_elem: HtabElemLayout,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_fits_the_offset_buffer() {
        for (name, _, members) in Layout::GROUPS {
            assert!(members.len() <= MAX_MEMBERS, "{name} has too many members");
            assert!(
                members.iter().any(|m| m.required),
                "{name} has no required member"
            );
        }
    }

    #[test]
    fn build_keeps_groups_with_required_members_and_names_the_rest() {
        // Resolve every member as its index * 8, except struct rq (absent)
        // and scx_rq's required `flags` (absent), and an optional rq member.
        let layout = Layout::build(|strukt, members, offsets| {
            if strukt == "rq" {
                return None;
            }
            for (i, (m, o)) in members.iter().zip(offsets.iter_mut()).enumerate() {
                let absent = (strukt == "scx_rq" && m.path == "flags")
                    || (strukt == "task_struct" && m.name == "prio");
                *o = (!absent).then_some(i as u32 * 8);
            }
            Some(4096)
        });
        let missing: heapless::Vec<&str, 16> = layout.missing_groups().collect();
        assert_eq!(missing.as_slice(), &["rq", "scx_rq"]);
        let task = layout.task.unwrap();
        assert_eq!(
            (task.struct_size, task.pid, task.tgid, task.prio),
            (4096, 0, 8, None)
        );
        assert_eq!(task.cpu, Some(8 * 8));
        assert_eq!(
            Layout::default().missing_groups().count(),
            Layout::GROUPS.len()
        );
    }
}
