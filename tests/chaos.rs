//! The crash campaign (`portcullis_test_support::chaos`): writes of every kind, `kill -9`
//! at a random moment, `portcullis fsck` on the crashed data directory, restart, read-back
//! of every acknowledged write. 5 iterations here; `scripts/chaos` runs 100 (the count is
//! `PORTCULLIS_CHAOS_ITERATIONS`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use portcullis_test_support::chaos;

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let iterations = std::env::var("PORTCULLIS_CHAOS_ITERATIONS")
        .ok()
        .map(|n| n.parse().expect("PORTCULLIS_CHAOS_ITERATIONS is a number"))
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let summary = chaos::run(dir.path(), iterations, |i, s| {
        eprintln!(
            "iteration {i}: {} acknowledged writes so far, {:.0?}",
            s.acknowledged, s.elapsed
        );
    });
    println!(
        "crash campaign: {} iterations (kill -9 each), {} acknowledged writes, {} read-back \
         checks, {} lost, fsck clean after every kill, {:.1?}",
        summary.iterations,
        summary.acknowledged,
        summary.checks,
        summary.lost.len(),
        summary.elapsed
    );
    println!("acknowledged by kind: {:?}", summary.by_kind);
    assert_eq!(summary.iterations, iterations);
    assert!(summary.acknowledged > 0, "no write was acknowledged at all");
    assert!(
        summary.lost.is_empty(),
        "lost acknowledged writes:\n{}",
        summary.lost.join("\n")
    );
}
