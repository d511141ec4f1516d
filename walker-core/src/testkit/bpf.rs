//! BPF objects of the synthetic kernel: maps (`struct bpf_map`, array
//! values after `struct bpf_array`), `map_idr` as an xarray of
//! `xa_node`s, a sched_ext struct_ops map whose links point to programs
//! (`bpf_prog` -> `bpf_prog_aux` with `used_maps`), as the kernel links
//! them.

use std::vec::Vec;

use super::{MissingGroup, SyntheticKernel};

macro_rules! group {
    ($k:expr, $g:ident) => {
        $k.layout.$g.ok_or(MissingGroup(stringify!($g)))?
    };
}

/// `BPF_MAP_TYPE_HASH`.
pub const MAP_HASH: u32 = 1;
/// `BPF_MAP_TYPE_RINGBUF`.
pub const MAP_RINGBUF: u32 = 27;

/// A map to lay out.
#[derive(Debug, Clone, Copy)]
pub struct MapSpec<'a> {
    /// `id` (and its `map_idr` index).
    pub id: u32,
    /// `map_type`.
    pub map_type: u32,
    /// `name`.
    pub name: &'a str,
    /// `value_size`.
    pub value_size: u32,
    /// `max_entries`.
    pub max_entries: u32,
    /// `btf` (any non-zero address stands for a BPF object's BTF; see
    /// [`SyntheticKernel::bpf_btf`]).
    pub btf: u64,
    /// `btf_value_type_id`.
    pub value_type_id: u32,
    /// `btf_key_type_id`.
    pub key_type_id: u32,
}

impl SyntheticKernel {
    /// A map (an array's values, `max_entries` of `value_size` rounded up
    /// to 8, follow its `struct bpf_array`); not yet on `map_idr`.
    pub fn bpf_map(&mut self, spec: MapSpec<'_>) -> Result<u64, MissingGroup> {
        let m = group!(self, bpf_map);
        let a = group!(self, bpf_array);
        let elem = spec.value_size.next_multiple_of(8);
        let values = u64::from(elem) * u64::from(spec.max_entries);
        // Room for the largest map header the layout knows (a hash map's).
        let htab = self.layout.bpf_htab.map_or(0, |h| h.struct_size);
        let size = u64::from(a.struct_size.max(m.struct_size).max(htab)).max(u64::from(a.value));
        let map = self.alloc(size + values.min(1 << 20));
        let w32 = |k: &mut Self, o: u32, v: u32| k.write_u32(map + u64::from(o), v);
        w32(self, m.map_type, spec.map_type);
        w32(self, m.key_size, 4);
        w32(self, m.value_size, spec.value_size);
        w32(self, m.max_entries, spec.max_entries);
        w32(self, m.id, spec.id);
        w32(self, a.elem_size, elem);
        self.write_u64(map + u64::from(m.btf), spec.btf);
        w32(self, m.btf_value_type_id, spec.value_type_id);
        w32(self, m.btf_key_type_id, spec.key_type_id);
        let mut name = [0u8; 16];
        for (d, c) in name.iter_mut().zip(spec.name.bytes().take(15)) {
            *d = c;
        }
        self.write(map + u64::from(m.name), &name);
        Ok(map)
    }

    /// A `struct btf` whose data is `raw` (a BPF object's BTF as loaded).
    pub fn bpf_btf(&mut self, raw: &[u8]) -> Result<u64, MissingGroup> {
        let b = group!(self, btf);
        let btf = self.alloc(u64::from(b.struct_size));
        let data = self.alloc(raw.len() as u64);
        self.write(data, raw);
        self.write_u64(btf + u64::from(b.data), data);
        self.write_u32(btf + u64::from(b.data_size), raw.len() as u32);
        Ok(btf)
    }

    /// A hash map of `n_buckets` buckets holding `entries` (key, value),
    /// entry `i` chained into bucket `i % n_buckets` (each chain ends in
    /// its nulls marker, as `hlist_nulls` does).
    pub fn bpf_hash(
        &mut self,
        spec: MapSpec<'_>,
        n_buckets: u32,
        entries: &[(&[u8], &[u8])],
    ) -> Result<u64, MissingGroup> {
        let h = group!(self, bpf_htab);
        let b = group!(self, htab_bucket);
        let e = group!(self, htab_elem);
        let map = self.bpf_map(spec)?;
        let buckets = self.alloc(u64::from(b.struct_size) * u64::from(n_buckets));
        for i in 0..u64::from(n_buckets) {
            let head = buckets + i * u64::from(b.struct_size) + u64::from(b.head);
            self.write_u64(head, (i << 1) | 1);
        }
        self.write_u64(map + u64::from(h.buckets), buckets);
        self.write_u32(map + u64::from(h.n_buckets), n_buckets);
        let key_room = u64::from(spec.value_size).max(1) + 64;
        for (i, (k, v)) in entries.iter().enumerate() {
            let elem = self.alloc(u64::from(e.struct_size) + k.len() as u64 + key_room);
            let key = elem + u64::from(e.key);
            self.write(key, k);
            self.write(key + (k.len() as u64).next_multiple_of(8), v);
            let node = elem + u64::from(e.hash_node);
            let bucket = i as u64 % u64::from(n_buckets);
            let head = buckets + bucket * u64::from(b.struct_size) + u64::from(b.head);
            // Pushed at the front, as `hlist_nulls_add_head_rcu` does.
            let first = self.read_u64(head);
            self.write_u64(node, first);
            self.write_u64(head, node);
        }
        Ok(map)
    }

