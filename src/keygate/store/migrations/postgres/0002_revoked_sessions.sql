-- keygate store, PostgreSQL schema v2: admin sessions ended by a logout (as in SQLite v2).
-- Shared by every instance on this database, so a revoked cookie stays refused after a restart
-- and on the other instances. A row is kept until the session would have expired anyway.
CREATE TABLE revoked_sessions (
    session_id TEXT PRIMARY KEY,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX revoked_sessions_expires ON revoked_sessions (expires_at);
