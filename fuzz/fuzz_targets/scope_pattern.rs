#![no_main]
//! Thin wrapper: the library's `portcullis::fuzz::scope_pattern` entry.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzz::scope_pattern(data));
