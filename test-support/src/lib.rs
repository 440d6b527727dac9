//! portcullis-test-support: what the integration tests of the workspace share, used only
//! as a dev-dependency.
//!
//! - [`gateway`]: the `portcullis` binary (`serve` on a free loopback port, the CLI);
//!   [`trust`]: a TLS gateway with content trust, the notary CLI and a TUF signer;
//!   [`walkthrough`]: the token walkthrough replayed with docker.
//! - [`backend`]: the storage a gateway or store runs on (local, or S3 + PostgreSQL),
//!   and [`backend_matrix!`] to run a test on both.
//! - [`store`]: the `portcullis-storage` binary; [`registry`]: Debian's `docker-registry`
//!   (distribution), the reference and upstream.
//! - [`seaweedfs`]: a real S3 server (SeaweedFS), one per test binary, a prefix per test.
//! - [`docker`]: a docker engine and CLI handles with private configs.
//! - [`oci`]: distribution-API client calls and manifest builders; [`image`]: test images
//!   (pseudo-random content, tar layers, indexes, OCI image layouts, consistency checks);
//!   [`content`]: the small one-layer image the gateway tests push.
//! - [`postgres`]: a PostgreSQL 15 server (one per test binary), a database per test.
//!
//! - [`chaos`]: the crash campaign (writes, `kill -9`, fsck, restart, read-back).
//! - [`cluster`]: three gateways on one PostgreSQL and S3 behind HAProxy, and a
//!   sustained docker push and pull load through it.
//!
//! Helpers panic on failure: a failed step fails the test that called it.

pub mod backend;
pub mod chaos;
pub mod cluster;
pub mod content;
pub mod docker;
pub mod gateway;
pub mod image;
pub mod oci;
pub mod postgres;
pub mod registry;
pub mod seaweedfs;
pub mod store;
pub mod trust;
pub mod walkthrough;

use std::path::PathBuf;
use std::time::Duration;

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A blocking HTTP client that does not follow redirects (tests inspect `Location`).
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// `skopeo --insecure-policy args...` (no host signature policy applies to a loopback
/// test registry).
pub fn skopeo(args: &[&str]) -> std::process::Output {
    std::process::Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("run skopeo")
}

/// [`skopeo`], asserting success; its stdout.
pub fn skopeo_ok(args: &[&str]) -> String {
    let out = skopeo(args);
    assert!(
        out.status.success(),
        "skopeo {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// [`skopeo`], asserting failure; its stderr.
pub fn skopeo_fails(args: &[&str]) -> String {
    let out = skopeo(args);
    assert!(
        !out.status.success(),
        "skopeo {} succeeded but should fail:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The path of the workspace binary `name`. Cargo gives `CARGO_BIN_EXE_<name>` only to the
/// test crates of the binary's own package, at compile time; this crate is compiled once
/// for all, so it looks next to the running test: tests live in `target/<profile>/deps/`,
/// binaries in `target/<profile>/`, and cargo builds a package's binaries before its tests.
pub fn cargo_bin(name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("path of the running test");
    let mut dir = exe
        .parent()
        .expect("test executable directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: build the workspace binaries first (cargo test --workspace)",
        path.display()
    );
    path
}

/// [`cargo_bin`] as a `&'static str`, found once per test process.
fn static_bin(cell: &'static std::sync::OnceLock<String>, name: &str) -> &'static str {
    cell.get_or_init(|| {
        cargo_bin(name)
            .into_os_string()
            .into_string()
            .expect("binary path is UTF-8")
    })
}
