//! The cgroup pass: the default-hierarchy cgroup path of every distinct
//! `css_set` the task pass saw (`css_set.dfl_cgrp->kn`, then kernfs
//! parents up to the root). Few cgroups, many tasks: each `css_set` is
//! resolved once.

use super::records::{CGROUP_PATH_LEN, CgroupRecord, Fault};
use super::{CaptureBuf, Cx, read_ptr};
use crate::mem::GuestMem;
use crate::translate::Translator;

/// Deepest cgroup path followed.
const MAX_DEPTH: usize = 16;
/// Longest directory name kept.
const NAME_LEN: usize = 64;

pub(super) fn capture<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    buf: &mut CaptureBuf<'_>,
) -> Result<(), Fault> {
    let l = cx.target.layout;
    let cs = l.css_set.ok_or(Fault::MissingGroup("css_set"))?;
    let cg = l.cgroup.ok_or(Fault::MissingGroup("cgroup"))?;
    let kn = l.kernfs_node.ok_or(Fault::MissingGroup("kernfs_node"))?;
    let mut last = 0u64;
    for i in 0..buf.tasks.len() {
        let Some(css_set) = buf.tasks.as_slice().get(i).map(|t| t.css_set) else {
            break;
        };
        // Tasks of one cgroup tend to sit together on scx_tasks.
        if css_set == 0 || css_set == last {
            continue;
        }
        last = css_set;
        if buf.cgroups.as_slice().iter().any(|c| c.css_set == css_set) {
            continue;
        }
        let mut rec = CgroupRecord {
            css_set,
            ..CgroupRecord::default()
        };
        // A path cut short keeps the fault `path` noted.
        if let Err(f) = path(
            cx,
            tr,
            css_set,
            cs.dfl_cgrp,
            cg.kn,
            kn.name,
            kn.parent,
            &mut rec,
        ) {
            rec.fault = f;
        }
        if buf.cgroups.push(rec).is_none() {
            break;
        }
    }
    Ok(())
}

/// A NUL-terminated name of at most [`NAME_LEN`] bytes, read in small
/// pieces so a name near the end of a mapping still reads.
fn read_name<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    va: u64,
    out: &mut [u8; NAME_LEN],
) -> Result<usize, Fault> {
    let mut len = 0;
    for piece in out.chunks_mut(16) {
        let at = va.wrapping_add(len as u64);
        tr.read_virt(cx.mem, at, piece)
            .map_err(|_| Fault::Unreadable(at))?;
        if let Some(nul) = piece.iter().position(|&b| b == 0) {
            return Ok(len + nul);
        }
        len += piece.len();
    }
    Ok(len)
}

#[allow(clippy::too_many_arguments)]
fn path<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    css_set: u64,
    dfl_cgrp: u32,
    cgroup_kn: u32,
    kn_name: u32,
    kn_parent: u32,
    rec: &mut CgroupRecord,
) -> Result<(), Fault> {
    let cgrp = read_ptr(cx, tr, css_set.wrapping_add(u64::from(dfl_cgrp)))?;
    let mut node = read_ptr(cx, tr, cgrp.wrapping_add(u64::from(cgroup_kn)))?;
    // Names from the leaf up; the root's (parentless) name is not part of
    // the path.
    let mut names = [[0u8; NAME_LEN]; MAX_DEPTH];
    let mut lens = [0usize; MAX_DEPTH];
    let mut depth = 0;
    loop {
        if node == 0 {
            return Err(Fault::Corrupt(cgrp));
        }
        let parent = read_ptr(cx, tr, node.wrapping_add(u64::from(kn_parent)))?;
        if parent == 0 {
            break;
        }
        let (Some(name), Some(len)) = (names.get_mut(depth), lens.get_mut(depth)) else {
            // Deeper than we follow: keep the innermost levels.
            rec.fault = Fault::Corrupt(node);
            break;
        };
        let name_ptr = read_ptr(cx, tr, node.wrapping_add(u64::from(kn_name)))?;
        *len = read_name(cx, tr, name_ptr, name)?;
        depth += 1;
        node = parent;
    }
    let mut out = 0usize;
    let mut push = |bytes: &[u8]| {
        for &b in bytes {
            if let Some(slot) = rec.path.get_mut(out) {
                *slot = b;
                out += 1;
            }
        }
    };
    if depth == 0 {
        push(b"/");
    }
    for d in (0..depth).rev() {
        push(b"/");
        let len = lens.get(d).copied().unwrap_or(0);
        push(names.get(d).and_then(|n| n.get(..len)).unwrap_or(&[]));
    }
    rec.len = out.min(CGROUP_PATH_LEN) as u8;
    Ok(())
}
