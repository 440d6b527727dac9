//! Portcullis: a container registry gateway.
//!
//! Where things live:
//! - [`identity`]: tokens, scope maps, secrets, the control-plane store, the admin account.
//! - [`policy`]: the Cedar schema, scope-map compilation, decisions, policy files and tools.
//! - [`admin`]: the `/admin/v1` HTTP API over the identity store.
//! - [`gateway`]: the data plane: classify, authenticate, decide (Cedar), forward.
//! - [`cli`]: the `portcullis` command line (server and admin client).
//! - [`fsck`]: the offline consistency check of a data directory (`portcullis fsck`).
//! - [`audit`]: the audit stream (decisions, admin and token-endpoint actions).
//! - [`fuzz`]: one entry per untrusted-bytes parser, for `fuzz/` and its corpus replay.
//! - [`trust`]: content trust (Notary v1 / TUF) data, validation and storage.
//! - The OCI domain types (names, digests, references, routes, error codes) are the
//!   `portcullis_oci` crate (`oci/`); the bundled OCI registry is the
//!   `portcullis_storage` crate (`storage-backend/`). `ARCHITECTURE.md` has the map.

pub mod admin;
pub mod audit;
pub mod cli;
pub mod control_plane;
pub mod fsck;
pub mod fuzz;
pub mod gateway;
pub mod identity;
pub mod policy;
pub mod signatures;
pub mod trust;
