//! ktstr: the harness users run. CLI, kernel acquisition, backends, reports.
#![warn(missing_docs)]

pub mod agent;
pub mod cache;
pub mod channel;
pub mod checks;
pub mod dump;
pub mod gauntlet;
pub mod guest;
pub mod initramfs;
pub mod kernel;
pub mod machine;
pub mod monitor;
pub mod nested;
pub mod profiles;
pub mod run;
pub mod scenario;
pub mod scheduler;
pub mod series;
pub mod session;
pub mod summary;
pub mod testing;
pub mod vm;

/// Declare a scheduler test or a gauntlet (see [`testing::Declared`]).
pub use ktstr_macros::ktstr_test;
