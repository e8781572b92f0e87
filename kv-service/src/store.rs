//! The key-value store behind the service, on SQLite through sqlx. Nothing outside this module
//! sees SQL: the handlers speak `set`/`get`/`delete`/`list`/`purge_expired`, so a PostgreSQL
//! backend can slot in behind the same methods.
//!
//! Writes go through one writer task that owns the only write connection and commits every
//! pending write in one transaction (group commit): consecutive sets become one multi-row upsert
//! and consecutive deletes one statement, so a batch costs a handful of statements however many
//! writes it holds, there is no `SQLITE_BUSY` between writers, and each caller hears back only
//! after the commit that holds its write.
//!
//! Reads are served from a mirror of the table that only the writer changes, right after each
//! commit and before anyone is told: a get or list sees exactly the committed state, in
//! microseconds, without a statement (sqlx spends ~75 µs per statement handing it to its worker
//! thread). The mirror has a memory budget; a database larger than that is read from SQLite,
//! through a pool of read-only connections that WAL lets run beside the writer. The service must
//! be the only writer of its database file: the mirror does not see changes made behind its back.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor, Row};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Most writes committed in one transaction (6 bound parameters each, far below SQLite's 32766).
const MAX_BATCH: usize = 256;
/// Writes waiting for the writer before callers wait for room (back-pressure).
const QUEUE: usize = 4096;
/// Expired rows removed per purge transaction, so a large purge never holds the write lock long.
const PURGE_CHUNK: u32 = 1000;
/// Page size of a new database. Every set rewrites the whole page its row lives on into the WAL,
/// so at 4096 a batch of 128-byte sets wrote 4.3 KB per set (a 4 KB frame per row: the rows of a
/// batch land on different pages); 2048 halves that and lifted 16-in-flight sets from ~0.60x to
/// ~0.65x of the bare responder. The price: rows over ~490 bytes (~1000 at 4096) spill to
/// overflow pages, and 60 KB sets cost ~18% more (twice the frames: 1.9k/s against 2.3k/s).
const PAGE_SIZE: u32 = 2048;
/// Bookkeeping bytes counted per mirrored row on top of its key and value.
const ROW_OVERHEAD: usize = 96;

/// A stored value: JSON text, shared without copying between the store and replies.
pub type Value = Arc<RawValue>;

/// How the store opens its database.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://path/to/kv.db` (created if missing) or `sqlite::memory:`.
    pub url: String,
    /// `synchronous=FULL` instead of `NORMAL`: also survive power loss, at a cost per commit.
    /// Either way a committed write survives the process being killed.
    pub synchronous_full: bool,
    /// Read-only connections serving reads when the mirror is off.
    pub read_connections: u32,
    /// Memory the in-memory mirror may use; past it (or at 0) reads go to SQLite.
    pub mirror_budget_bytes: usize,
}

impl StoreOptions {
    /// Defaults for `url`: WAL, `synchronous=NORMAL`, four readers, a 48 MiB mirror.
    pub fn new(url: impl Into<String>) -> Self {
        StoreOptions {
            url: url.into(),
            synchronous_full: false,
            read_connections: 4,
            mirror_budget_bytes: 48 << 20,
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
    #[error("stored value is not valid JSON: {0}")]
    Corrupt(serde_json::Error),
    #[error("database error: {0}")]
    Write(Arc<sqlx::Error>),
    #[error("the store's writer has stopped")]
    Closed,
    #[error(
        "the database cannot be written (check the file system and the permissions of the \
         file and its folder): {0}"
    )]
    NotWritable(sqlx::Error),
}

/// The keys of one `list` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Live keys in ascending byte order, at most `limit`.
    pub keys: Vec<String>,
    /// More live keys match beyond `limit`.
    pub truncated: bool,
}

/// The store: a handle to the writer task, the mirror and the read pool.
#[derive(Debug)]
pub struct Store {
    writes: mpsc::Sender<Command>,
    mirror: Arc<RwLock<Option<Mirror>>>,
    reads: SqlitePool,
    writer: JoinHandle<()>,
    checkpointer: JoinHandle<()>,
}

