#![no_main]
//! Thin wrapper: the library's `portcullis::fuzz::token_query` entry.

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzz::token_query(data));
