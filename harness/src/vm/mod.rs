//! The VMs the harness runs guests in: one [`GuestVm`] trait
//! ([`backend`]) with two implementations, QEMU ([`qemu`]) and the
//! built-in KVM VMM ([`kvm`]), which depend on the trait and not on each
//! other; [`start`] picks one.

pub mod backend;
pub mod kvm;
pub mod qemu;
pub mod qmp;

pub use backend::{Backend, BootSpec, GuestVm, PauseWindow, SnapshotSpec, VmDir, VmError, vm_dir};

/// Boot `spec` on `backend` (resolved for this host); `dir` holds the
/// VM's files and goes with it.
pub fn start(backend: Backend, spec: &BootSpec, dir: VmDir) -> Result<Box<dyn GuestVm>, VmError> {
    Ok(match backend.resolve() {
        Backend::Kvm => Box::new(kvm::KvmVm::start(spec, dir)?),
        _ => Box::new(qemu::QemuVm::start(spec, dir)?),
    })
}

/// Stop every VM this process started, whatever runs it, and remove its
/// files: for a signal handler (Ctrl-C, SIGTERM) about to exit the
/// process, when no destructor will run.
pub fn kill_all() {
    qemu::kill_all();
    backend::remove_live_dirs();
}
