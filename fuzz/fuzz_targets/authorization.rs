#![no_main]
//! Thin wrapper: the library's `portcullis::fuzz::authorization` entry.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzz::authorization(data));
