//! What the host and the vCPU threads share: the stop and freeze flags,
//! which vCPUs have parked (with their registers) and which still run, why
//! the VM stopped, and the threads to kick out of `KVM_RUN`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::devices::serial::Output;
use crate::vm::ExitReason;
use crate::vstate::vcpu::{VcpuState, kick_signal};

/// The part behind the mutex.
#[derive(Debug)]
pub(crate) struct State {
    /// Bumped by every freeze, so a vCPU parked for one freeze is not
    /// mistaken for parked in the next.
    pub epoch: u64,
    pub frozen: bool,
    pub parked: Vec<Option<VcpuState>>,
    pub running: Vec<bool>,
    pub exit: Option<ExitReason>,
}

impl State {
    /// Every vCPU thread still running has parked.
    pub fn all_parked(&self) -> bool {
        self.parked
            .iter()
            .zip(&self.running)
            .all(|(p, r)| p.is_some() || !r)
    }
}

pub(crate) struct Control {
    state: Mutex<State>,
    cv: Condvar,
    stop: AtomicBool,
    freeze: AtomicBool,
    /// Threads to kick; an entry is cleared before its thread is joined.
    threads: Mutex<Vec<Option<libc::pthread_t>>>,
    /// Outputs whose waiters are woken for good when the VM stops.
    outputs: Vec<Arc<Output>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent across a panic (plain flags).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Control {
    pub fn new(vcpus: usize, outputs: Vec<Arc<Output>>) -> Control {
        Control {
            state: Mutex::new(State {
                epoch: 0,
                frozen: false,
                parked: vec![None; vcpus],
                running: vec![true; vcpus],
                exit: None,
            }),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            freeze: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
            outputs,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Wait for a change, at most `slice`.
    pub fn wait<'a>(&self, g: MutexGuard<'a, State>, slice: Duration) -> MutexGuard<'a, State> {
        self.cv
            .wait_timeout(g, slice)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    pub fn notify(&self) {
        self.cv.notify_all();
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn freezing(&self) -> bool {
        self.freeze.load(Ordering::SeqCst)
    }

    pub fn set_freezing(&self, on: bool) {
        self.freeze.store(on, Ordering::SeqCst);
    }

    pub fn add_thread(&self, t: libc::pthread_t) {
        lock(&self.threads).push(Some(t));
    }

    /// Stop kicking thread `i`: it is about to be joined.
    pub fn forget_thread(&self, i: usize) {
        if let Some(t) = lock(&self.threads).get_mut(i) {
            *t = None;
        }
    }

    pub fn kick_all(&self) {
        for t in lock(&self.threads).iter().flatten() {
            // SAFETY: the thread has not been joined (entries are cleared
            // before joining), so its pthread_t is valid.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    /// Record why the VM stops (the first reason wins) and get every vCPU
    /// out of the guest.
    pub fn request_stop(&self, reason: ExitReason) {
        {
            let mut s = self.lock();
            if s.exit.is_none() {
                tracing::debug!(%reason, "VM stopping");
                s.exit = Some(reason);
            }
            self.stop.store(true, Ordering::SeqCst);
            self.cv.notify_all();
        }
        self.kick_all();
        for o in &self.outputs {
            o.close();
        }
    }

    /// A vCPU thread is done.
    pub fn vcpu_ended(&self, index: u32) {
        let mut s = self.lock();
        if let Some(r) = s.running.get_mut(index as usize) {
            *r = false;
        }
        self.cv.notify_all();
    }
}
