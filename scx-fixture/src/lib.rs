//! The constants `scx_fixture`'s BPF scheduler, its loader and the tests
//! that read its DSQs agree on, generated from `src/bpf/intf.h`.

/// DSQ ids and modes (`FIXTURE_*`).
pub mod intf {
    #![allow(missing_docs, non_upper_case_globals)]
    include!(concat!(env!("OUT_DIR"), "/bpf_intf.rs"));
}
