//! One running VM, whatever runs it, and the guest agent's messages. A
//! [`Machine`] keeps every message the agent sent, in order, and hands each
//! to the first wait that asks for it: a message that arrives early (before
//! anyone waits for it), together with others, or split over reads is
//! neither lost nor taken twice.

use std::path::Path;
use std::time::{Duration, Instant};

use ktstr_walker::GuestMem;
use ktstr_walker::capture::vcpus::VcpuState;
use ktstr_walker::translate::PageTableRoot;

use crate::agent::proto::Msg;
use crate::vm::{Backend, GuestVm, PauseWindow, VmError};

/// How often a wait polls the agent channel.
const POLL: Duration = Duration::from_millis(20);
/// Most agent messages one run keeps: the agent sends about ten.
const MAX_MESSAGES: usize = 10_000;

/// A running VM and what its agent said so far.
pub struct Machine {
    vm: Box<dyn GuestVm>,
    /// Every agent message so far, in order.
    pub messages: Vec<Msg>,
    /// Which of [`Self::messages`] a wait has taken.
    taken: Vec<bool>,
}

impl Machine {
    /// Follow `vm`.
    pub fn new(vm: Box<dyn GuestVm>) -> Machine {
        Machine {
            vm,
            messages: Vec::new(),
            taken: Vec::new(),
        }
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.vm.backend()
    }

    /// Whether the guest started from a snapshot of its boot.
    pub fn restored(&self) -> bool {
        self.vm.restored()
    }

    /// The last lines of the guest console.
    pub fn console_tail(&self) -> String {
        self.vm.console_tail()
    }

    /// The guest console so far.
    pub fn console(&self) -> String {
        self.vm.console()
    }

    /// Read what the agent sent since the last look.
    fn receive(&mut self) -> Result<(), VmError> {
        let new = self.vm.poll_agent()?;
        if self.messages.len() + new.len() > MAX_MESSAGES {
            self.vm.kill();
            return Err(VmError::AgentFlood(MAX_MESSAGES));
        }
        self.taken.extend(new.iter().map(|_| false));
        self.messages.extend(new);
        Ok(())
    }

    /// Take the oldest message not yet taken that `pred` accepts.
    fn take(&mut self, pred: &mut impl FnMut(&Msg) -> bool) -> Option<Msg> {
        let i = (0..self.messages.len()).find(|&i| !self.taken[i] && pred(&self.messages[i]))?;
        self.taken[i] = true;
        Some(self.messages[i].clone())
    }

