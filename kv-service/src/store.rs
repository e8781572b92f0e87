//! The key-value store behind the service, on SQLite through sqlx. Nothing outside this module
//! sees SQL: the handlers speak `set`/`get`/`delete`/`list`/`purge_expired`, so a PostgreSQL
//! backend can slot in behind the same methods.
//!
//! Writes go through one writer task that owns the only write connection and commits every
//! pending write in one transaction (group commit): one `fsync`-bound commit per batch instead of
//! per request, no `SQLITE_BUSY` between writers, and each caller hears back only after the
//! commit that holds its write. Reads run on a small pool of read-only connections, which WAL
//! lets proceed while the writer commits.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 256;
/// Writes waiting for the writer before callers wait for room (back-pressure).
const QUEUE: usize = 4096;
/// Expired rows removed per purge transaction, so a large purge never holds the write lock long.
const PURGE_CHUNK: u32 = 1000;

/// How the store opens its database.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://path/to/kv.db` (created if missing) or `sqlite::memory:`.
    pub url: String,
    /// `synchronous=FULL` instead of `NORMAL`: also survive power loss, at a cost per commit.
    /// Either way a committed write survives the process being killed.
    pub synchronous_full: bool,
    /// Read-only connections serving get and list.
    pub read_connections: u32,
}

impl StoreOptions {
    /// Defaults for `url`: WAL, `synchronous=NORMAL`, four readers.
    pub fn new(url: impl Into<String>) -> Self {
        StoreOptions {
            url: url.into(),
            synchronous_full: false,
            read_connections: 4,
        }
    }
}

/// A storage failure. Its text is for the log; clients see a generic message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the store's writer has stopped")]
    Closed,
}

/// The keys of one `list` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Live keys in ascending byte order, at most `limit`.
    pub keys: Vec<String>,
    /// More live keys match beyond `limit`.
    pub truncated: bool,
}

/// The store: a handle to the writer task plus the read pool.
#[derive(Debug)]
pub struct Store {
    writes: mpsc::Sender<Command>,
    reads: SqlitePool,
    writer: JoinHandle<()>,
}

enum Write {
    Set {
        plugin: String,
        key: String,
        value: String,
        ttl_seconds: Option<u32>,
    },
    Delete {
        plugin: String,
        key: String,
    },
    Purge,
}

/// `Set` → 0, `Delete` → rows deleted, `Purge` → rows purged.
type Applied = u64;

struct Command {
    write: Write,
    done: oneshot::Sender<Result<Applied, StoreError>>,
}

impl Store {
    /// Opens (creating if missing) the database, migrates it, and starts the writer.
    pub async fn open(options: &StoreOptions) -> Result<Store, StoreError> {
        let base = SqliteConnectOptions::from_str(&options.url)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if options.synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(Duration::from_secs(5));
        // Migrate through a one-connection pool: `Migrator::run` on a bare connection makes the
        // future non-`Send` (sqlx's `Acquire` lifetime quirk), and this one is spawned.
        let setup = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone().create_if_missing(true))
            .await?;
        MIGRATOR.run(&setup).await?;
        setup.close().await;
        let writer = base.clone().connect().await?;
        let reads = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(1)
            .connect_with(base.read_only(true))
            .await?;
        let (writes, queue) = mpsc::channel(QUEUE);
        let writer = tokio::spawn(run_writer(writer, queue));
        Ok(Store {
            writes,
            reads,
            writer,
        })
    }

    /// Upserts `key` with `value` (compact JSON text); replaces any earlier TTL. Returns once
    /// committed.
    pub async fn set(
        &self,
        plugin: &str,
        key: &str,
        value: String,
        ttl_seconds: Option<u32>,
    ) -> Result<(), StoreError> {
        self.write(Write::Set {
            plugin: plugin.to_owned(),
            key: key.to_owned(),
            value,
            ttl_seconds,
        })
        .await
        .map(drop)
    }

    /// Removes a live key; `true` if there was one. Returns once committed.
    pub async fn delete(&self, plugin: &str, key: &str) -> Result<bool, StoreError> {
        self.write(Write::Delete {
            plugin: plugin.to_owned(),
            key: key.to_owned(),
        })
        .await
        .map(|deleted| deleted > 0)
    }

    /// The JSON text of a live key.
    pub async fn get(&self, plugin: &str, key: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT value FROM kv \
             WHERE plugin_name = ?1 AND key = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
        )
        .bind(plugin)
        .bind(key)
        .bind(now_ms())
        .fetch_optional(&self.reads)
        .await?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Live keys starting with `prefix` (literally, bytewise), in byte order, at most `limit`.
    pub async fn list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Listing, StoreError> {
        let fetch = i64::from(limit) + 1;
        let now = now_ms();
        let rows = match prefix_end(prefix) {
            Some(end) => {
                sqlx::query(LIST_RANGE)
                    .bind(plugin)
                    .bind(prefix)
                    .bind(end)
                    .bind(now)
                    .bind(fetch)
                    .fetch_all(&self.reads)
                    .await?
            }
            None => {
                sqlx::query(LIST_FROM)
                    .bind(plugin)
                    .bind(prefix)
                    .bind(now)
                    .bind(fetch)
                    .fetch_all(&self.reads)
                    .await?
            }
        };
        let mut keys: Vec<String> = rows.into_iter().map(|row| row.get(0)).collect();
        let truncated = keys.len() > limit as usize;
        keys.truncate(limit as usize);
        Ok(Listing { keys, truncated })
    }

    /// Deletes every expired row, a chunk per transaction so writes keep flowing meanwhile.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let purged = self.write(Write::Purge).await?;
            total += purged;
            if purged < u64::from(PURGE_CHUNK) {
                return Ok(total);
            }
        }
    }

    /// Stops the writer after the queued writes are committed, and closes every connection.
    pub async fn close(self) {
        drop(self.writes);
        let _ = self.writer.await;
        self.reads.close().await;
    }

    async fn write(&self, write: Write) -> Result<Applied, StoreError> {
        let (done, outcome) = oneshot::channel();
        self.writes
            .send(Command { write, done })
            .await
            .map_err(|_| StoreError::Closed)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// The query plan of the prefix listing (for the test that proves it is an index range).
    #[doc(hidden)]
    pub async fn list_query_plan(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(LIST_RANGE_PLAN)
            .bind("p")
            .bind("a")
            .bind("b")
            .bind(0_i64)
            .bind(10_i64)
            .fetch_all(&self.reads)
            .await?;
        Ok(rows.into_iter().map(|row| row.get("detail")).collect())
    }
}

