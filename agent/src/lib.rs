//! ktstr's guest agent and the one message format host and guest share.
//!
//! The agent (the `ktstr-agent` binary, statically linked, `/init` in the
//! guest) reports kernel facts, takes a [`Job`](proto::Job) from the
//! initramfs or, when it has none, from the third serial port, starts the
//! scheduler and the workers, and reports back over the second serial
//! port in [`proto`] frames.
#![warn(missing_docs)]

pub mod proto;
