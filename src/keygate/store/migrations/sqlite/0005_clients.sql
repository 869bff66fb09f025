-- keygate store, SQLite schema v3: client keys (SPEC §13) and their usage.
-- The secret is never stored: `key_hash` is its sha256 (hex), `masked` what answers show.
-- A deleted client keeps its row (deleted = 1) so the change feed carries the deletion to every
-- instance and its usage stays countable; answers and lookups skip it.
CREATE TABLE clients (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    name           TEXT    NOT NULL,
    key_hash       TEXT    NOT NULL UNIQUE,
    masked         TEXT    NOT NULL,
    enabled        INTEGER NOT NULL DEFAULT 1,
    deleted        INTEGER NOT NULL DEFAULT 0,
    rpm            INTEGER NOT NULL DEFAULT 0,
    rpd            INTEGER NOT NULL DEFAULT 0,
    tpd            INTEGER NOT NULL DEFAULT 0,
    monthly_tokens INTEGER NOT NULL DEFAULT 0,
    providers      TEXT    NOT NULL DEFAULT '[]',
    models         TEXT    NOT NULL DEFAULT '[]',
    expires_at     REAL    NOT NULL DEFAULT 0,
    created_at     REAL    NOT NULL,
    updated_seq    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX clients_updated_seq ON clients (updated_seq);

-- Usage per client and period: 'all', 'd:YYYY-MM-DD', 'm:YYYY-MM' (UTC); additive flushes.
CREATE TABLE client_stats (
    client_id  INTEGER NOT NULL,
    period     TEXT    NOT NULL,
    requests   INTEGER NOT NULL DEFAULT 0,
    tokens_in  INTEGER NOT NULL DEFAULT 0,
    tokens_out INTEGER NOT NULL DEFAULT 0,
    errors     INTEGER NOT NULL DEFAULT 0,
    last_used  REAL    NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, period)
);