/// Keys in `[prefix, end)`: a range on the primary key (plugin_name, key), never a scan.
macro_rules! list_range {
    () => {
        "SELECT key FROM kv \
         WHERE plugin_name = ?1 AND key >= ?2 AND key < ?3 \
           AND (expires_at IS NULL OR expires_at > ?4) \
         ORDER BY key LIMIT ?5"
    };
}
const LIST_RANGE: &str = list_range!();
const LIST_RANGE_PLAN: &str = concat!("EXPLAIN QUERY PLAN ", list_range!());
/// Keys `>= prefix` (for an empty prefix, or one with no upper bound).
const LIST_FROM: &str = "SELECT key FROM kv \
     WHERE plugin_name = ?1 AND key >= ?2 \
       AND (expires_at IS NULL OR expires_at > ?3) \
     ORDER BY key LIMIT ?4";

/// The smallest string greater than every string starting with `prefix`: the last character
/// bumped to the next scalar value (dropping trailing `char::MAX`). UTF-8 byte order is code
/// point order, so `[prefix, end)` is exactly the keys with that byte prefix; `%` and `_` are
/// ordinary characters here, unlike in `LIKE`.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

async fn run_writer(mut conn: SqliteConnection, mut queue: mpsc::Receiver<Command>) {
    let mut batch: Vec<Command> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let now = now_ms();
        let writes: Vec<&Write> = batch.iter().map(|command| &command.write).collect();
        match commit(&mut conn, &writes, now).await {
            Ok(applied) => {
                for (command, applied) in batch.drain(..).zip(applied) {
                    let _ = command.done.send(Ok(applied));
                }
            }
            Err(err) if batch.len() == 1 => {
                tracing::error!(%err, "write failed");
                let command = batch.pop().expect("one command");
                let _ = command.done.send(Err(err.into()));
            }
            Err(err) => {
                // One bad write must not fail its neighbours: retry each alone, so every
                // caller gets its own outcome.
                tracing::warn!(%err, writes = batch.len(), "batch failed, committing its writes one by one");
                for command in batch.drain(..) {
                    let outcome = commit(&mut conn, &[&command.write], now)
                        .await
                        .map(|applied| applied[0]);
                    if let Err(err) = &outcome {
                        tracing::error!(%err, "write failed");
                    }
                    let _ = command.done.send(outcome.map_err(StoreError::from));
                }
            }
        }
    }
    if let Err(err) = conn.close().await {
        tracing::warn!(%err, "closing the write connection");
    }
}

