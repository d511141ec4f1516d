//! Freeze and thaw: every vCPU parked with its registers recorded, the
//! caller's capture run on the frozen memory, kvmclock kept from seeing
//! the pause, the vCPUs released on every path out.

use std::time::{Duration, Instant};

use kvm_bindings::kvm_clock_data;

use crate::vm::{Vm, VmError};
use crate::vstate::control::Control;
use crate::vstate::memory::VmMemory;
use crate::vstate::vcpu::VcpuState;

/// Default time a freeze waits for every vCPU to park.
pub const DEFAULT_PARK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a freeze saw and cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FreezeReport {
    /// Every vCPU that parked, by index.
    pub vcpus: Vec<VcpuState>,
    /// vCPUs that did not park within the timeout: the capture ran with
    /// them still going, so the report is degraded.
    pub not_parked: Vec<u32>,
    /// From the first kick until every vCPU had parked (or the timeout).
    pub park: Duration,
    /// Time spent in the capture.
    pub capture: Duration,
    /// From the end of the capture until the vCPUs were released (kvmclock
    /// restored, threads woken).
    pub resume: Duration,
    /// The pause window: from the first kick until the vCPUs were released.
    pub pause: Duration,
    /// Whether kvmclock was saved and restored across the freeze.
    pub clock_restored: bool,
}

impl FreezeReport {
    /// Whether some vCPU did not park.
    pub fn degraded(&self) -> bool {
        !self.not_parked.is_empty()
    }
}

/// The frozen VM, as the capture sees it.
#[derive(Debug)]
pub struct Frozen<'a> {
    /// Guest memory.
    pub mem: &'a VmMemory,
    /// Registers of the parked vCPUs.
    pub vcpus: &'a [VcpuState],
    /// vCPUs that did not park.
    pub not_parked: &'a [u32],
}

/// Thaws on every path out of a freeze, a panicking capture included.
struct Thaw<'a>(&'a Control);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        self.0.set_freezing(false);
        self.0.lock().frozen = false;
        self.0.notify();
    }
}

impl Vm {
    /// Freeze every vCPU, run `capture` on the frozen VM, thaw. The VM is
    /// never left frozen: vCPUs that do not park within the park timeout
    /// are named in [`FreezeReport::not_parked`], and the thaw happens even
    /// if `capture` panics.
    pub fn freeze<R>(
        &self,
        capture: impl FnOnce(&Frozen<'_>) -> R,
    ) -> Result<(FreezeReport, R), VmError> {
        let _one_at_a_time = self.freeze_lock.lock().unwrap_or_else(|e| e.into_inner());
        let ctl = &*self.control;
        let t0 = Instant::now();
        {
            let mut s = ctl.lock();
            if let Some(e) = &s.exit {
                return Err(VmError::NotRunning(e.clone()));
            }
            s.epoch += 1;
            s.frozen = true;
            s.parked.iter_mut().for_each(|p| *p = None);
        }
        ctl.set_freezing(true);
        let thaw = Thaw(ctl);
        ctl.kick_all();

        let deadline = t0 + self.park_timeout;
        let mut s = ctl.lock();
        loop {
            let now = Instant::now();
            if s.all_parked() || now >= deadline || s.exit.is_some() {
                break;
            }
            s = ctl.wait(s, deadline - now);
        }
        if let Some(e) = &s.exit {
            return Err(VmError::NotRunning(e.clone()));
        }
        let park = t0.elapsed();
        let vcpus: Vec<VcpuState> = s.parked.iter().flatten().copied().collect();
        let not_parked: Vec<u32> = (0u32..)
            .zip(&s.parked)
            .filter(|(_, p)| p.is_none())
            .map(|(i, _)| i)
            .collect();
        drop(s);

        let clock = self.vm_fd.get_clock().ok();
        let t_cap = Instant::now();
        let result = capture(&Frozen {
            mem: &self.memory,
            vcpus: &vcpus,
            not_parked: &not_parked,
        });
        let capture_time = t_cap.elapsed();
        let t_resume = Instant::now();
        let clock_restored = clock.is_some_and(|saved| {
            let restore = kvm_clock_data {
                clock: saved.clock,
                ..Default::default()
            };
            self.vm_fd.set_clock(&restore).is_ok()
        });
        drop(thaw);
        Ok((
            FreezeReport {
                vcpus,
                not_parked,
                park,
                capture: capture_time,
                resume: t_resume.elapsed(),
                pause: t0.elapsed(),
                clock_restored,
            },
            result,
        ))
    }
}
