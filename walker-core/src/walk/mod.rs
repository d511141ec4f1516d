//! Bounded, cycle-safe traversals of kernel linked structures (being written).
