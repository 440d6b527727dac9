//! The driver end to end on the one target that needs no workspace binary: a tiny run
//! against docker-registry 2.8.2 (seconds, not load) that must push the image, measure
//! every phase without errors, and write the report files.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::process::Command;

#[test]
fn a_tiny_run_against_docker_registry_writes_the_report() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis-load"))
        .args([
            "run",
            "--target",
            "registry",
            "--seconds",
            "0.2",
            "--warmup",
            "0",
            "--large-mib",
            "1",
            "--chunk-mib",
            "1",
            "--push-rounds",
            "1",
            "--connections",
            "2",
            "--out",
        ])
        .arg(out.path())
        .output()
        .expect("the driver starts");
    assert!(
        output.status.success(),
        "driver failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json")).unwrap()).unwrap();
    let measurements = json["measurements"].as_array().unwrap();
    let tests: Vec<&str> = measurements
        .iter()
        .map(|m| m["test"].as_str().unwrap())
        .collect();
    for expected in [
        "manifest GET",
        "manifest HEAD",
        "wrk manifest GET",
        "ab -k manifest HEAD",
        "4 KiB blob GET",
        "1 MiB blob GET",
        "1 MiB blob push monolithic",
        "1 MiB blob push chunked (1 MiB PATCHes)",
        "peak RSS docker-registry",
    ] {
        assert!(
            tests.contains(&expected),
            "{expected} missing from {tests:?}"
        );
    }
    for m in measurements {
        assert_eq!(m["errors"], 0, "{m}");
        assert!(m["value"].as_f64().unwrap() > 0.0, "{m}");
    }
    let md = std::fs::read_to_string(out.path().join("RESULTS.md")).unwrap();
    assert!(md.contains("| registry |"), "{md}");
    assert!(
        std::fs::read(out.path().join("results.png"))
            .unwrap()
            .starts_with(b"\x89PNG")
    );
}
