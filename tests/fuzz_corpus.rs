//! Replays every fuzz corpus and regression file (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) through the same library entries the `cargo fuzz`
//! targets call, without the sanitizer build: a parser that panics on an input the
//! fuzzer once found fails `cargo test`.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::path::Path;

#[test]
fn every_corpus_and_regression_input_is_handled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (target, entry) in portcullis::fuzz::TARGETS {
        let source = root.join("fuzz_targets").join(format!("{target}.rs"));
        assert!(source.is_file(), "no fuzz target {}", source.display());
        let mut replayed = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(files) = std::fs::read_dir(root.join(kind).join(target)) else {
                continue;
            };
            for file in files {
                let path = file.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| entry(&bytes));
                assert!(outcome.is_ok(), "{target} panicked on {}", path.display());
                replayed += 1;
            }
        }
        assert!(replayed > 0, "no corpus for fuzz target {target}");
        println!("{target}: {replayed} inputs");
    }
}
