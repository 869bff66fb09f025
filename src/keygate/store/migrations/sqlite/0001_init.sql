-- keygate store, SQLite schema v1.
-- Applied by SqliteStore.open() inside one transaction; recorded in schema_migrations.

-- Keys: the secret (plain, or "enc:v1:..." with KEYGATE_SECRET_KEY) and its fingerprint
-- (sha256 hex, or HMAC with encryption) for duplicate detection without reading secrets.
-- AUTOINCREMENT: ids are never reused, so the change feed's deleted ids stay unambiguous.
CREATE TABLE keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    provider    TEXT    NOT NULL,
    secret      TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    masked      TEXT    NOT NULL,
    label       TEXT    NOT NULL DEFAULT '',
    status      TEXT    NOT NULL DEFAULT 'active',
    until       REAL    NOT NULL DEFAULT 0,
    last_error  TEXT    NOT NULL DEFAULT '',
    source      TEXT    NOT NULL DEFAULT 'api',
    created_at  REAL    NOT NULL,
    rpm         INTEGER NOT NULL DEFAULT 0,
    max_conn    INTEGER NOT NULL DEFAULT 0,
    updated_seq INTEGER NOT NULL DEFAULT 0,   -- change-feed position of the last write
    -- fingerprint first: also finds a pasted secret across providers (admin search)
    UNIQUE (fingerprint, provider)
);
-- Every index ends with the rowid, so these also serve ORDER BY id DESC under each filter.
CREATE INDEX keys_provider ON keys (provider);
CREATE INDEX keys_status ON keys (status);
CREATE INDEX keys_provider_status ON keys (provider, status);
CREATE INDEX keys_updated_seq ON keys (updated_seq);
-- Covers the admin search (label/masked substring under the provider/status filters), so it scans
-- this small index instead of the table with its long secrets.
CREATE INDEX keys_search ON keys (provider, status, label, masked);

-- Counters, apart from keys so frequent flushes never touch the change feed.
CREATE TABLE key_stats (
    key_id     INTEGER PRIMARY KEY,
    use_count  INTEGER NOT NULL DEFAULT 0,
    ok         INTEGER NOT NULL DEFAULT 0,
    err_4xx    INTEGER NOT NULL DEFAULT 0,
    err_5xx    INTEGER NOT NULL DEFAULT 0,
    tokens_in  INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    last_used  REAL    NOT NULL DEFAULT 0
);

CREATE TABLE provider_stats (
    provider   TEXT PRIMARY KEY,
    requests   INTEGER NOT NULL DEFAULT 0,
    ok         INTEGER NOT NULL DEFAULT 0,
    err_4xx    INTEGER NOT NULL DEFAULT 0,
    err_5xx    INTEGER NOT NULL DEFAULT 0,
    tokens_in  INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0
);

-- Provider settings changed at run time (JSON object), over config and env.
CREATE TABLE provider_overrides (
    name        TEXT PRIMARY KEY,
    data        TEXT    NOT NULL DEFAULT '{}',
    updated_seq INTEGER NOT NULL DEFAULT 0
);

-- Small named values (admin token, default model, crypto.* parameters).
CREATE TABLE meta (
    name        TEXT PRIMARY KEY,
    value       TEXT    NOT NULL,
    updated_seq INTEGER NOT NULL DEFAULT 0
);

-- Change feed: one row holding the last seq handed out (bumped once per writing transaction)
-- and pruned_seq, the newest seq whose tombstones were pruned (a reader older than that must
-- reload everything).
CREATE TABLE change_feed (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        INTEGER NOT NULL,
    pruned_seq INTEGER NOT NULL DEFAULT 0
);
INSERT INTO change_feed (id, seq, pruned_seq) VALUES (1, 0, 0);

-- Tombstones of deleted keys, pruned after a while.
CREATE TABLE deleted_keys (
    key_id     INTEGER PRIMARY KEY,
    seq        INTEGER NOT NULL,
    deleted_at REAL    NOT NULL
);
CREATE INDEX deleted_keys_seq ON deleted_keys (seq);
