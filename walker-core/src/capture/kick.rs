//! A CPU's pending kicks: the cpumasks `kick_cpus_irq_workfn()` acts on
//! (CPUs to kick, to kick if idle, to preempt, to wait for) and, on 7.x,
//! the CPUs whose enqueue capabilities await a sync. Kept in `scx_rq`
//! before 7.x and in the scheduler's `scx_sched_pcpu` since; a set bit
//! the dump catches is a kick requested and not yet delivered.

use super::Cx;
use crate::mem::GuestMem;
use crate::translate::Translator;
use zerocopy::IntoBytes;

/// Mask words kept per mask (the first 256 CPUs).
pub const KICK_WORDS: usize = 4;

/// The masks, in [`KickMasks::words`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickMask {
    /// `cpus_to_kick`.
    Kick,
    /// `cpus_to_kick_if_idle`.
    KickIfIdle,
    /// `cpus_to_preempt`.
    Preempt,
    /// `cpus_to_wait`.
    Wait,
    /// `cpus_to_sync` (7.x).
    Sync,
}

impl KickMask {
    /// Every mask, in order.
    pub const ALL: [KickMask; 5] = [
        KickMask::Kick,
        KickMask::KickIfIdle,
        KickMask::Preempt,
        KickMask::Wait,
        KickMask::Sync,
    ];
}

/// One CPU's kick masks as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KickMasks {
    /// Each mask's first [`KICK_WORDS`] words, by [`KickMask`] index.
    pub words: [[u64; KICK_WORDS]; 5],
    /// Bit `i`: mask `i` was read (absent on this kernel, or unreadable,
    /// otherwise).
    pub read: u8,
    /// `rq->scx.kick_sync`: bumped each time the CPU passes a kick-sync
    /// point (7.x).
    pub kick_sync: Option<u64>,
}

/// Reads `cpu`'s masks: `scx` is its `rq->scx`, `pcpu` its
/// `scx_sched_pcpu` when the scheduler keeps one.
pub(super) fn read<M: GuestMem + ?Sized>(
    cx: &Cx<'_, '_, M>,
    tr: &mut Translator,
    scx: u64,
    pcpu: Option<u64>,
) -> KickMasks {
    let l = cx.target.layout;
    let mut out = KickMasks::default();
    let (Some(rq), pc) = (l.scx_rq, l.sched_pcpu) else {
        return out;
    };
    let in_pcpu = |off: Option<u32>| pcpu.zip(off).map(|(p, o)| p.wrapping_add(u64::from(o)));
    let in_rq = |off: Option<u32>| off.map(|o| scx.wrapping_add(u64::from(o)));
    let at = |m: KickMask| match m {
        KickMask::Kick => in_pcpu(pc.and_then(|p| p.cpus_to_kick)).or(in_rq(rq.cpus_to_kick)),
        KickMask::KickIfIdle => {
            in_pcpu(pc.and_then(|p| p.cpus_to_kick_if_idle)).or(in_rq(rq.cpus_to_kick_if_idle))
        }
        KickMask::Preempt => {
            in_pcpu(pc.and_then(|p| p.cpus_to_preempt)).or(in_rq(rq.cpus_to_preempt))
        }
        KickMask::Wait => in_pcpu(pc.and_then(|p| p.cpus_to_wait)).or(in_rq(rq.cpus_to_wait)),
        KickMask::Sync => in_rq(rq.cpus_to_sync),
    };
    let words = (cx.target.nr_cpus.div_ceil(64) as usize).clamp(1, KICK_WORDS);
    for (i, m) in KickMask::ALL.into_iter().enumerate() {
        let (Some(member), Some(slot)) = (at(m), out.words.get_mut(i)) else {
            continue;
        };
        // `cpumask_var_t` is a pointer with CONFIG_CPUMASK_OFFSTACK, the
        // bitmap itself otherwise.
        let bitmap = match cx.target.consts.cpumask_ptr {
            true => match tr.read_virt_pod::<u64, _>(cx.mem, member) {
                Ok(p) if p != 0 => p,
                _ => continue,
            },
            false => member,
        };
        let dst = slot.get_mut(..words).unwrap_or_default().as_mut_bytes();
        if tr.read_virt(cx.mem, bitmap, dst).is_ok() {
            out.read |= 1 << i;
        }
    }
    out.kick_sync = rq.kick_sync.and_then(|o| {
        tr.read_virt_pod(cx.mem, scx.wrapping_add(u64::from(o)))
            .ok()
    });
    out
}
