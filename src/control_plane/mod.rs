//! Where the control plane lives: embedded (`control.redb` in the data directory, one
//! process) or PostgreSQL ([`PgControl`]), shared by every gateway. The stores that keep
//! control-plane state (identity, trust, token-signing keys, policies) each have their
//! tables in it; this module owns the connection, the schema and the change listener.

mod pg;

pub use pg::{ControlPlaneError, PgControl};
