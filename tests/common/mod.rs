//! What the gateway's test crates share, from `portcullis-test-support`: each test crate
//! declares `mod common;` and reaches the gateway harness as `common::…` and the other
//! helper modules as `common::content`, `common::docker`, ….
#![allow(unused_imports, reason = "each test crate uses a different part")]

pub use portcullis_test_support::gateway::*;
pub use portcullis_test_support::{backend, content, docker, registry, trust, walkthrough};