    /// Where an array map's values start.
    pub fn bpf_values(&self, map: u64) -> u64 {
        map + u64::from(self.layout.bpf_array.unwrap_or_default().value)
    }

    /// `map_idr` holding `maps` (index, `struct bpf_map` address), as a
    /// tree of `xa_node`s deep enough for the largest index.
    pub fn map_idr(&mut self, maps: &[(u64, u64)]) -> Result<u64, MissingGroup> {
        let idr = group!(self, idr);
        let at = self.global("map_idr", u64::from(idr.struct_size));
        let max = maps.iter().map(|m| m.0).max().unwrap_or(0);
        let mut shift = 0u32;
        while shift < 60 && (max >> shift) >= 64 {
            shift += 6;
        }
        let head = self.xa_level(shift, 0, maps)?;
        self.write_u64(at + u64::from(idr.xa_head), head);
        Ok(at)
    }

    /// A node of `shift` covering indices from `first`; its entry (node
    /// pointer | 2).
    fn xa_level(
        &mut self,
        shift: u32,
        first: u64,
        maps: &[(u64, u64)],
    ) -> Result<u64, MissingGroup> {
        let xn = group!(self, xa_node);
        let node = self.alloc(u64::from(xn.struct_size));
        self.write_u8(node + u64::from(xn.shift), shift as u8);
        for slot in 0..64u64 {
            let lo = first + (slot << shift);
            let hi = lo + (1u64 << shift);
            let inside: Vec<(u64, u64)> = maps
                .iter()
                .copied()
                .filter(|&(i, _)| i >= lo && i < hi)
                .collect();
            let entry = match (shift, inside.first()) {
                (_, None) => continue,
                (0, Some(&(_, map))) => map,
                (_, Some(_)) => self.xa_level(shift - 6, lo, &inside)?,
            };
            self.write_u64(node + u64::from(xn.slots) + 8 * slot, entry);
        }
        Ok(node | 2)
    }

    /// Make the xa node behind `entry` (as [`Self::map_idr`] wrote it)
    /// point slot `slot` at `to` (a hostile tree).
    pub fn xa_set_slot(&mut self, entry: u64, slot: u64, to: u64) {
        let xn = self.layout.xa_node.unwrap_or_default();
        self.write_u64((entry & !3) + u64::from(xn.slots) + 8 * slot, to);
    }

    /// `map_idr`'s head entry.
    pub fn xa_head(&self) -> u64 {
        let idr = self.layout.idr.unwrap_or_default();
        self.read_u64(self.sym("map_idr") + u64::from(idr.xa_head))
    }

    /// A program named `name` with id `id` using `used` maps.
    pub fn bpf_prog(&mut self, id: u32, name: &str, used: &[u64]) -> Result<u64, MissingGroup> {
        let p = group!(self, bpf_prog);
        let a = group!(self, prog_aux);
        let prog = self.alloc(u64::from(p.struct_size));
        let aux = self.alloc(u64::from(a.struct_size));
        let array = self.alloc(8 * used.len() as u64);
        for (i, &m) in used.iter().enumerate() {
            self.write_u64(array + 8 * i as u64, m);
        }
        self.write_u32(prog + u64::from(p.prog_type), 27);
        self.write_u64(prog + u64::from(p.aux), aux);
        self.write_u32(aux + u64::from(a.id), id);
        let mut n = [0u8; 16];
        for (d, c) in n.iter_mut().zip(name.bytes().take(15)) {
            *d = c;
        }
        self.write(aux + u64::from(a.name), &n);
        self.write_u64(aux + u64::from(a.used_maps), array);
        self.write_u32(aux + u64::from(a.used_map_cnt), used.len() as u32);
        Ok(prog)
    }

    /// A sched_ext struct_ops map (type 26) named `name` whose ops are
    /// named `ops_name` and whose links point to `progs` (0: an empty
    /// slot).
    pub fn struct_ops_map(
        &mut self,
        id: u32,
        name: &str,
        ops_name: &str,
        progs: &[u64],
    ) -> Result<u64, MissingGroup> {
        let so = group!(self, struct_ops_map);
        let ops = group!(self, ops);
        let link = group!(self, bpf_link);
        let spec = MapSpec {
            id,
            map_type: 26,
            name,
            value_size: 0,
            max_entries: 1,
            btf: 0,
            value_type_id: 0,
            key_type_id: 0,
        };
        let map = self.bpf_map(spec)?;
        // The struct_ops map is larger than an array's header: its own.
        let big = self.alloc(u64::from(so.struct_size) + 4096);
        let m = self.layout.bpf_map.unwrap_or_default();
        let header = self.bytes()[Self::pa(map) as usize..][..m.struct_size as usize].to_vec();
        self.write(big, &header);
        let mut n = [0u8; 128];
        for (d, c) in n.iter_mut().zip(ops_name.bytes().take(127)) {
            *d = c;
        }
        self.write(big + u64::from(so.kvalue_data) + u64::from(ops.name), &n);
        let links = self.alloc(8 * progs.len() as u64);
        for (i, &p) in progs.iter().enumerate() {
            if p == 0 {
                continue;
            }
            let l = self.alloc(u64::from(link.struct_size));
            self.write_u64(l + u64::from(link.prog), p);
            self.write_u64(links + 8 * i as u64, l);
        }
        self.write_u64(big + u64::from(so.links), links);
        self.write_u32(big + u64::from(so.funcs_cnt), progs.len() as u32);
        Ok(big)
    }
}
