-- keygate store, SQLite schema v2: admin sessions ended by a logout.
-- Shared by every instance on this database, so a revoked cookie stays refused after a restart
-- and on the other instances. A row is kept until the session would have expired anyway.
CREATE TABLE revoked_sessions (
    session_id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);
CREATE INDEX revoked_sessions_expires ON revoked_sessions (expires_at);
