#![no_main]
//! Thin wrapper: the library's `portcullis::fuzz::canonical_json` entry.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzz::canonical_json(data));
