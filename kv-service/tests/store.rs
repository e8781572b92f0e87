//! The store's own guarantees, below NATS, on every backend: SQLite with its mirror, SQLite
//! read from the file, and PostgreSQL (a private cluster per test). Then what only PostgreSQL
//! has to prove: any key bytes, an index range for prefixes, purges racing writers from other
//! instances, and expiry by the database's clock whatever the instances' clocks say.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_service::store::{Backend, Row, Store, StoreOptions, Value};
use serde_json::value::RawValue;
use sqlx::ConnectOptions;
use test_support::Postgres;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Mirrored,
    File,
    Postgres,
}

const EVERY_KIND: [Kind; 3] = [Kind::Mirrored, Kind::File, Kind::Postgres];

/// A fresh store of one kind, and what it lives in.
struct Fixture {
    store: Store,
    kind: Kind,
    url: String,
    dir: tempfile::TempDir,
    postgres: Option<Postgres>,
}

impl Fixture {
    async fn open(kind: Kind) -> Fixture {
        Self::open_with(kind, |_| {}).await
    }

    async fn open_with(kind: Kind, tweak: impl FnOnce(&mut StoreOptions)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let postgres = matches!(kind, Kind::Postgres).then(Postgres::start);
        let url = match &postgres {
            Some(server) => server.url(),
            None => test_support::sqlite_url(&dir.path().join("kv.db")),
        };
        let mut options = StoreOptions::new(url.clone());
        if matches!(kind, Kind::File) {
            options.mirror_budget_bytes = 0;
        }
        tweak(&mut options);
        let store = Store::open(&options).await.expect("open");
        assert_eq!(store.mirrored(), matches!(kind, Kind::Mirrored));
        Fixture {
            store,
            kind,
            url,
            dir,
            postgres,
        }
    }

    /// Another store on the same database (PostgreSQL: a second instance).
    async fn another(&self, tweak: impl FnOnce(&mut StoreOptions)) -> Store {
        let mut options = StoreOptions::new(self.url.clone());
        tweak(&mut options);
        Store::open(&options).await.expect("open a second store")
    }

