//! ktstr's guest agent and the one message format host and guest share.
//!
//! The agent (the `ktstr-agent` binary, statically linked, `/init` in the
//! guest) reads a [`Job`](proto::Job) from the initramfs, reports kernel
//! facts, starts the scheduler and the workers, and reports back over the
//! second serial port in [`proto`] frames.
#![warn(missing_docs)]

pub mod proto;
