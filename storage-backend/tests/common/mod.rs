//! What the storage test crates share, from `portcullis-test-support`: each test crate
//! declares `mod common;` and reaches the `portcullis-storage` harness as `common::Server`
//! and the other helper modules as `common::oci`, `common::image`, ….
#![allow(unused_imports, reason = "each test crate uses a different part")]

pub use portcullis_test_support::store::*;
pub use portcullis_test_support::{client, digest, docker, image, oci, registry};
