//! The admin HTTP API (`/admin/v1/...`): tokens, credentials and scope maps over the
//! identity store, admin-authenticated, with an OpenAPI document.
