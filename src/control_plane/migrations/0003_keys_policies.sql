-- Token-signing keys (gateway::signing_keys): the private key sealed by the trust
-- key-encryption key; a retired key still verifies until its tokens expired.
CREATE TABLE signing_keys (
    kid text PRIMARY KEY,
    created_at bigint NOT NULL,
    retired_at bigint,
    sealed_key bytea NOT NULL
);

-- Pushed policy sets (`portcullis policy push`), one row per version; the highest
-- version is in force. `files` is a JSON array of {"name", "text"} sorted by name.
CREATE TABLE policy_versions (
    version bigint PRIMARY KEY,
    created_at bigint NOT NULL,
    author text NOT NULL,
    message text,
    sha256 text NOT NULL,
    rollback_of bigint,
    files jsonb NOT NULL
);
