//! The kernel config parser over arbitrary text: never a panic, every
//! value it reports comes from a `CONFIG_*=` line of the text, and the
//! required-options check agrees with what `get` says.
#![no_main]

use ktstr::kernel::config::{KernelConfig, REQUIRED};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let c = KernelConfig::parse(text, "fuzz");
    for (option, _) in REQUIRED {
        if let Some(v) = c.get(option) {
            let line = format!("{option}=");
            assert!(text.contains(&line), "{option}={v} not in the text");
        }
    }
    let all_y = REQUIRED.iter().all(|(o, _)| c.get(o) == Some("y"));
    assert_eq!(c.check_required().is_ok(), all_y);
});
