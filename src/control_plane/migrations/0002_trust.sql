-- Content-trust data shared by every gateway (src/trust/pg.rs): TUF files by (GUN, role,
-- version), each role's current version, the server-held private keys (sealed with the
-- key-encryption key), the key-encryption key's parameters, the changefeed and the
-- registry's content-trust switch.

CREATE TABLE trust_files (
    gun text NOT NULL,
    role text NOT NULL,
    version bigint NOT NULL,
    -- unix seconds
    stored_at bigint NOT NULL,
    -- hex sha256 of bytes, for consistent (checksum) fetches
    sha256 text NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (gun, role, version)
);
CREATE INDEX trust_files_sha256 ON trust_files (gun, sha256);

CREATE TABLE trust_current (
    gun text NOT NULL,
    role text NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (gun, role),
    FOREIGN KEY (gun, role, version) REFERENCES trust_files (gun, role, version)
        ON DELETE CASCADE
);
-- The GUNs of a repository (what follows the host), for the signed-only views.
CREATE INDEX trust_current_repository ON trust_current ((substr(gun, strpos(gun, '/') + 1)));

CREATE TABLE trust_server_keys (
    gun text NOT NULL,
    role text NOT NULL,
    key_id text NOT NULL,
    -- creation order within (gun, role): the newest pending keys are the ones kept
    sequence bigint NOT NULL,
    sealed bytea NOT NULL,
    PRIMARY KEY (gun, role, key_id)
);

-- `salt` and `check`: the key-encryption key's derivation salt and a value it sealed.
CREATE TABLE trust_kek (
    name text PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE trust_changes (
    id bigint PRIMARY KEY,
    created_at text NOT NULL,
    gun text NOT NULL,
    version bigint NOT NULL,
    sha256 text NOT NULL,
    category text NOT NULL
);

-- One row: the content-trust switch. Writers lock it FOR SHARE, so the switch cannot
-- flip (and a disable delete everything) under them; the switch takes it FOR UPDATE.
CREATE TABLE trust_meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    content_trust boolean NOT NULL
);
INSERT INTO trust_meta (content_trust) VALUES (false);

-- One row: the last change id handed out. Taken FOR UPDATE by a write recording a
-- change, until it commits, so change ids become visible in order (no gaps a reader
-- paging "after id N" could step over).
CREATE TABLE trust_change_counter (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_change bigint NOT NULL
);
INSERT INTO trust_change_counter (last_change) VALUES (0);
