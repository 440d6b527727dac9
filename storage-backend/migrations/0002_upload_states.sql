-- Schema 2: a blob store's own record of each upload session (the S3 store's multipart
-- upload, parts and SHA-256 state), so any gateway can take a session's next request.
-- Replaced only by compare-and-swap on version; apart from `uploads` because the blob
-- store writes it before the registry records the session.
CREATE TABLE upload_states (
    id text COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL,
    updated_at bigint NOT NULL,
    state bytea NOT NULL
);
