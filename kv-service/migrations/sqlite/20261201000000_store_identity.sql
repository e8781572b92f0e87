-- The store's identity, made once with the database: instances advertise it so that two
-- instances on different stores are never served from one queue group.
CREATE TABLE kv_meta (
    name  TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

INSERT INTO kv_meta (name, value) VALUES ('store_id', lower(hex(randomblob(16))));
