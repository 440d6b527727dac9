-- The identity records (tokens, scope maps, repository attributes, signature trust, the
-- admin password record) of the identity store's PostgreSQL backend. A record's value is
-- its JSON; NULL is a deletion kept as a tombstone, so "changed since version v" also
-- returns deletions. Every write bumps the one row of identity_version, locked FOR UPDATE
-- by writers (that lock serialises every gateway's writes).
CREATE TABLE identity_records (
    kind text NOT NULL,
    key text NOT NULL,
    value bytea,
    version bigint NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX identity_records_version ON identity_records (version);

CREATE TABLE identity_version (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version bigint NOT NULL
);
INSERT INTO identity_version (version) VALUES (0);
