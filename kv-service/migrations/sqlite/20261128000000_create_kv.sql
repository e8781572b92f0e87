-- One row per (plugin, key). WITHOUT ROWID makes the primary key the table's own B-tree, so a
-- prefix listing is a range scan over (plugin_name, key) in BINARY (UTF-8 byte) order.
CREATE TABLE kv (
    plugin_name TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    -- Compact JSON text of the value (`null` included).
    value       TEXT    NOT NULL,
    -- Milliseconds since the Unix epoch; NULL means the key never expires.
    expires_at  INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (plugin_name, key)
) WITHOUT ROWID;

-- The purge task deletes by expiry; only rows that can expire are indexed.
CREATE INDEX kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;
