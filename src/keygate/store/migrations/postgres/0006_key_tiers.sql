-- keygate store, PostgreSQL schema v6: key tiers and weights (as in SQLite v6).
-- Lower tiers are spent first (free keys at 0, paid keys above); `weight` is a key's share of
-- the picks inside its tier (1-100).
ALTER TABLE keys ADD COLUMN tier INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN weight INTEGER NOT NULL DEFAULT 1;