    /// Every row in the table, expired ones included.
    async fn rows(&self) -> i64 {
        match &self.postgres {
            Some(server) => server
                .psql("postgres", "SELECT count(*) FROM kv")
                .parse()
                .unwrap(),
            None => {
                let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(&self.url)
                    .unwrap()
                    .read_only(true)
                    .connect()
                    .await
                    .unwrap();
                sqlx::query_scalar("SELECT count(*) FROM kv")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
        }
    }
}

fn json(text: &str) -> Value {
    Value::from(RawValue::from_string(text.to_owned()).unwrap())
}

async fn text(store: &Store, plugin: &str, key: &str) -> Option<String> {
    store
        .get(plugin, key)
        .await
        .unwrap()
        .map(|value| value.get().to_owned())
}

#[tokio::test]
async fn purge_removes_only_expired_rows() {
    for kind in EVERY_KIND {
        let kv = Fixture::open(kind).await;
        let store = &kv.store;
        for key in ["short-1", "short-2", "short-3"] {
            store.set("p", key, json("1"), Some(1)).await.unwrap();
        }
        store.set("p", "long", json("2"), Some(3600)).await.unwrap();
        store.set("p", "forever", json("3"), None).await.unwrap();
        store
            .set("q", "other-plugin", json("4"), None)
            .await
            .unwrap();
        assert_eq!(store.purge_expired().await.unwrap(), 0, "{kind:?}");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Expired rows are invisible before any purge, though still stored.
        assert_eq!(text(store, "p", "short-1").await, None, "{kind:?}");
        assert!(
            !store.delete("p", "short-2").await.unwrap(),
            "{kind:?}: an expired key is not deleted"
        );
        assert_eq!(kv.rows().await, 6, "{kind:?}");
        assert_eq!(store.purge_expired().await.unwrap(), 3, "{kind:?}");
        assert_eq!(kv.rows().await, 3, "{kind:?}");
        let listing = store.list("p", "", 100).await.unwrap();
        assert_eq!(listing.key_strs(), ["forever", "long"], "{kind:?}");
        assert_eq!(text(store, "q", "other-plugin").await.as_deref(), Some("4"));
        assert_eq!(store.purge_expired().await.unwrap(), 0, "{kind:?}");
        kv.store.close().await;
    }
}

/// A listing holds at most `limit` keys and is `truncated` exactly when more live keys match:
/// not when the matches fill the limit exactly, and not for expired rows, other prefixes or
/// other plugins beyond it. On every backend (the file's range query included, which the
/// contract tests, run on the mirror, do not reach).
#[tokio::test]
async fn a_listing_is_truncated_exactly_when_more_live_keys_match() {
    for kind in EVERY_KIND {
        let kv = Fixture::open(kind).await;
        let store = &kv.store;
        for key in ["a0", "a1", "a2", "a3", "a4", "b0"] {
            store.set("p", key, json("1"), None).await.unwrap();
        }
        store.set("q", "a5", json("1"), None).await.unwrap();
        for key in ["a25", "a9"] {
            store.set("p", key, json("1"), Some(1)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let listed = |limit| async move {
            let listing = store.list("p", "a", limit).await.unwrap();
            (listing.key_strs(), listing.truncated)
        };
        let live = |count: usize| -> Vec<String> {
            ["a0", "a1", "a2", "a3", "a4"][..count]
                .iter()
                .map(|key| key.to_string())
                .collect()
        };
        assert_eq!(listed(3).await, (live(3), true), "{kind:?}");
        assert_eq!(listed(4).await, (live(4), true), "{kind:?}");
        assert_eq!(
            listed(5).await,
            (live(5), false),
            "{kind:?}: filled exactly"
        );
        assert_eq!(listed(6).await, (live(5), false), "{kind:?}");
        assert!(
            store.list("p", "", 5).await.unwrap().truncated,
            "{kind:?}: b0 matches the empty prefix"
        );
        kv.store.close().await;
    }
}

/// The same writes, batched or not, leave the same state and report the same results as one
/// by one: on PostgreSQL the batch below is three statements (a key may not repeat in one).
#[tokio::test]
async fn batched_writes_report_like_single_ones() {
    for kind in EVERY_KIND {
        let kv = Fixture::open(kind).await;
        let store = &kv.store;
        store.set("p", "gone", json("0"), None).await.unwrap();
        // Queued together, these reach the writer as one batch.
        let (a, b, c, d, e, f) = tokio::join!(
            store.set("p", "k", json("1"), None),
            store.delete("p", "k"),
            store.delete("p", "k"),
            store.set("p", "k", json("2"), None),
            store.set("p", "k", json("[3]"), None),
            store.delete("p", "gone"),
        );
        a.unwrap();
        d.unwrap();
        e.unwrap();
        assert!(
            b.unwrap(),
            "{kind:?}: the first delete finds the key the set wrote"
        );
        assert!(!c.unwrap(), "{kind:?}: the second finds nothing");
        assert!(f.unwrap(), "{kind:?}");
        assert_eq!(text(store, "p", "k").await.as_deref(), Some("[3]"));
        assert_eq!(text(store, "p", "gone").await, None);
        assert_eq!(kv.rows().await, 1, "{kind:?}");
        kv.store.close().await;
    }
}

#[tokio::test]
async fn purge_works_through_more_rows_than_one_chunk() {
    for kind in [Kind::File, Kind::Postgres] {
        let kv = Fixture::open(kind).await;
        let store = Arc::new(kv.store);
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..1250 {
            let store = store.clone();
            writes.spawn(async move { store.set("p", format!("k{i}"), json("0"), Some(1)).await });
        }
        while let Some(done) = writes.join_next().await {
            done.unwrap().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(store.purge_expired().await.unwrap(), 1250, "{kind:?}");
        let kv = Fixture {
            store: Arc::into_inner(store).unwrap(),
            ..kv
        };
        assert_eq!(kv.rows().await, 0, "{kind:?}");
        kv.store.close().await;
    }
}

/// `kv-service copy`'s two halves: a page out of one store, in order, live rows only; and the
/// same rows into another, value, expiry and timestamps untouched, however often.
#[tokio::test]
async fn export_pages_live_rows_and_import_keeps_them_exactly() {
    for (from, to) in [
        (Kind::Mirrored, Kind::Postgres),
        (Kind::Postgres, Kind::File),
        (Kind::File, Kind::Mirrored),
    ] {
        let source = Fixture::open(from).await;
        let store = &source.store;
        store
            .set("b", "k1", json(r#"{"x":[1,2.50]}"#), None)
            .await
            .unwrap();
        store
            .set("a", "k2", json("null"), Some(3600))
            .await
            .unwrap();
        store.set("a", "k1", json("\"v\""), None).await.unwrap();
        store.set("a", "dead", json("0"), Some(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let first = store.export(None, 2).await.unwrap();
        let keys = |rows: &[Row]| -> Vec<(String, String)> {
            rows.iter()
                .map(|row| (row.plugin.clone(), row.key.clone()))
                .collect()
        };
        assert_eq!(
            keys(&first),
            [("a".into(), "k1".into()), ("a".into(), "k2".into())]
        );
        let rest = store.export(Some(("a", "k2")), 2).await.unwrap();
        assert_eq!(
            keys(&rest),
            [("b".into(), "k1".into())],
            "{from:?}: the expired row stays behind"
        );
        let all: Vec<Row> = first.into_iter().chain(rest).collect();
        assert!(all[1].expires_at.is_some() && all[0].expires_at.is_none());

        let target = Fixture::open(to).await;
        for _ in 0..2 {
            assert_eq!(target.store.import(all.clone()).await.unwrap(), 3);
        }
        let copied = target.store.export(None, 10).await.unwrap();
        assert_eq!(copied.len(), 3, "{from:?} -> {to:?}");
        for (copy, original) in copied.iter().zip(&all) {
            assert_eq!(
                (
                    &copy.plugin,
                    &copy.key,
                    copy.value.get(),
                    copy.expires_at,
                    copy.created_at,
                    copy.updated_at
                ),
                (
                    &original.plugin,
                    &original.key,
                    original.value.get(),
                    original.expires_at,
                    original.created_at,
                    original.updated_at
                ),
                "{from:?} -> {to:?}"
            );
        }
        assert_eq!(
            text(&target.store, "b", "k1").await.as_deref(),
            Some(r#"{"x":[1,2.50]}"#)
        );
        assert_eq!(
            target.store.list("a", "", 10).await.unwrap().key_strs(),
            ["k1", "k2"]
        );
        source.store.close().await;
        target.store.close().await;
    }
}

/// Keys are any string, U+0000 included (PostgreSQL text cannot hold it: keys are bytea), and
/// values come back byte for byte (jsonb would rewrite them).
#[tokio::test]
async fn postgres_keeps_any_key_and_every_value_byte() {
    let kv = Fixture::open(Kind::Postgres).await;
    let store = &kv.store;
    let keys = ["a\u{0}b", "a", "a\u{0}", "é", "\u{10FFFF}", "a%", "a_"];
    for key in keys {
        store.set("p", key, json("1"), None).await.unwrap();
    }
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort_unstable(); // Rust's str order is UTF-8 byte order
    assert_eq!(store.list("p", "", 100).await.unwrap().key_strs(), sorted);
    assert_eq!(
        store.list("p", "a\u{0}", 100).await.unwrap().key_strs(),
        ["a\u{0}", "a\u{0}b"]
    );
    assert_eq!(store.list("p", "a%", 100).await.unwrap().key_strs(), ["a%"]);
    assert!(store.delete("p", "a\u{0}b").await.unwrap());
    assert_eq!(text(store, "p", "a\u{0}b").await, None);
    assert_eq!(text(store, "p", "a\u{0}").await.as_deref(), Some("1"));
    for value in [
        r#"{"b":1,"a":2,"a":3}"#,
        "1.0e1",
        r#""\u0000""#,
        "12345678901234567890123",
        r#"{"k":"\ud83d\ude00"}"#,
    ] {
        store.set("p", "v", json(value), None).await.unwrap();
        assert_eq!(text(store, "p", "v").await.as_deref(), Some(value));
    }
    kv.store.close().await;
}

#[tokio::test]
async fn postgres_prefix_listing_is_an_index_range_not_a_scan() {
    let kv = Fixture::open(Kind::Postgres).await;
    let server = kv.postgres.as_ref().unwrap();
    // Enough rows, and fresh statistics, that the planner's choice is the real one. The plan
    // is the generic one every listing runs with, whatever the prefix.
    server.psql(
        "postgres",
        "INSERT INTO kv SELECT 'p', convert_to('k' || i, 'UTF8'), '1', NULL, 0, 0 \
         FROM generate_series(1, 20000) AS i; ANALYZE kv",
    );
    let plan = kv.store.list_query_plan().await.unwrap().join("\n");
    println!("{plan}");
    assert!(
        plan.contains("Index Scan using kv_pkey on kv")
            && plan.contains("Index Cond: ((plugin_name = $1) AND (key >= $2) AND (key < $3))"),
        "the prefix listing must be a range on the primary key:\n{plan}"
    );
    assert!(
        !plan.contains("Seq Scan") && !plan.contains("Sort"),
        "{plan}"
    );
    kv.store.close().await;
}

/// The race a naive `DELETE … WHERE expires_at <= now` loses: a key set again without a TTL
/// while another instance's purge is deleting it as expired. Every re-set key must survive,
/// round after round, with two instances purging at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_never_deletes_a_key_a_concurrent_set_rewrote() {
    let kv = Fixture::open_with(Kind::Postgres, |options| options.read_connections = 1).await;
    let writer = Arc::new(kv.store);
    let purgers = [
        Arc::new(kv_second(&kv.url).await),
        Arc::new(kv_second(&kv.url).await),
    ];
    const KEYS: usize = 400;
    let mut purged_total = 0;
    for round in 0..12 {
        let expired_at = Instant::now();
        let mut sets = tokio::task::JoinSet::new();
        for i in 0..KEYS {
            let writer = writer.clone();
            sets.spawn(async move {
                writer
                    .set("p", format!("r{round}-{i}"), json("0"), Some(1))
                    .await
            });
        }
        while let Some(done) = sets.join_next().await {
            done.unwrap().unwrap();
        }
        tokio::time::sleep_until((expired_at + Duration::from_millis(1050)).into()).await;
        // Every key has expired. Set them all again, without a TTL, while both purge.
        let mut work = tokio::task::JoinSet::new();
        for purger in &purgers {
            let purger = purger.clone();
            work.spawn(async move { purger.purge_expired().await.unwrap() });
        }
        for i in 0..KEYS {
            let writer = writer.clone();
            work.spawn(async move {
                writer
                    .set("p", format!("r{round}-{i}"), json("1"), None)
                    .await
                    .unwrap();
                0
            });
        }
        while let Some(purged) = work.join_next().await {
            purged_total += purged.unwrap();
        }
        let listing = writer
            .list("p", &format!("r{round}-"), 10_000)
            .await
            .unwrap();
        assert_eq!(
            listing.keys.len(),
            KEYS,
            "round {round}: keys set again without a TTL were purged"
        );
    }
    println!(
        "purge race: 12 rounds of {KEYS} keys; the purges took {purged_total} rows, none set again"
    );
    for purger in purgers {
        Arc::into_inner(purger).unwrap().close().await;
    }
    Arc::into_inner(writer).unwrap().close().await;
}

async fn kv_second(url: &str) -> Store {
    let mut options = StoreOptions::new(url);
    options.read_connections = 1;
    Store::open(&options).await.unwrap()
}

/// Expiry on PostgreSQL is the database's business: instances whose own clocks are an hour
/// apart, either way, agree with each other and with the database on when a key expires.
#[tokio::test]
async fn postgres_expiry_follows_the_database_clock_not_the_instances() {
    let kv = Fixture::open_with(Kind::Postgres, |options| {
        options.clock_offset_ms = 3_600_000
    })
    .await;
    let behind = kv
        .another(|options| options.clock_offset_ms = -3_600_000)
        .await;
    let written = Instant::now();
    kv.store.set("p", "k", json("1"), Some(2)).await.unwrap();
    let server = kv.postgres.as_ref().unwrap();
    let ttl_ms: i64 = server
        .psql("postgres", "SELECT expires_at - updated_at FROM kv")
        .parse()
        .unwrap();
    assert_eq!(ttl_ms, 2000);
    let drift: i64 = server
        .psql("postgres", "SELECT abs(updated_at - kv_now_ms()) FROM kv")
        .parse()
        .unwrap();
    assert!(
        drift < 1000,
        "written at the database's now, not the writer's: {drift} ms"
    );
    for store in [&kv.store, &behind] {
        assert_eq!(text(store, "p", "k").await.as_deref(), Some("1"));
    }
    tokio::time::sleep_until((written + Duration::from_millis(2100)).into()).await;
    for store in [&kv.store, &behind] {
        assert_eq!(
            text(store, "p", "k").await,
            None,
            "expired for every instance"
        );
        assert!(store.list("p", "", 10).await.unwrap().keys.is_empty());
        assert!(!store.delete("p", "k").await.unwrap());
    }
    behind.close().await;
    kv.store.close().await;
}

#[tokio::test]
async fn stores_report_their_backend_and_postgres_identity_is_per_database() {
    let kv = Fixture::open(Kind::Postgres).await;
    assert_eq!(kv.store.backend(), Backend::Postgres);
    let second = kv.another(|_| {}).await;
    assert_eq!(second.id(), kv.store.id(), "one database, one identity");
    let server = kv.postgres.as_ref().unwrap();
    let other_url = server.create_database("other");
    let other = Store::open(&StoreOptions::new(other_url)).await.unwrap();
    assert_ne!(
        other.id(),
        kv.store.id(),
        "another database is another store"
    );
    for store in [second, other] {
        store.close().await;
    }
    let sqlite = Fixture::open(Kind::Mirrored).await;
    assert_eq!(sqlite.store.backend(), Backend::Sqlite);
    let _ = (&sqlite.dir, sqlite.kind);
    sqlite.store.close().await;
    kv.store.close().await;
}