/// Applies `writes` in one `BEGIN IMMEDIATE` transaction and commits it.
async fn commit(
    conn: &mut SqliteConnection,
    writes: &[&Write],
    now: i64,
) -> Result<Vec<Applied>, sqlx::Error> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let mut applied = Vec::with_capacity(writes.len());
    for write in writes {
        let rows = match write {
            Write::Set {
                plugin,
                key,
                value,
                ttl_seconds,
            } => {
                let expires_at = ttl_seconds.map(|ttl| now + i64::from(ttl) * 1000);
                sqlx::query(
                    "INSERT INTO kv (plugin_name, key, value, expires_at, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
                     ON CONFLICT (plugin_name, key) DO UPDATE SET \
                       value = excluded.value, \
                       expires_at = excluded.expires_at, \
                       updated_at = excluded.updated_at, \
                       created_at = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= excluded.updated_at \
                                         THEN excluded.created_at ELSE kv.created_at END",
                )
                .bind(plugin.as_str())
                .bind(key.as_str())
                .bind(value.as_str())
                .bind(expires_at)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                0
            }
            Write::Delete { plugin, key } => sqlx::query(
                "DELETE FROM kv \
                 WHERE plugin_name = ?1 AND key = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
            )
            .bind(plugin.as_str())
            .bind(key.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Write::Purge => sqlx::query(
                "DELETE FROM kv WHERE (plugin_name, key) IN \
                   (SELECT plugin_name, key FROM kv \
                    WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)",
            )
            .bind(now)
            .bind(PURGE_CHUNK)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        applied.push(rows);
    }
    tx.commit().await?;
    Ok(applied)
}

/// Milliseconds since the Unix epoch: the unit of `expires_at`, `created_at`, `updated_at`.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Shares one store between the service and the purge task.
pub type SharedStore = Arc<Store>;

#[cfg(test)]
mod tests {
    use super::*;

    async fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("kv.db").display());
        let store = Store::open(&StoreOptions::new(url)).await.expect("open");
        (dir, store)
    }

    async fn row_count(store: &Store) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM kv")
            .fetch_one(&store.reads)
            .await
            .expect("count")
    }

    #[tokio::test]
    async fn purge_removes_only_expired_rows() {
        let (_dir, store) = fresh().await;
        for key in ["short-1", "short-2", "short-3"] {
            store.set("p", key, "1".into(), Some(1)).await.unwrap();
        }
        store
            .set("p", "long", "2".into(), Some(3600))
            .await
            .unwrap();
        store.set("p", "forever", "3".into(), None).await.unwrap();
        store
            .set("q", "other-plugin", "4".into(), None)
            .await
            .unwrap();
        assert_eq!(
            store.purge_expired().await.unwrap(),
            0,
            "nothing expired yet"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Expired rows are invisible before any purge, though still stored.
        assert_eq!(store.get("p", "short-1").await.unwrap(), None);
        assert_eq!(row_count(&store).await, 6);
        assert_eq!(store.purge_expired().await.unwrap(), 3);
        assert_eq!(row_count(&store).await, 3);
        let listing = store.list("p", "", 100).await.unwrap();
        assert_eq!(listing.keys, ["forever", "long"]);
        assert_eq!(
            store.get("q", "other-plugin").await.unwrap().as_deref(),
            Some("4")
        );
        assert_eq!(store.purge_expired().await.unwrap(), 0);
        store.close().await;
    }

    #[tokio::test]
    async fn purge_works_through_more_rows_than_one_chunk() {
        let (_dir, store) = fresh().await;
        let store = Arc::new(store);
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..(PURGE_CHUNK + 250) {
            let store = store.clone();
            writes
                .spawn(async move { store.set("p", &format!("k{i}"), "0".into(), Some(1)).await });
        }
        while let Some(done) = writes.join_next().await {
            done.unwrap().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            store.purge_expired().await.unwrap(),
            u64::from(PURGE_CHUNK) + 250
        );
        assert_eq!(row_count(&store).await, 0);
    }

    #[tokio::test]
    async fn prefix_listing_is_an_index_range_not_a_scan() {
        let (_dir, store) = fresh().await;
        let plan = store.list_query_plan().await.unwrap();
        assert_eq!(
            plan,
            ["SEARCH kv USING PRIMARY KEY (plugin_name=? AND key>? AND key<?)"],
            "the prefix listing must seek on the primary key"
        );
        assert!(
            plan.iter()
                .all(|step| !step.contains("SCAN") && !step.contains("TEMP B-TREE"))
        );
    }

    #[tokio::test]
    async fn writes_are_in_the_file_once_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kv.db").display());
        let store = Store::open(&StoreOptions::new(url.clone())).await.unwrap();
        store.set("p", "k", "\"v\"".into(), None).await.unwrap();
        // A second, independent connection sees the committed row at once.
        let mut other = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let value: String = sqlx::query_scalar("SELECT value FROM kv WHERE key = 'k'")
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert_eq!(value, "\"v\"");
        store.close().await;
    }

    #[test]
    fn prefix_end_bumps_the_last_character() {
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("user:").as_deref(), Some("user;"));
        assert_eq!(prefix_end("a%").as_deref(), Some("a&"));
        assert_eq!(prefix_end("a_").as_deref(), Some("a`"));
        assert_eq!(prefix_end("é").as_deref(), Some("ê"));
        // Skips the surrogate gap: U+D7FF is followed by U+E000.
        assert_eq!(prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        // Drops a trailing U+10FFFF and bumps the character before it.
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
    }
}
