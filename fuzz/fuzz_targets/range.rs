#![no_main]
//! Thin wrapper: the library's `portcullis::fuzz::range` entry.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzz::range(data));
