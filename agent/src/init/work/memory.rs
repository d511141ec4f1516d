//! Memory work: pages placed on a NUMA node by policy, touched again and
//! again, and where they ended up compared with where the worker runs.

use std::time::{Duration, Instant};

use super::{Meter, going};

const PAGE: usize = 4096;
const MPOL_PREFERRED: i32 = 1;
const MPOL_BIND: i32 = 2;
const MPOL_F_NODE: u64 = 1;
const MPOL_F_ADDR: u64 = 2;

/// Map `mib` MiB, place it (`mbind`) on `node`, and write every page per
/// iteration; afterwards, sample where the pages are.
pub fn touch(
    mib: u32,
    node: Option<u32>,
    preferred: bool,
    deadline: Instant,
    m: &mut Meter,
) -> Result<u64, String> {
    let len = (mib.max(1) as usize) << 20;
    // SAFETY: a private anonymous mapping we own until munmap below.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(format!(
            "mmap {mib} MiB: {}",
            std::io::Error::last_os_error()
        ));
    }
    let result = (|| {
        if let Some(n) = node {
            let mask: u64 = 1u64
                .checked_shl(n)
                .ok_or(format!("node {n} out of range"))?;
            let mode = if preferred { MPOL_PREFERRED } else { MPOL_BIND };
            // SAFETY: mbind on our own mapping with a one-word node mask.
            let r = unsafe { libc::syscall(libc::SYS_mbind, base, len, mode, &mask, 64u64, 0u32) };
            if r != 0 {
                return Err(format!(
                    "mbind node {n}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        let bytes = base.cast::<u8>();
        let mut passes = 0u64;
        while going(deadline) {
            for off in (0..len).step_by(PAGE) {
                // SAFETY: `off` is inside the mapping.
                unsafe { bytes.add(off).write_volatile(passes as u8) };
            }
            passes += 1;
            m.tick(Duration::ZERO);
        }
        m.remote = Some(remote_pages(bytes, len));
        Ok(passes)
    })();
    // SAFETY: unmapping what we mapped.
    unsafe { libc::munmap(base, len) };
    result
}

/// (pages on another node than this CPU's, pages checked), from up to
/// 1024 pages spread over the mapping.
fn remote_pages(base: *mut u8, len: usize) -> (u64, u64) {
    let Some(here) = cpu_node() else {
        return (0, 0);
    };
    let pages = len / PAGE;
    let step = (pages / 1024).max(1);
    let (mut remote, mut checked) = (0, 0);
    for p in (0..pages).step_by(step) {
        let mut node: i32 = -1;
        // SAFETY: get_mempolicy writes one int; the address is in our
        // mapping.
        let r = unsafe {
            libc::syscall(
                libc::SYS_get_mempolicy,
                &mut node,
                std::ptr::null_mut::<u64>(),
                0u64,
                base.add(p * PAGE),
                MPOL_F_NODE | MPOL_F_ADDR,
            )
        };
        if r == 0 && node >= 0 {
            checked += 1;
            if node as u32 != here {
                remote += 1;
            }
        }
    }
    (remote, checked)
}

/// The NUMA node of the CPU this thread runs on.
fn cpu_node() -> Option<u32> {
    let (mut cpu, mut node) = (0u32, 0u32);
    // SAFETY: getcpu writes two u32s.
    let r = unsafe {
        libc::syscall(
            libc::SYS_getcpu,
            &mut cpu,
            &mut node,
            std::ptr::null_mut::<u8>(),
        )
    };
    (r == 0).then_some(node)
}
