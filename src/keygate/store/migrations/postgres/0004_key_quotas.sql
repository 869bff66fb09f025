-- keygate store, PostgreSQL schema v3: per-key quotas (as in SQLite v3).
-- The key's own hourly and daily limits beside rpm, and what each key spent in its quota day,
-- so a restart mid-day does not forget it. `day` is the start of that quota day (epoch s);
-- counters of an older day are replaced, never added to, by a newer day's flush.
ALTER TABLE keys ADD COLUMN rph BIGINT NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN rpd BIGINT NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN tpm BIGINT NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN tph BIGINT NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN tpd BIGINT NOT NULL DEFAULT 0;
CREATE TABLE key_days (
    key_id   BIGINT PRIMARY KEY REFERENCES keys (id) ON DELETE CASCADE,
    day      DOUBLE PRECISION NOT NULL,
    requests BIGINT           NOT NULL DEFAULT 0,
    tokens   BIGINT           NOT NULL DEFAULT 0
);
