//! Content trust: TUF metadata as Notary v1 implements it, validated, persisted (redb or
//! PostgreSQL)
//! and served to the gateway's Notary API (`gateway::trust_api`, the only HTTP side).
//!
//! - [`naming`]: roles, metadata references and GUNs: the names the HTTP side parses.
//! - [`canonical`]: OLPC canonical JSON, the bytes every signature covers.
//! - [`keys`]: TUF public keys, key ids, signature verification, root certificate rules.
//! - [`metadata`]: the signed envelope and the four role bodies, hashes, thresholds.
//! - [`validate`]: notary-server's update validation, snapshot/timestamp generation and refresh.
//! - [`signer`]: the server-held timestamp/snapshot keys.
//! - [`store`]: persistence in redb (current files, history, changefeed, server keys).
//! - [`pg`]: the same in the control-plane PostgreSQL database, shared by gateways.
//! - [`service`]: the trust service the Notary API and the signed-only views call.

pub mod canonical;
pub mod kek;
pub mod keys;
pub mod metadata;
pub mod naming;
pub mod pg;
pub mod service;
pub mod signer;
pub mod store;
pub mod validate;

pub use keys::{KeyError, KeyType, PublicKey};
pub use naming::{InvalidRole, MetadataRef, Role, gun_repository};
pub use signer::{KeyAlgorithm, ServerKey};
pub use validate::{
    SignedTarget, TrustState, UpdateError, refresh, signed_targets, validate_update,
};
