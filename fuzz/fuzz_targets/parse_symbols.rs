//! Arbitrary bytes as kallsyms text, System.map text and an ELF `.symtab`:
//! never a panic.
#![no_main]

use ktstr_walker::kernel::ksyms::{SymbolTable, kaslr_slide, runtime_symbols};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let kallsyms = SymbolTable::parse_kallsyms(data, "fuzz kallsyms");
    let map = SymbolTable::parse_system_map(data, "fuzz System.map");
    let elf = SymbolTable::from_elf(data, "fuzz vmlinux");
    for t in [&kallsyms, &map, &elf].into_iter().flatten() {
        let st = t.stats();
        assert!(st.symbols <= st.lines);
        assert_eq!(t.len(), st.symbols);
        let _ = t.symbols();
        let _ = t.require("_text");
    }
    if let (Ok(link), Ok(run)) = (&elf, &kallsyms) {
        let _ = kaslr_slide(link, run);
        let _ = runtime_symbols(link, run);
    }
});