/// Every committed row, by plugin then key (`String` orders bytewise, as SQLite's BINARY does).
/// Expired rows may linger until the next purge; readers skip them.
#[derive(Debug, Default)]
struct Mirror {
    plugins: BTreeMap<String, BTreeMap<String, Entry>>,
    bytes: usize,
    budget: usize,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Value,
    expires_at: Option<i64>,
}

impl Entry {
    fn live(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

impl Mirror {
    fn get(&self, plugin: &str, key: &str, now: i64) -> Option<&Entry> {
        self.plugins
            .get(plugin)?
            .get(key)
            .filter(|entry| entry.live(now))
    }

    fn list(&self, plugin: &str, prefix: &str, limit: usize, now: i64) -> Listing {
        let Some(keys) = self.plugins.get(plugin) else {
            return Listing {
                keys: Vec::new(),
                truncated: false,
            };
        };
        let end = prefix_end(prefix);
        let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut live = keys
            .range::<str, _>((Bound::Included(prefix), upper))
            .filter(|(_, entry)| entry.live(now))
            .map(|(key, _)| key);
        let found: Vec<String> = live.by_ref().take(limit).cloned().collect();
        Listing {
            truncated: live.next().is_some(),
            keys: found,
        }
    }

    /// Returns false once over budget: the caller then drops the mirror.
    fn set(&mut self, plugin: &str, key: &str, entry: Entry) -> bool {
        let size = key.len() + entry.value.get().len() + ROW_OVERHEAD;
        let keys = match self.plugins.get_mut(plugin) {
            Some(keys) => keys,
            None => self.plugins.entry(plugin.to_owned()).or_default(),
        };
        match keys.get_mut(key) {
            Some(old) => {
                self.bytes -= old.value.get().len();
                self.bytes += entry.value.get().len();
                *old = entry;
            }
            None => {
                keys.insert(key.to_owned(), entry);
                self.bytes += size;
            }
        }
        self.bytes <= self.budget
    }

    fn remove(&mut self, plugin: &str, key: &str) {
        if let Some(keys) = self.plugins.get_mut(plugin)
            && let Some(old) = keys.remove(key)
        {
            self.bytes -= key.len() + old.value.get().len() + ROW_OVERHEAD;
            if keys.is_empty() {
                self.plugins.remove(plugin);
            }
        }
    }

    fn purge(&mut self, now: i64) {
        let mut freed = 0;
        self.plugins.retain(|_, keys| {
            keys.retain(|key, entry| {
                let keep = entry.live(now);
                if !keep {
                    freed += key.len() + entry.value.get().len() + ROW_OVERHEAD;
                }
                keep
            });
            !keys.is_empty()
        });
        self.bytes -= freed;
    }
}

enum Write {
    Set {
        plugin: String,
        key: String,
        value: Value,
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
    /// Opens (creating if missing) the database, migrates it, loads the mirror, and starts the
    /// writer.
    pub async fn open(options: &StoreOptions) -> Result<Store, StoreError> {
        let base = SqliteConnectOptions::from_str(&options.url)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if options.synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            // Only another process can hold the lock (the service has one writer); past this a
            // write fails with INTERNAL_ERROR rather than leave its caller waiting.
            .busy_timeout(Duration::from_secs(2))
            // Only takes effect when the file is created (a WAL database keeps its page size).
            .page_size(PAGE_SIZE);
        // Migrate through a one-connection pool: `Migrator::run` on a bare connection makes the
        // future non-`Send` (sqlx's `Acquire` lifetime quirk), and this one is spawned.
        let setup = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone().create_if_missing(true))
            .await?;
        MIGRATOR.run(&setup).await?;
        setup.close().await;
        // Batch scripts differ by row count; keep the common ones prepared. Checkpoints run in
        // the background (below), so the writer's own automatic one is only a backstop.
        let mut writer = base
            .clone()
            .statement_cache_capacity(2 * MAX_BATCH + 16)
            .pragma("wal_autocheckpoint", "20000")
            .connect()
            .await?;
        // SQLite falls back to opening read-only when it cannot write (a read-only file system,
        // file or folder), and then every write would fail: refuse to start instead. The probe
        // rewrites the header's user_version with its own value inside a rolled-back transaction
        // (taking the write lock alone succeeds on a read-only WAL database).
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut writer)
            .await?;
        writer.execute("BEGIN IMMEDIATE").await?;
        let probe = writer
            .execute(AssertSqlSafe(format!("PRAGMA user_version = {version}")))
            .await;
        writer.execute("ROLLBACK").await?;
        probe.map_err(StoreError::NotWritable)?;
        let checkpointer = tokio::spawn(checkpoint_forever(base.clone().connect().await?));
        let reads = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(1)
            .connect_with(base.read_only(true))
            .await?;
        let mirror = Arc::new(RwLock::new(
            load_mirror(&reads, options.mirror_budget_bytes).await?,
        ));
        let (writes, queue) = mpsc::channel(QUEUE);
        let writer = tokio::spawn(run_writer(writer, queue, mirror.clone()));
        Ok(Store {
            writes,
            mirror,
            reads,
            writer,
            checkpointer,
        })
    }

    /// Whether reads are served from memory (false past the memory budget).
    pub fn mirrored(&self) -> bool {
        read(&self.mirror).is_some()
    }

    /// Upserts `key` with `value`; replaces any earlier TTL. Returns once committed.
    pub async fn set(
        &self,
        plugin: impl Into<String>,
        key: impl Into<String>,
        value: Value,
        ttl_seconds: Option<u32>,
    ) -> Result<(), StoreError> {
        self.write(Write::Set {
            plugin: plugin.into(),
            key: key.into(),
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

    /// The value of a live key.
    pub async fn get(&self, plugin: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let now = now_ms();
        if let Some(mirror) = read(&self.mirror).as_ref() {
            return Ok(mirror
                .get(plugin, key, now)
                .map(|entry| entry.value.clone()));
        }
        let row = sqlx::query(
            "SELECT value FROM kv \
             WHERE plugin_name = ?1 AND key = ?2 AND (expires_at IS NULL OR expires_at > ?3)",
        )
        .bind(plugin)
        .bind(key)
        .bind(now)
        .fetch_optional(&self.reads)
        .await?;
        row.map(|row| parse_value(row.get(0))).transpose()
    }

    /// Live keys starting with `prefix` (literally, bytewise), in byte order, at most `limit`.
    pub async fn list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Listing, StoreError> {
        let now = now_ms();
        if let Some(mirror) = read(&self.mirror).as_ref() {
            return Ok(mirror.list(plugin, prefix, limit as usize, now));
        }
        let fetch = i64::from(limit) + 1;
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
        self.checkpointer.abort();
        let _ = self.checkpointer.await;
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

/// A poisoned lock only means a reader panicked mid-read; the mirror itself is intact.
fn read(mirror: &RwLock<Option<Mirror>>) -> std::sync::RwLockReadGuard<'_, Option<Mirror>> {
    mirror
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_lock(mirror: &RwLock<Option<Mirror>>) -> std::sync::RwLockWriteGuard<'_, Option<Mirror>> {
    mirror
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn parse_value(text: String) -> Result<Value, StoreError> {
    RawValue::from_string(text)
        .map(Value::from)
        .map_err(StoreError::Corrupt)
}

/// Reads every row into a mirror, or returns `None` (reads from SQLite) when they do not fit
/// the budget.
async fn load_mirror(reads: &SqlitePool, budget: usize) -> Result<Option<Mirror>, StoreError> {
    if budget == 0 {
        return Ok(None);
    }
    let mut mirror = Mirror {
        budget,
        ..Mirror::default()
    };
    let rows = sqlx::query("SELECT plugin_name, key, value, expires_at FROM kv")
        .fetch_all(reads)
        .await?;
    for row in rows {
        let (plugin, key): (String, String) = (row.get(0), row.get(1));
        let value = match parse_value(row.get(2)) {
            Ok(value) => value,
            Err(err) => {
                // Serve from SQLite instead, where only this key fails (INTERNAL_ERROR).
                tracing::error!(%err, plugin, key, "corrupt row in the database: reads go to SQLite");
                return Ok(None);
            }
        };
        let entry = Entry {
            value,
            expires_at: row.get(3),
        };
        if !mirror.set(&plugin, &key, entry) {
            tracing::warn!(
                budget,
                "the data exceeds the mirror budget: reads go to SQLite"
            );
            return Ok(None);
        }
    }
    Ok(Some(mirror))
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

/// How often committed WAL frames are copied into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Copies committed WAL frames into the database file from a connection of its own, so the
/// writer never pays for a checkpoint (and its `fsync`) inside a commit. PASSIVE never blocks
/// the writer or readers.
async fn checkpoint_forever(mut conn: SqliteConnection) {
    let mut ticker = tokio::time::interval(CHECKPOINT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(err) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").await {
            tracing::warn!(%err, "background checkpoint failed; retrying");
        }
    }
}

async fn run_writer(
    mut conn: SqliteConnection,
    mut queue: mpsc::Receiver<Command>,
    mirror: Arc<RwLock<Option<Mirror>>>,
) {
    let mut batch: Vec<Command> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Let requests that are already readable queue their writes first: one yield costs
        // microseconds and fills the batch, where every extra batch costs a round trip.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let now = now_ms();
        let started = std::time::Instant::now();
        let writes: Vec<&Write> = batch.iter().map(|command| &command.write).collect();
        let outcome = {
            // Only this task changes the mirror, so reading it here without holding the lock
            // across the commit is safe: it cannot change underneath.
            let planned = read(&mirror)
                .as_ref()
                .and_then(|mirror| plan(mirror, &writes, now));
            match planned {
                Some(applied) => commit_batch(&mut conn, &writes, now)
                    .await
                    .map(|()| applied),
                None => commit_each(&mut conn, &writes, now).await,
            }
        };
        match outcome {
            Ok(applied) => {
                apply(&mirror, &writes, now);
                tracing::trace!(
                    writes = writes.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "committed"
                );
                for (command, applied) in batch.drain(..).zip(applied) {
                    let _ = command.done.send(Ok(applied));
                }
            }
            Err(err) if batch.len() == 1 || !row_level(&err) => {
                // The database itself is failing (locked, full, read-only, gone): every write
                // of the batch would fail the same way, so none is retried.
                tracing::error!(%err, writes = batch.len(), "write failed");
                let err = Arc::new(err);
                for command in batch.drain(..) {
                    let _ = command.done.send(Err(StoreError::Write(err.clone())));
                }
            }
            Err(err) => {
                // A row-level failure must not fail its neighbours: retry each alone, so every
                // caller gets its own outcome.
                tracing::warn!(%err, writes = batch.len(), "batch failed, committing its writes one by one");
                for command in batch.drain(..) {
                    let one = [&command.write];
                    let outcome = commit_each(&mut conn, &one, now).await;
                    match &outcome {
                        Ok(_) => apply(&mirror, &one, now),
                        Err(err) => tracing::error!(%err, "write failed"),
                    }
                    let _ = command
                        .done
                        .send(outcome.map(|applied| applied[0]).map_err(StoreError::from));
                }
            }
        }
    }
    if let Err(err) = conn.close().await {
        tracing::warn!(%err, "closing the write connection");
    }
}

/// Errors that belong to one row (constraint, too big, type mismatch, out of range) rather than
/// to the database as a whole: only those make retrying a batch's writes one by one worthwhile.
fn row_level(err: &sqlx::Error) -> bool {
    const TOOBIG: i32 = 18;
    const CONSTRAINT: i32 = 19;
    const MISMATCH: i32 = 20;
    const RANGE: i32 = 25;
    err.as_database_error()
        .and_then(|db| db.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, TOOBIG | CONSTRAINT | MISMATCH | RANGE))
}

/// What each write of a batch will report, worked out from the mirror (the committed state)
/// plus the batch's own earlier writes: a delete reports whether a live key was there. `None`
/// for a batch holding a purge, whose count only SQLite knows (it deletes a bounded chunk).
fn plan(mirror: &Mirror, writes: &[&Write], now: i64) -> Option<Vec<Applied>> {
    let mut overlay: BTreeMap<(&str, &str), bool> = BTreeMap::new();
    writes
        .iter()
        .map(|write| match write {
            Write::Set { plugin, key, .. } => {
                overlay.insert((plugin, key), true);
                Some(0)
            }
            Write::Delete { plugin, key } => {
                let live = overlay
                    .insert((plugin, key), false)
                    .unwrap_or_else(|| mirror.get(plugin, key, now).is_some());
                Some(u64::from(live))
            }
            Write::Purge => None,
        })
        .collect()
}

/// Applies committed writes to the mirror; drops the mirror if it outgrows its budget.
fn apply(mirror: &RwLock<Option<Mirror>>, writes: &[&Write], now: i64) {
    let mut guard = write_lock(mirror);
    let Some(mirror) = guard.as_mut() else {
        return;
    };
    let mut within_budget = true;
    for write in writes {
        match write {
            Write::Set {
                plugin,
                key,
                value,
                ttl_seconds,
            } => {
                let entry = Entry {
                    value: value.clone(),
                    expires_at: expires_at(now, *ttl_seconds),
                };
                within_budget &= mirror.set(plugin, key, entry);
            }
            Write::Delete { plugin, key } => mirror.remove(plugin, key),
            Write::Purge => mirror.purge(now),
        }
    }
    if !within_budget {
        tracing::warn!(
            budget = mirror.budget,
            "the data outgrew the mirror budget: reads go to SQLite from now on"
        );
        *guard = None;
    }
}

fn expires_at(now: i64, ttl_seconds: Option<u32>) -> Option<i64> {
    ttl_seconds.map(|ttl| now + i64::from(ttl) * 1000)
}

/// The upsert, for `rows` rows. `created_at` survives an update unless the old row had expired
/// (then the key is new again).
fn upsert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO kv (plugin_name, key, value, expires_at, created_at, updated_at) VALUES ",
    );
    push_rows(&mut sql, rows, "(?,?,?,?,?,?)");
    sql.push_str(
        " ON CONFLICT (plugin_name, key) DO UPDATE SET \
           value = excluded.value, \
           expires_at = excluded.expires_at, \
           updated_at = excluded.updated_at, \
           created_at = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= excluded.updated_at \
                             THEN excluded.created_at ELSE kv.created_at END",
    );
    sql
}

/// Deletes `rows` live keys (the first parameter is now); expired rows are left to the purge.
fn delete_sql(rows: usize) -> String {
    let mut sql = String::from(
        "DELETE FROM kv WHERE (expires_at IS NULL OR expires_at > ?) AND (plugin_name, key) IN (VALUES ",
    );
    push_rows(&mut sql, rows, "(?,?)");
    sql.push(')');
    sql
}

/// `row,row,…`: `rows` copies of a placeholder tuple (SQL text only; values are bound).
fn push_rows(sql: &mut String, rows: usize, row: &str) {
    for index in 0..rows {
        if index > 0 {
            sql.push(',');
        }
        sql.push_str(row);
    }
}

const PURGE_SQL: &str = "DELETE FROM kv WHERE (plugin_name, key) IN \
       (SELECT plugin_name, key FROM kv \
        WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)";

/// A bound parameter of a batch script.
enum Bind<'a> {
    Text(&'a str),
    Int(Option<i64>),
}

/// The whole batch sent to SQLite in a single round trip: each run of consecutive sets is one
/// multi-row upsert (the last write of a key in the run wins, as it would one by one), each run
/// of deletes one statement; several statements go as one `BEGIN IMMEDIATE; …; COMMIT` script.
async fn commit_batch(
    conn: &mut SqliteConnection,
    writes: &[&Write],
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut statements: Vec<String> = Vec::new();
    let mut binds: Vec<Bind<'_>> = Vec::with_capacity(writes.len() * 6 + 1);
    let mut start = 0;
    while start < writes.len() {
        let kind = std::mem::discriminant(writes[start]);
        let end = writes[start..]
            .iter()
            .position(|write| std::mem::discriminant(*write) != kind)
            .map_or(writes.len(), |len| start + len);
        let run = &writes[start..end];
        match run[0] {
            Write::Set { .. } => {
                let mut last: BTreeMap<(&str, &str), usize> = BTreeMap::new();
                for (index, write) in run.iter().enumerate() {
                    if let Write::Set { plugin, key, .. } = write {
                        last.insert((plugin, key), index);
                    }
                }
                statements.push(upsert_sql(last.len()));
                for (index, write) in run.iter().enumerate() {
                    if let Write::Set {
                        plugin,
                        key,
                        value,
                        ttl_seconds,
                    } = write
                        && last.get(&(plugin.as_str(), key.as_str())) == Some(&index)
                    {
                        binds.extend([
                            Bind::Text(plugin),
                            Bind::Text(key),
                            Bind::Text(value.get()),
                            Bind::Int(expires_at(now, *ttl_seconds)),
                            Bind::Int(Some(now)),
                            Bind::Int(Some(now)),
                        ]);
                    }
                }
            }
            Write::Delete { .. } => {
                statements.push(delete_sql(run.len()));
                binds.push(Bind::Int(Some(now)));
                for write in run {
                    if let Write::Delete { plugin, key } = write {
                        binds.extend([Bind::Text(plugin), Bind::Text(key)]);
                    }
                }
            }
            Write::Purge => unreachable!("`plan` sends batches with a purge to `commit_each`"),
        }
        start = end;
    }
    // One statement is atomic on its own (autocommit); several share a transaction.
    let sql = match &statements[..] {
        [single] => single.clone(),
        several => format!("BEGIN IMMEDIATE;{};COMMIT;", several.join(";")),
    };
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for bind in binds {
        query = match bind {
            Bind::Text(text) => query.bind(text),
            Bind::Int(int) => query.bind(int),
        };
    }
    let outcome = query.execute(&mut *conn).await;
    if outcome.is_err() {
        // A statement failed inside the script: end the transaction it left open.
        let _ = conn.execute("ROLLBACK").await;
    }
    outcome.map(drop)
}

/// One statement per write in one transaction, each reporting its own row count: the path when
/// there is no mirror to tell what a delete will find.
async fn commit_each(
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
                sqlx::query(AssertSqlSafe(upsert_sql(1)))
                    .bind(plugin.as_str())
                    .bind(key.as_str())
                    .bind(value.get())
                    .bind(expires_at(now, *ttl_seconds))
                    .bind(now)
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
            Write::Purge => sqlx::query(PURGE_SQL)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on a fresh file; `mirrored` false sends every read to SQLite.
    async fn fresh_with(mirrored: bool) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("kv.db").display());
        let mut options = StoreOptions::new(url);
        if !mirrored {
            options.mirror_budget_bytes = 0;
        }
        let store = Store::open(&options).await.expect("open");
        assert_eq!(store.mirrored(), mirrored);
        (dir, store)
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

    async fn row_count(store: &Store) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM kv")
            .fetch_one(&store.reads)
            .await
            .expect("count")
    }

