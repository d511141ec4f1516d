//! ktstr: the harness users run. CLI, kernel acquisition, backends, reports.
#![warn(missing_docs)]

pub mod cache;
pub mod dump;
pub mod kernel;
