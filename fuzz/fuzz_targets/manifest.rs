#![no_main]
//! Thin wrapper: the library's `portcullis::fuzz::manifest` entry.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzz::manifest(data));
