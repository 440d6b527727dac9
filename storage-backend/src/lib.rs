//! portcullis-storage: a complete OCI distribution-spec v1.1 registry.
