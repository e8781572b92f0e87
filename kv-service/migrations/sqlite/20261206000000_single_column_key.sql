-- The primary key becomes one BLOB column, `id`: the plugin name's UTF-8 bytes, a 0 byte, the
-- key's UTF-8 bytes. A plugin name never holds a 0 byte, so the first one ends it, and the ids of
-- one plugin are contiguous and in the key's byte order: a prefix listing is still a range scan.
-- Why: every set seeks the key twice (the conflict check and the update), and a seek compares
-- keys at each level of the B-tree; with two columns each comparison decoded the record header
-- and compared the (always equal) plugin name first. A migration's text is fixed once applied
-- (sqlx checks it), so the measurements are in the commit log and the README.
CREATE TABLE kv_by_id (
    -- plugin_name || x'00' || key, as a BLOB (compared with memcmp).
    id          BLOB    NOT NULL PRIMARY KEY,
    -- Compact JSON text of the value (`null` included).
    value       TEXT    NOT NULL,
    -- Milliseconds since the Unix epoch; NULL means the key never expires.
    expires_at  INTEGER,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- `||` makes TEXT (NUL bytes kept, lengths are explicit); the CAST keeps those bytes as a BLOB.
INSERT INTO kv_by_id (id, value, expires_at, created_at, updated_at)
SELECT CAST(plugin_name || char(0) || key AS BLOB), value, expires_at, created_at, updated_at
FROM kv;

DROP TABLE kv;
ALTER TABLE kv_by_id RENAME TO kv;

-- The purge task deletes by expiry; only rows that can expire are indexed.
CREATE INDEX kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;

-- For people reading the file with the sqlite3 shell: the rows with their plugin and key as text.
CREATE VIEW kv_rows AS
SELECT CAST(substr(id, 1, instr(id, x'00') - 1) AS TEXT) AS plugin_name,
       CAST(substr(id, instr(id, x'00') + 1) AS TEXT) AS key,
       value, expires_at, created_at, updated_at
FROM kv;
