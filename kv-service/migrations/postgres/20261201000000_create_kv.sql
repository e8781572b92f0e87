-- One row per (plugin, key), as on SQLite, with PostgreSQL's types:
-- - `plugin_name` sorts bytewise (COLLATE "C"), whatever the database's default collation.
-- - `key` is bytea: text cannot hold U+0000, which keys may contain, and bytea compares
--   bytewise, so a prefix listing is a range scan on the primary key in UTF-8 byte order.
-- - `value` is the compact JSON text exactly as stored (jsonb would rewrite it: member order,
--   duplicate members, number spelling, and it rejects "\u0000").
-- - times are milliseconds since the Unix epoch by the database's clock (kv_now_ms).
CREATE TABLE kv (
    plugin_name text COLLATE "C" NOT NULL,
    key         bytea  NOT NULL,
    value       text   NOT NULL,
    expires_at  bigint,
    created_at  bigint NOT NULL,
    updated_at  bigint NOT NULL,
    PRIMARY KEY (plugin_name, key)
) WITH (fillfactor = 90); -- room on each page for HOT updates of the same key

-- The purge deletes by expiry; only rows that can expire are indexed.
CREATE INDEX kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;

-- The one clock every instance goes by: the statement's start on the database server, in ms.
-- One statement sees one instant (a batch of writes shares it).
CREATE FUNCTION kv_now_ms() RETURNS bigint LANGUAGE sql STABLE
    AS $$ SELECT floor(extract(epoch FROM statement_timestamp()) * 1000)::bigint $$;

-- The store's identity, made once with the database: instances advertise it so that two
-- instances on different stores are never served from one queue group.
CREATE TABLE kv_meta (
    name  text NOT NULL PRIMARY KEY,
    value text NOT NULL
);

INSERT INTO kv_meta (name, value) VALUES ('store_id', gen_random_uuid()::text);
