//! Arbitrary bytes as raw BTF or an ELF carrying `.BTF`: never a panic.
#![no_main]

use ktstr_walker::kernel::btf::KernelBtf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Raw BTF with the magic forced, so the parser's inner paths are reached.
    let mut raw = data.to_vec();
    if raw.len() >= 2 {
        raw[0] = 0x9f;
        raw[1] = 0xeb;
    }
    for bytes in [data, &raw[..]] {
        if let Ok(btf) = KernelBtf::from_bytes(bytes, "fuzz") {
            let layout = btf.layout();
            let _ = layout.missing_groups().count();
            let _ = btf.layout_report();
            let _ = btf.percpu_var_offset("runqueues");
            let _ = btf.enum_value(Some("scx_exit_kind"), "SCX_EXIT_ERROR");
        }
    }
});
