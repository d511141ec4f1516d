//! Bounded, cycle-safe traversals of kernel linked structures, with no
//! heap: every walk has a step bound, detects cycles with Brent's algorithm
//! in O(1) memory, and reports how it ended instead of hanging or guessing.

pub mod list;
pub mod rhashtable;

#[cfg(test)]
mod test_mem;

pub use list::{read_link, walk_list, walk_list_with};
pub use rhashtable::{HashLimits, walk_rhashtable};

use crate::translate::TranslateError;

/// What the visitor wants done with the entry it was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Count it and go on.
    Continue,
    /// Not a real entry (an iterator cursor): skip it, go on.
    Skip,
    /// End the walk here (e.g. the caller's buffer is full).
    Stop,
}

/// Why a walk could not follow a pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// A NULL pointer where a list never has one.
    Null,
    /// A pointer that is not 8-byte aligned.
    Misaligned,
    /// The pointer's target could not be read.
    Unreadable(TranslateError),
    /// A structural value is impossible (e.g. a bucket count that is not a
    /// power of two, or larger than the caller allows).
    BadValue(u64),
    /// A nested bucket table (`bucket_table.nest != 0`), which this walker
    /// does not follow.
    Nested,
}

/// A pointer a walk could not follow, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt {
    /// Address of the bad pointer's value (or of the entry holding it).
    pub at: u64,
    /// Why.
    pub why: Broken,
}

/// How a walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalkSummary {
    /// Entries the visitor counted ([`Step::Continue`]).
    pub visited: u32,
    /// Entries the visitor skipped ([`Step::Skip`]).
    pub skipped: u32,
    /// The step bound ended the walk before its natural end.
    pub truncated: bool,
    /// The visitor asked to stop.
    pub stopped: bool,
    /// A cycle not passing through the start was detected.
    pub cycle: bool,
    /// The first pointer that could not be followed.
    pub corrupt: Option<Corrupt>,
    /// List nodes whose `prev` did not point back at their predecessor
    /// (a freeze mid-update can cause this; it is reported, not fatal).
    pub bad_prev: u32,
}

impl WalkSummary {
    /// Whether the walk saw everything there was.
    pub fn complete(&self) -> bool {
        !self.truncated && !self.stopped && !self.cycle && self.corrupt.is_none()
    }
}

/// Brent's cycle detector over a sequence of addresses: O(1) memory, finds
/// any cycle within a few times its length plus the tail.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Brent {
    tortoise: u64,
    power: u32,
    lam: u32,
}

impl Brent {
    pub(crate) fn new(start: u64) -> Self {
        Self {
            tortoise: start,
            power: 1,
            lam: 0,
        }
    }

    /// Feed the next address; true when it closes a cycle.
    pub(crate) fn step(&mut self, next: u64) -> bool {
        if next == self.tortoise {
            return true;
        }
        self.lam += 1;
        if self.lam == self.power {
            self.tortoise = next;
            self.power = self.power.saturating_mul(2);
            self.lam = 0;
        }
        false
    }
}
