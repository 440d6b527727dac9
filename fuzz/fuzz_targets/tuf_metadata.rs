#![no_main]
//! Thin wrapper: the library's `portcullis::fuzz::tuf_metadata` entry.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzz::tuf_metadata(data));
