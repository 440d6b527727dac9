-- Schema 1 of the PostgreSQL metadata store (storage-backend/src/meta/pg_store.rs).
-- Names, tags and digests compare bytewise (COLLATE "C"), so listings page in the same
-- order as the redb store's. Times are unix seconds.

CREATE TABLE repositories (
    name text COLLATE "C" PRIMARY KEY,
    created_at bigint NOT NULL
);

-- A stored blob; touched_at is refreshed by every upload and link, so the GC grace
-- period protects a blob uploaded for a manifest that is still being pushed.
CREATE TABLE blobs (
    digest text COLLATE "C" PRIMARY KEY,
    size bigint NOT NULL,
    touched_at bigint NOT NULL
);

CREATE TABLE blob_links (
    digest text COLLATE "C" NOT NULL REFERENCES blobs (digest),
    repo text COLLATE "C" NOT NULL,
    linked_at bigint NOT NULL,
    PRIMARY KEY (digest, repo)
);
CREATE INDEX blob_links_by_repo ON blob_links (repo);

-- record: the parsed manifest (JSON of ManifestRecord); bytes: exactly as pushed.
CREATE TABLE manifests (
    repo text COLLATE "C" NOT NULL,
    digest text COLLATE "C" NOT NULL,
    subject text COLLATE "C",
    created_at bigint NOT NULL,
    record jsonb NOT NULL,
    bytes bytea NOT NULL,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repo, subject) WHERE subject IS NOT NULL;

-- What each manifest references (blobs and index children): GC's reference counts.
CREATE TABLE manifest_refs (
    digest text COLLATE "C" NOT NULL,
    repo text COLLATE "C" NOT NULL,
    manifest text COLLATE "C" NOT NULL,
    PRIMARY KEY (digest, repo, manifest),
    FOREIGN KEY (repo, manifest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_refs_by_manifest ON manifest_refs (repo, manifest);

-- No cascade: a tag is removed explicitly, so a manifest still tagged cannot vanish.
CREATE TABLE tags (
    repo text COLLATE "C" NOT NULL,
    tag text COLLATE "C" NOT NULL,
    digest text COLLATE "C" NOT NULL,
    PRIMARY KEY (repo, tag),
    FOREIGN KEY (repo, digest) REFERENCES manifests (repo, digest)
);
CREATE INDEX tags_by_manifest ON tags (repo, digest);

CREATE TABLE uploads (
    id text COLLATE "C" PRIMARY KEY,
    repo text COLLATE "C" NOT NULL,
    started_at bigint NOT NULL
);