    /// Wait up to `timeout` for an agent message `pred` accepts and take
    /// it. The VM ending first, or the timeout (which kills it), is an
    /// error carrying the console's tail.
    pub fn wait_for(
        &mut self,
        waiting: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Msg) -> bool,
    ) -> Result<Msg, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.poll_for(waiting, &mut pred)? {
                return Ok(m);
            }
            if Instant::now() >= deadline {
                self.vm.kill();
                return Err(VmError::Timeout {
                    waiting: waiting.to_string(),
                    secs: timeout.as_secs(),
                    console: self.console_tail(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Take a message `pred` accepts if one has arrived, without waiting;
    /// the VM having ended without one is an error.
    pub fn poll_for(
        &mut self,
        waiting: &str,
        mut pred: impl FnMut(&Msg) -> bool,
    ) -> Result<Option<Msg>, VmError> {
        // Whether it ended is asked first, so lines written just before the
        // end are still read below.
        let exited = self.vm.exited(waiting);
        self.receive()?;
        if let Some(m) = self.take(&mut pred) {
            return Ok(Some(m));
        }
        match exited {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// The first vCPU's page-table root (the guest keeps running, or runs
    /// again at once).
    pub fn root(&mut self) -> Result<PageTableRoot, VmError> {
        self.vm.root()
    }

    /// `f` over guest memory while the guest runs.
    pub fn with_live_mem<R>(&self, f: impl FnOnce(&dyn GuestMem) -> R) -> R {
        f(self.vm.live_mem())
    }

    /// Freeze every vCPU, run `f` over guest memory and the vCPUs'
    /// registers, write an ELF core to `core` when asked (QEMU only),
    /// thaw; returns `f`'s result and where the pause's time went.
    pub fn frozen<R>(
        &mut self,
        core: Option<&Path>,
        f: impl FnOnce(&dyn GuestMem, &[VcpuState]) -> R,
    ) -> Result<(R, PauseWindow), VmError> {
        let mut f = Some(f);
        let mut out = None;
        let pause = self.vm.frozen(core, &mut |mem, vcpus| {
            if let Some(f) = f.take() {
                out = Some(f(mem, vcpus));
            }
        })?;
        let out = out.ok_or_else(|| {
            VmError::Unsupported(format!(
                "the {} backend froze the guest but ran no capture",
                self.vm.backend()
            ))
        })?;
        Ok((out, pause))
    }

    /// Wait for the guest to power off, then read what the agent sent last.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(), VmError> {
        self.vm.wait_exit(timeout)?;
        self.receive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    use crate::agent::proto::FrameReader;
    use crate::agent::proto::{self, SchedExtState};
    use ktstr_walker::mem::SliceMem;

    /// No guest memory at all.
    static EMPTY: SliceMem<'static> = SliceMem::new(0, &[]);

    /// A VM whose agent channel delivers scripted chunks of bytes, one per
    /// poll, through the real frame decoder; it "ends" once `ended` is set.
    struct ScriptedVm {
        chunks: VecDeque<Vec<u8>>,
        log: FrameReader,
        ended: bool,
    }

    impl ScriptedVm {
        fn new(chunks: Vec<Vec<u8>>) -> Box<ScriptedVm> {
            Box::new(ScriptedVm {
                chunks: chunks.into(),
                log: FrameReader::new(),
                ended: false,
            })
        }
    }

    impl GuestVm for ScriptedVm {
        fn backend(&self) -> Backend {
            Backend::Qemu
        }
        fn poll_agent(&mut self) -> Result<Vec<Msg>, VmError> {
            let chunk = self.chunks.pop_front().unwrap_or_default();
            Ok(self.log.feed(&chunk)?)
        }
        fn exited(&mut self, waiting: &str) -> Option<VmError> {
            self.ended.then(|| VmError::Exited {
                status: "ended".into(),
                waiting: waiting.into(),
                stderr: String::new(),
                console: String::new(),
            })
        }
        fn kill(&mut self) {
            self.ended = true;
        }
        fn console(&self) -> String {
            "console".into()
        }
        fn root(&mut self) -> Result<PageTableRoot, VmError> {
            Err(VmError::Unsupported("scripted".into()))
        }
        fn live_mem(&self) -> &dyn GuestMem {
            &EMPTY
        }
        fn frozen(
            &mut self,
            _core: Option<&Path>,
            capture: &mut dyn FnMut(&dyn GuestMem, &[VcpuState]),
        ) -> Result<PauseWindow, VmError> {
            capture(&EMPTY, &[]);
            Ok(PauseWindow::new(
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
            ))
        }
        fn wait_exit(&mut self, _timeout: Duration) -> Result<(), VmError> {
            Ok(())
        }
    }

    fn frame(m: &Msg) -> Vec<u8> {
        proto::encode(m).into_bytes()
    }

    fn error(text: &str) -> Msg {
        Msg::Error {
            message: text.into(),
        }
    }

    fn running() -> Msg {
        Msg::Running {
            workers: Vec::new(),
            sched_ext: SchedExtState {
                state: proto::ScxState::Enabled,
                ops: None,
            },
        }
    }

    fn is_error(m: &Msg) -> bool {
        matches!(m, Msg::Error { .. })
    }

    #[test]
    fn messages_arriving_together_or_early_each_reach_their_wait() {
        // Two frames in one read, then a third split over two reads.
        let mut both = frame(&error("first"));
        both.extend(frame(&running()));
        let third = frame(&error("third"));
        let (a, b) = third.split_at(7);
        let mut m = Machine::new(ScriptedVm::new(vec![both, a.to_vec(), b.to_vec()]));
        let long = Duration::from_secs(5);
        // Running arrived with the first error, before anyone waited for it.
        assert_eq!(m.wait_for("first", long, is_error).unwrap(), error("first"));
        assert_eq!(
            m.wait_for("running", long, |m| matches!(m, Msg::Running { .. }))
                .unwrap(),
            running()
        );
        // Taken messages are not handed out again; the split one arrives.
        assert_eq!(m.wait_for("third", long, is_error).unwrap(), error("third"));
        assert_eq!(m.messages.len(), 3, "every message is kept in order");
    }

    #[test]
    fn a_wait_ends_with_the_vm_or_its_deadline() {
        let mut m = Machine::new(ScriptedVm::new(vec![frame(&running())]));
        let err = m
            .wait_for("an error", Duration::from_millis(60), is_error)
            .unwrap_err();
        assert!(matches!(err, VmError::Timeout { .. }), "{err}");
        // The timeout killed the VM: the next wait says it ended.
        let err = m.poll_for("more", is_error).unwrap_err();
        assert!(matches!(err, VmError::Exited { .. }), "{err}");
        // What it said before is still there to take.
        assert!(
            m.poll_for("running", |m| matches!(m, Msg::Running { .. }))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_flood_of_messages_ends_the_run() {
        let flood: Vec<u8> = (0..MAX_MESSAGES + 1)
            .flat_map(|_| frame(&running()))
            .collect();
        let mut m = Machine::new(ScriptedVm::new(vec![flood]));
        let err = m.poll_for("anything", is_error).unwrap_err();
        assert!(matches!(err, VmError::AgentFlood(MAX_MESSAGES)), "{err}");
    }

    #[test]
    fn frozen_hands_back_the_capture_and_the_pause() {
        let mut m = Machine::new(ScriptedVm::new(Vec::new()));
        let (n, pause) = m
            .frozen(None, |mem, _| mem.read(0, &mut [0u8; 1]).is_err())
            .unwrap();
        assert!(n, "reading an empty memory fails");
        assert_eq!(pause.total_us, 0);
    }
}
