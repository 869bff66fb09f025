-- keygate store, SQLite schema v3: aliases and groups of the unified endpoint set at run time
-- (`/api/models`), over the config file's `models:`. `data` is the entry as JSON (a target
-- string, or {"strategy", "targets"}); JSON null hides a config entry of that name.
CREATE TABLE model_routes (
    name        TEXT PRIMARY KEY,
    data        TEXT    NOT NULL,
    updated_seq INTEGER NOT NULL DEFAULT 0
);
-- The change feed's position of the last model-table write (deletions included).
ALTER TABLE change_feed ADD COLUMN models_seq INTEGER NOT NULL DEFAULT 0;