    async fn page_size(store: &Store) -> u32 {
        sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&store.reads)
            .await
            .expect("page size")
    }

    /// New files get the small page; a file made with SQLite's default 4096 keeps it (WAL cannot
    /// change it) and serves as before.
    #[tokio::test]
    async fn new_files_use_the_small_page_and_old_files_keep_theirs() {
        let (_dir, store) = fresh_with(true).await;
        assert_eq!(page_size(&store).await, PAGE_SIZE);
        store.close().await;

        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("old.db").display());
        let mut old = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .page_size(4096)
            .connect()
            .await
            .unwrap();
        old.execute("CREATE TABLE other (x)").await.unwrap();
        old.close().await.unwrap();
        let store = Store::open(&StoreOptions::new(url)).await.expect("open");
        assert_eq!(page_size(&store).await, 4096);
        store.set("p", "k", json("1"), None).await.unwrap();
        assert_eq!(text(&store, "p", "k").await.as_deref(), Some("1"));
        store.close().await;
    }

    async fn purge_removes_only_expired_rows(mirrored: bool) {
        let (_dir, store) = fresh_with(mirrored).await;
        for key in ["short-1", "short-2", "short-3"] {
            store.set("p", key, json("1"), Some(1)).await.unwrap();
        }
        store.set("p", "long", json("2"), Some(3600)).await.unwrap();
        store.set("p", "forever", json("3"), None).await.unwrap();
        store
            .set("q", "other-plugin", json("4"), None)
            .await
            .unwrap();
        assert_eq!(
            store.purge_expired().await.unwrap(),
            0,
            "nothing expired yet"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // Expired rows are invisible before any purge, though still stored.
        assert_eq!(text(&store, "p", "short-1").await, None);
        assert!(
            !store.delete("p", "short-2").await.unwrap(),
            "an expired key is not deleted"
        );
        assert_eq!(store.purge_expired().await.unwrap(), 3);
        assert_eq!(row_count(&store).await, 3);
        let listing = store.list("p", "", 100).await.unwrap();
        assert_eq!(listing.keys, ["forever", "long"]);
        assert_eq!(
            text(&store, "q", "other-plugin").await.as_deref(),
            Some("4")
        );
        assert_eq!(store.purge_expired().await.unwrap(), 0);
        store.close().await;
    }

    #[tokio::test]
    async fn purge_removes_only_expired_rows_mirrored() {
        purge_removes_only_expired_rows(true).await;
    }

    #[tokio::test]
    async fn purge_removes_only_expired_rows_from_sqlite() {
        purge_removes_only_expired_rows(false).await;
    }

    /// The same writes, batched or not, mirrored or not, leave the same state and report the
    /// same results.
    async fn batched_writes_report_like_single_ones(mirrored: bool) {
        let (_dir, store) = fresh_with(mirrored).await;
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
        assert!(b.unwrap(), "the first delete finds the key the set wrote");
        assert!(!c.unwrap(), "the second finds nothing");
        assert!(f.unwrap());
        assert_eq!(text(&store, "p", "k").await.as_deref(), Some("[3]"));
        assert_eq!(text(&store, "p", "gone").await, None);
        assert_eq!(row_count(&store).await, 1);
        store.close().await;
    }

    #[tokio::test]
    async fn batched_writes_report_like_single_ones_mirrored() {
        batched_writes_report_like_single_ones(true).await;
    }

    #[tokio::test]
    async fn batched_writes_report_like_single_ones_from_sqlite() {
        batched_writes_report_like_single_ones(false).await;
    }

    #[tokio::test]
    async fn the_mirror_is_loaded_from_the_file_and_dropped_past_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kv.db").display());
        let store = Store::open(&StoreOptions::new(url.clone())).await.unwrap();
        store.set("p", "a", json(r#"{"x":1}"#), None).await.unwrap();
        store.set("p", "b", json("2"), Some(3600)).await.unwrap();
        store.close().await;

        let store = Store::open(&StoreOptions::new(url.clone())).await.unwrap();
        assert!(store.mirrored());
        assert_eq!(text(&store, "p", "a").await.as_deref(), Some(r#"{"x":1}"#));
        assert_eq!(store.list("p", "", 10).await.unwrap().keys, ["a", "b"]);
        store.close().await;

        let mut small = StoreOptions::new(url);
        small.mirror_budget_bytes = 2 * ROW_OVERHEAD + 10;
        let store = Store::open(&small).await.unwrap();
        assert!(store.mirrored(), "two small rows fit");
        let big = json(&format!("\"{}\"", "x".repeat(100)));
        store.set("p", "c", big, None).await.unwrap();
        assert!(!store.mirrored(), "past the budget the mirror is dropped");
        assert_eq!(store.list("p", "", 10).await.unwrap().keys, ["a", "b", "c"]);
        assert_eq!(text(&store, "p", "b").await.as_deref(), Some("2"));
        store.close().await;
    }

    #[tokio::test]
    async fn purge_works_through_more_rows_than_one_chunk() {
        let (_dir, store) = fresh_with(false).await;
        let store = Arc::new(store);
        let mut writes = tokio::task::JoinSet::new();
        for i in 0..(PURGE_CHUNK + 250) {
            let store = store.clone();
            writes.spawn(async move { store.set("p", &format!("k{i}"), json("0"), Some(1)).await });
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
        let (_dir, store) = fresh_with(false).await;
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
        let (dir, store) = fresh_with(true).await;
        store.set("p", "k", json("\"v\""), None).await.unwrap();
        // A second, independent connection sees the committed row at once.
        let url = format!("sqlite://{}", dir.path().join("kv.db").display());
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
