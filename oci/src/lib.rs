//! portcullis-oci: the OCI distribution domain, one type per notion, shared by the
//! bundled store (`portcullis-storage`), the gateway, the policy engine and the CLI.
//!
//! - [`names`]: the spec's grammars (repository names, tags) and the [`Digest`] and
//!   [`Reference`] (tag or digest) types.
//! - [`route`]: a `/v2/…` path parsed into the distribution API endpoint it names.
//! - [`errcode`]: the OCI error-code table and the `{"errors":[…]}` body.
//! - [`json`]: the nesting-depth limit of JSON documents.
//!
//! Pure: no I/O, nothing async.

pub mod errcode;
pub mod json;
pub mod names;
pub mod route;

pub use errcode::{ErrorCode, OciError};
pub use names::{Digest, DigestError, Reference, is_valid_repository_name, is_valid_tag};
pub use route::{Route, RouteError};
