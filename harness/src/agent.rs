//! The guest agent, embedded: built static by `build.rs` from the
//! workspace's `agent/` crate, written into every initramfs as `/init`.

pub use ktstr_agent::proto;

/// The static `ktstr-agent` executable.
pub const AGENT: &[u8] = include_bytes!(env!("KTSTR_AGENT_PATH"));
