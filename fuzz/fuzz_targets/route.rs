#![no_main]
//! Thin wrapper: the library's `portcullis::fuzz::route` entry.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzz::route(data));
