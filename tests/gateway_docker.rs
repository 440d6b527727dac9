//! The real docker engine and CLI against `portcullis serve` with its bundled store: the
//! token walkthrough on both backends (local, S3 + PostgreSQL), and revocation (disabled,
//! deleted token) on the next pull.
// Helpers outside #[test] functions may fail loudly too: this whole crate is a test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod common;
use common::walkthrough;

use common::backend::Backend;
use common::{ADMIN_PASSWORD, Server};

fn gateway(dir: &tempfile::TempDir) -> Server {
    Server::start(&dir.path().join("data"), Some(ADMIN_PASSWORD))
}

portcullis_test_support::backend_matrix!(token_walkthrough_with_docker);

fn token_walkthrough_with_docker(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let server = backend.storage().gateway(&dir.path().join("data"), &[]);
    walkthrough::token_walkthrough(&server);
    // The deleted repository left the catalog (the upstream test cannot ask this of
    // distribution, which keeps emptied repositories listed).
    let catalog = common::cli_json(&server, &["repository", "list"]);
    assert_eq!(
        catalog,
        serde_json::json!(["samples/hello-world"]),
        "catalog after the repository delete"
    );
}

#[test]
fn disabled_and_deleted_tokens_fail_the_next_docker_pull() {
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(&dir);
    walkthrough::revocation_walkthrough(&server);
}
