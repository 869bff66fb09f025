-- keygate store, SQLite schema v3: per-key quotas (SPEC §12).
-- The key's own hourly and daily limits beside rpm, and what each key spent in its quota day,
-- so a restart mid-day does not forget it. `day` is the start of that quota day (epoch s);
-- counters of an older day are replaced, never added to, by a newer day's flush.
ALTER TABLE keys ADD COLUMN rph INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN rpd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN tpm INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN tph INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN tpd INTEGER NOT NULL DEFAULT 0;
CREATE TABLE key_days (
    key_id   INTEGER PRIMARY KEY,
    day      REAL    NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    tokens   INTEGER NOT NULL DEFAULT 0
);
