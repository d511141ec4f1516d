//! Kernel virtual -> guest physical translation (placeholder, being written).

/// Translates x86-64 kernel virtual addresses to guest-physical ones.
#[derive(Debug, Default)]
pub struct Translator;
