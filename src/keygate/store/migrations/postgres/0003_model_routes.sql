-- keygate store, PostgreSQL schema v3: aliases and groups set at run time (as in SQLite v3).
CREATE TABLE model_routes (
    name        TEXT PRIMARY KEY,
    data        TEXT   NOT NULL,
    updated_seq BIGINT NOT NULL DEFAULT 0
);
ALTER TABLE change_feed ADD COLUMN models_seq BIGINT NOT NULL DEFAULT 0;
