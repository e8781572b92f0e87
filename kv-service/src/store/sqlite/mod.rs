//! The SQLite backend: one process per database file, which it holds locked for as long as it
//! runs, so it is provably the only writer and may serve reads from its [`Mirror`].
//!
//! Writes go through one write connection, driven from a thread of its own (`commit.rs`): each
//! batch is one transaction, consecutive sets one multi-row upsert, so there is no
//! `SQLITE_BUSY` between writers. Reads come from the mirror (microseconds, no statement: sqlx
//! spends ~75 µs per statement handing it to its worker thread) while the data fits its memory
//! budget, and past it from a pool of read-only connections that WAL lets run beside the
//! writer.

mod commit;

use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Executor, Row as _};
use tokio::task::JoinHandle;

use self::commit::Committer;
use super::mirror::{self, Entry, Mirror};
use super::writer::{Write, Writer};
use super::{
    ListedKey, Listing, Row, StoreError, StoreOptions, Value, now_ms, parse_value, prefix_end,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Expired rows removed per purge transaction, so a large purge never holds the write lock long.
pub(crate) const PURGE_CHUNK: u32 = 1000;
/// Page size of a new database. Every set rewrites the whole page its row lives on into the WAL
/// (the rows of a batch land on different pages), so the WAL bytes per small set are the page
/// size: 2048 halves them against SQLite's default 4096, and small sets, the common case, are
/// measurably faster. The price: rows over ~490 bytes (~1000 at 4096) spill to overflow pages,
/// so very large values write about twice the frames.
pub(crate) const PAGE_SIZE: u32 = 2048;

/// An open SQLite store.
#[derive(Debug)]
pub(crate) struct Sqlite {
    pub(crate) writer: Writer,
    mirror: Arc<RwLock<Option<Mirror>>>,
    reads: SqlitePool,
    checkpointer: JoinHandle<()>,
    clock: Clock,
    /// The database file, held locked (`flock`) while this store is open; `None` in memory.
    _lock: Option<std::fs::File>,
}

/// This process's clock, shifted by the configured offset (tests of clock skew).
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    offset_ms: i64,
}

impl Clock {
    pub(super) fn now(self) -> i64 {
        now_ms() + self.offset_ms
    }
}

impl Sqlite {
    /// Opens (creating if missing) and locks the file, migrates it, reads the store's
    /// identity, loads the mirror and starts the writer.
    pub(crate) async fn open(options: &StoreOptions) -> Result<(Sqlite, String), StoreError> {
        let base = SqliteConnectOptions::from_str(&options.url)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if options.synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            // Only another process can hold the lock (the service has one writer); past this a
            // write fails with INTERNAL_ERROR rather than leave its caller waiting.
            .busy_timeout(commit::BUSY_TIMEOUT)
            // Only takes effect when the file is created (a WAL database keeps its page size).
            .page_size(PAGE_SIZE);
        let path = base.get_filename();
        // (sqlx names an in-memory database's file itself: the URL says what it is.)
        if options.must_exist && !options.url.contains(":memory:") && !path.exists() {
            return Err(StoreError::NoSuchFile(path.display().to_string()));
        }
        // Migrate through a one-connection pool: `Migrator::run` on a bare connection makes the
        // future non-`Send` (sqlx's `Acquire` lifetime quirk), and this one is spawned.
        let setup = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone().create_if_missing(true))
            .await?;
        // The file exists now. Lock it before changing anything, so that of two processes
        // started on one file, one serves and the other stops here.
        let lock = match lock_file(base.get_filename()) {
            Ok(lock) => lock,
            Err(err) => {
                setup.close().await;
                return Err(err);
            }
        };
        MIGRATOR.run(&setup).await?;
        let id: Option<String> =
            sqlx::query_scalar("SELECT value FROM kv_meta WHERE name = 'store_id'")
                .fetch_optional(&setup)
                .await?;
        setup.close().await;
        let id = id.ok_or(StoreError::NoIdentity)?;
        // Checkpoints run in the background (below), so the writer's own automatic one is only
        // a backstop, for a log that grows faster than the checkpointer restarts it (see
        // RESTART_FRAMES); it bounds the log file.
        let mut writer = base
            .clone()
            .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT_FRAMES)
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
        let checkpointer = tokio::spawn(checkpoint_forever(connect_checkpointer(&base).await?));
        let reads = SqlitePoolOptions::new()
            .max_connections(options.read_connections.max(1))
            .min_connections(1)
            .connect_with(base.read_only(true))
            .await?;
        let mirror = Arc::new(RwLock::new(
            load_mirror(&reads, options.mirror_budget_bytes).await?,
        ));
        let clock = Clock {
            offset_ms: options.clock_offset_ms,
        };
        let committer =
            Committer::start(writer, mirror.clone(), clock, options.synchronous_full).await?;
        let writer = Writer::spawn(committer);
        let store = Sqlite {
            writer,
            mirror,
            reads,
            checkpointer,
            clock,
            _lock: lock,
        };
        Ok((store, id))
    }

    pub(crate) fn mirror_usage(&self) -> Option<(usize, usize)> {
        mirror::read(&self.mirror).as_ref().map(Mirror::usage)
    }

    pub(crate) fn mirrored(&self) -> bool {
        mirror::read(&self.mirror).is_some()
    }

    /// A read answered from the mirror: `None` when there is no mirror (reads go to the file).
    pub(crate) fn get_mirrored(&self, plugin: &str, key: &str) -> Option<Option<Value>> {
        let now = self.clock.now();
        let mirror = mirror::read(&self.mirror);
        let found = mirror.as_ref()?.get(plugin, key, now);
        Some(found.map(|entry| entry.value.clone()))
    }

    /// [`Sqlite::get_mirrored`]'s counterpart: a listing from the mirror, if there is one.
    pub(crate) fn list_mirrored(&self, plugin: &str, prefix: &str, limit: u32) -> Option<Listing> {
        let now = self.clock.now();
        let mirror = mirror::read(&self.mirror);
        Some(mirror.as_ref()?.list(plugin, prefix, limit as usize, now))
    }

    /// A read from the file (the mirror, when there is one, is not consulted).
    pub(crate) async fn get(&self, plugin: &str, key: &str) -> Result<Option<Value>, StoreError> {
        let row = sqlx::query(
            "SELECT value FROM kv WHERE id = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
        )
        .bind(id(plugin, key))
        .bind(self.clock.now())
        .fetch_optional(&self.reads)
        .await?;
        row.map(|row| parse_value(row.get(0))).transpose()
    }

    /// A listing from the file (the mirror, when there is one, is not consulted).
    pub(crate) async fn list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Listing, StoreError> {
        let now = self.clock.now();
        let fetch = i64::from(limit) + 1;
        let start = id(plugin, prefix);
        let end = match prefix_end(prefix) {
            Some(end) => id(plugin, &end),
            // Past every id of the plugin: its name, then the byte after the separator.
            None => [plugin.as_bytes(), &[SEPARATOR + 1]].concat(),
        };
        let rows = sqlx::query(LIST_RANGE)
            .bind(start)
            .bind(end)
            .bind(now)
            .bind(fetch)
            .fetch_all(&self.reads)
            .await?;
        let mut keys = rows
            .iter()
            .map(|row| Ok(ListedKey::from(split_id(row.get(0))?.1)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let truncated = keys.len() > limit as usize;
        keys.truncate(limit as usize);
        Ok(Listing { keys, truncated })
    }

    /// Chunk after chunk through the writer, which owns the only write connection.
    pub(crate) async fn purge_expired(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let purged = self.writer.write(Write::Purge).await?;
            total += purged;
            if purged < u64::from(PURGE_CHUNK) {
                return Ok(total);
            }
        }
    }

    pub(crate) async fn export(
        &self,
        plugin: &str,
        key: &str,
        limit: u32,
    ) -> Result<Vec<Row>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, value, expires_at, created_at, updated_at FROM kv \
             WHERE id > ?1 AND (expires_at IS NULL OR expires_at > ?2) ORDER BY id LIMIT ?3",
        )
        .bind(id(plugin, key))
        .bind(self.clock.now())
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await?;
        rows.into_iter()
            .map(|row| {
                let (plugin, key) = split_id(row.get(0))?;
                Ok(Row {
                    plugin: plugin.to_owned(),
                    key: key.to_owned(),
                    value: parse_value(row.get(1))?,
                    expires_at: row.get(2),
                    created_at: row.get(3),
                    updated_at: row.get(4),
                })
            })
            .collect()
    }

    pub(crate) async fn close(self) {
        self.writer.close().await;
        self.checkpointer.abort();
        let _ = self.checkpointer.await;
        self.reads.close().await;
    }

    pub(crate) async fn list_query_plan(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(LIST_RANGE_PLAN)
            .bind(id("p", "a"))
            .bind(id("p", "b"))
            .bind(0_i64)
            .bind(10_i64)
            .fetch_all(&self.reads)
            .await?;
        Ok(rows.into_iter().map(|row| row.get("detail")).collect())
    }
}

/// Takes an exclusive `flock` on the database file, held as long as the returned file is open
/// (the kernel drops it when the process dies, kill -9 included). SQLite's own locks are
/// `fcntl` locks, which `flock` does not touch: other tools can still open the file; only a
/// second kv-service is turned away. `None` for an in-memory database (no file).
fn lock_file(path: &std::path::Path) -> Result<Option<std::fs::File>, StoreError> {
    let Ok(file) = std::fs::File::open(path) else {
        return Ok(None);
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse {
            path: path.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(err)) => {
            tracing::warn!(%err, path = %path.display(), "cannot lock the database file; a second process on it would not be refused");
            Ok(Some(file))
        }
    }
}

/// Reads every row into a mirror, or returns `None` (reads from SQLite) when they do not fit
/// the budget.
async fn load_mirror(reads: &SqlitePool, budget: usize) -> Result<Option<Mirror>, StoreError> {
    if budget == 0 {
        return Ok(None);
    }
    let mut mirror = Mirror::new(budget);
    let rows = sqlx::query("SELECT id, value, expires_at FROM kv")
        .fetch_all(reads)
        .await?;
    for row in rows {
        let (plugin, key) = split_id(row.get(0))?;
        let value = match parse_value(row.get(1)) {
            Ok(value) => value,
            Err(err) => {
                // Serve from SQLite instead, where only this key fails (INTERNAL_ERROR).
                tracing::error!(%err, plugin, key, "corrupt row in the database: reads go to SQLite");
                return Ok(None);
            }
        };
        let entry = Entry {
            value,
            expires_at: row.get(2),
        };
        if !mirror.set(plugin, key, entry) {
            tracing::warn!(
                budget,
                "the data exceeds the mirror budget: reads go to SQLite"
            );
            return Ok(None);
        }
    }
    Ok(Some(mirror))
}

/// Keys with ids in `[start, end)`: a range on the primary key, never a scan.
macro_rules! list_range {
    () => {
        "SELECT id FROM kv \
         WHERE id >= ?1 AND id < ?2 AND (expires_at IS NULL OR expires_at > ?3) \
         ORDER BY id LIMIT ?4"
    };
}
const LIST_RANGE: &str = list_range!();
const LIST_RANGE_PLAN: &str = concat!("EXPLAIN QUERY PLAN ", list_range!());

/// Ends the plugin name in a row's id (see [`id`]); plugin names never hold it.
const SEPARATOR: u8 = 0;

/// A row's primary key: the plugin name's bytes, [`SEPARATOR`], the key's bytes. The ids of one
/// plugin are contiguous and ordered as its keys' bytes are (the
/// `20261206000000_single_column_key` migration says why one column).
fn id(plugin: &str, key: &str) -> Vec<u8> {
    let mut id = Vec::with_capacity(plugin.len() + 1 + key.len());
    write_id(&mut id, plugin, key);
    id
}

/// [`id`] into a buffer the caller reuses.
fn write_id(id: &mut Vec<u8>, plugin: &str, key: &str) {
    id.clear();
    id.extend_from_slice(plugin.as_bytes());
    id.push(SEPARATOR);
    id.extend_from_slice(key.as_bytes());
}

/// The plugin name and key an [`id`] was made of.
fn split_id(id: &[u8]) -> Result<(&str, &str), StoreError> {
    let at = id
        .iter()
        .position(|&byte| byte == SEPARATOR)
        .ok_or(StoreError::CorruptKey)?;
    let text = |bytes| std::str::from_utf8(bytes).map_err(|_| StoreError::CorruptKey);
    Ok((text(&id[..at])?, text(&id[at + 1..])?))
}

/// How often committed WAL frames are copied into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// The write connection's `wal_autocheckpoint`, in frames: ~40 MB of log with 2 KB pages, a
/// backstop for when the background checkpoint cannot keep up. Higher, the log file grows
/// without bound under large values, whose long commits make the RESTART give up; the
/// measurements are in the README's benchmarks.
const WRITER_AUTOCHECKPOINT_FRAMES: &str = "20000";

/// WAL frames past which a background checkpoint also restarts the log.
///
/// Under steady writes a PASSIVE checkpoint never catches up: frames keep arriving while it
/// copies, so the log is never found fully copied and never starts over. It then grows until
/// the writer's own `wal_autocheckpoint` fires inside a commit, on the runtime thread (the rest
/// of the log copied and two `fsync`s: milliseconds in which nothing is read or answered). A
/// RESTART right after the PASSIVE pass copies only what arrived meanwhile and makes the next
/// commit start the log over. It holds the write lock while it runs, so a commit in place
/// finds the database busy and goes to the writer thread, which waits for it: the runtime
/// thread does not. Only writes that gather more than [`WRITER_AUTOCHECKPOINT_FRAMES`] between
/// two ticks still reach the backstop.
const RESTART_FRAMES: i64 = 4096;

/// How long the checkpointer's RESTART waits for the writer's transaction, then for readers
/// still using the log, before it gives up until the next tick. Short: it holds the write lock
/// while it waits for readers, and a commit waits at most [`commit::BUSY_TIMEOUT`] for it.
const RESTART_BUSY_TIMEOUT: Duration = Duration::from_millis(100);

/// The checkpointer's own connection: the store's options, with the RESTART's short wait.
async fn connect_checkpointer(
    options: &SqliteConnectOptions,
) -> Result<SqliteConnection, sqlx::Error> {
    options
        .clone()
        .busy_timeout(RESTART_BUSY_TIMEOUT)
        .connect()
        .await
}

const PASSIVE: &str = "PRAGMA wal_checkpoint(PASSIVE)";
const RESTART: &str = "PRAGMA wal_checkpoint(RESTART)";

/// Copies committed WAL frames into the database file from a connection of its own, so the
/// writer never pays for a checkpoint (and its `fsync`s) inside a commit.
async fn checkpoint_forever(mut conn: SqliteConnection) {
    let mut ticker = tokio::time::interval(CHECKPOINT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(err) = checkpoint(&mut conn).await {
            tracing::warn!(%err, "background checkpoint failed; retrying");
        }
    }
}

/// Frames in the log and frames copied, as a checkpoint reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Checkpointed {
    /// Whether the checkpoint could not finish (a RESTART that gave up waiting for the write
    /// lock or for readers).
    busy: bool,
    log: i64,
    copied: i64,
}

/// One background checkpoint: PASSIVE, which never blocks the writer or readers; then, when the
/// log has grown past [`RESTART_FRAMES`], RESTART (see there). Returns what the last one
/// reported.
async fn checkpoint(conn: &mut SqliteConnection) -> Result<Checkpointed, sqlx::Error> {
    let passive = run_checkpoint(conn, PASSIVE).await?;
    if passive.log < RESTART_FRAMES {
        return Ok(passive);
    }
    let restart = run_checkpoint(conn, RESTART).await?;
    if restart.busy {
        // A reader kept its snapshot, or a long commit the write lock, past the wait: the log
        // goes on growing until a later tick (or, at `wal_autocheckpoint`, the writer's own
        // checkpoint).
        tracing::debug!(frames = restart.log, "log in use: not restarted this time");
    }
    Ok(restart)
}

async fn run_checkpoint(
    conn: &mut SqliteConnection,
    pragma: &'static str,
) -> Result<Checkpointed, sqlx::Error> {
    let (busy, log, copied): (i64, i64, i64) = sqlx::query_as(pragma).fetch_one(conn).await?;
    Ok(Checkpointed {
        busy: busy != 0,
        log,
        copied,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::super::{Backends, Store};
    use super::*;
    use crate::store::mirror::ROW_OVERHEAD;
    use sqlx::Connection as _;

    fn url_in(dir: &tempfile::TempDir, file: &str) -> String {
        format!("sqlite://{}", dir.path().join(file).display())
    }

    /// A store on a fresh file; `mirrored` false sends every read to SQLite.
    async fn fresh_with(mirrored: bool) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut options = StoreOptions::new(url_in(&dir, "kv.db"));
        if !mirrored {
            options.mirror_budget_bytes = 0;
        }
        let store = Store::open(&options).await.expect("open");
        assert_eq!(store.mirrored(), mirrored);
        (dir, store)
    }

    fn reads(store: &Store) -> &SqlitePool {
        match &store.backend {
            Backends::Sqlite(sqlite) => &sqlite.reads,
            Backends::Postgres(_) => unreachable!("a SQLite test"),
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

    async fn page_size(store: &Store) -> u32 {
        sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(reads(store))
            .await
            .expect("page size")
    }

    /// A WAL database on a fresh file, with the store's page size, and the writer's own
    /// automatic checkpoint off (so only `checkpoint` copies frames).
    async fn wal_database(dir: &tempfile::TempDir) -> (SqliteConnectOptions, SqliteConnection) {
        let options = SqliteConnectOptions::from_str(&url_in(dir, "wal.db"))
            .unwrap()
            .journal_mode(SqliteJournalMode::Wal)
            .page_size(PAGE_SIZE)
            .create_if_missing(true);
        let mut writer = options
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .connect()
            .await
            .unwrap();
        writer.execute("CREATE TABLE t (v BLOB)").await.unwrap();
        (options, writer)
    }

    /// Appends `rows` rows of 1,500 bytes: a 2 KB page, so a WAL frame, each.
    async fn append(writer: &mut SqliteConnection, rows: i64) {
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
             INSERT INTO t SELECT zeroblob(1500) FROM n",
        )
        .bind(rows)
        .execute(writer)
        .await
        .unwrap();
    }

    /// A reader inside a read transaction: its snapshot keeps a checkpoint from copying the
    /// frames committed after it started (as frames committed while a checkpoint copies do).
    async fn pinning_reader(options: &SqliteConnectOptions) -> SqliteConnection {
        let mut reader = options.connect().await.unwrap();
        reader.execute("BEGIN").await.unwrap();
        let _: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&mut reader)
            .await
            .unwrap();
        reader
    }

    /// A log of `frames` (plus 50) frames that a PASSIVE pass cannot copy whole: a reader's
    /// snapshot (returned, still open) stops it 50 frames short, as frames committed during the
    /// copy do under steady writes. Also the writer and the checkpointer's connection.
    async fn log_held_short(
        dir: &tempfile::TempDir,
        frames: i64,
    ) -> (SqliteConnection, SqliteConnection, SqliteConnection) {
        let (options, mut writer) = wal_database(dir).await;
        append(&mut writer, frames).await;
        let reader = pinning_reader(&options).await;
        append(&mut writer, 50).await;
        let checkpointer = connect_checkpointer(&options).await.unwrap();
        (writer, reader, checkpointer)
    }

    /// The log grown past RESTART_FRAMES and not fully copied by the PASSIVE pass: the RESTART
    /// copies the rest once the reader is gone, and the next commit starts the log over. With
    /// PASSIVE alone the log would only grow.
    #[tokio::test]
    async fn a_grown_log_is_restarted_though_the_first_pass_fell_short() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, mut reader, mut checkpointer) =
            log_held_short(&dir, RESTART_FRAMES + 100).await;
        let passive = run_checkpoint(&mut checkpointer, PASSIVE).await.unwrap();
        assert!(passive.copied < passive.log, "{passive:?}");
        // The reader finishes while the restart waits for it.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            reader.execute("COMMIT").await.unwrap();
            reader
        });
        let done = checkpoint(&mut checkpointer).await.unwrap();
        let _reader = release.await.unwrap();
        assert!(!done.busy, "{done:?}");
        assert_eq!(done.copied, done.log, "{done:?}");
        assert!(done.log > RESTART_FRAMES, "{done:?}");
        append(&mut writer, 1).await;
        let after = run_checkpoint(&mut checkpointer, PASSIVE).await.unwrap();
        assert!(after.log < 10, "the log started over: {after:?}");
    }

    /// A reader that stays: the RESTART gives up after its short wait, reports it, and leaves
    /// the write lock free.
    #[tokio::test]
    async fn a_restart_gives_up_on_a_reader_that_stays_and_frees_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _reader, mut checkpointer) =
            log_held_short(&dir, RESTART_FRAMES + 100).await;
        let started = std::time::Instant::now();
        let done = checkpoint(&mut checkpointer).await.unwrap();
        assert!(done.busy, "{done:?}");
        assert!(done.copied < done.log, "{done:?}");
        assert!(
            started.elapsed() < commit::BUSY_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        writer.execute("PRAGMA busy_timeout = 0").await.unwrap();
        append(&mut writer, 1).await;
    }

    /// A log short of RESTART_FRAMES is only copied (PASSIVE): the checkpointer neither takes
    /// the write lock nor waits for the reader, however long the reader stays.
    #[tokio::test]
    async fn a_short_log_is_copied_without_waiting_for_anyone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, _reader, mut checkpointer) = log_held_short(&dir, 100).await;
        let started = std::time::Instant::now();
        let done = checkpoint(&mut checkpointer).await.unwrap();
        assert!(!done.busy, "{done:?}");
        assert!(done.copied < done.log, "{done:?}");
        assert!(
            started.elapsed() < RESTART_BUSY_TIMEOUT,
            "{:?}",
            started.elapsed()
        );
        writer.execute("PRAGMA busy_timeout = 0").await.unwrap();
        append(&mut writer, 1).await;
    }

    #[test]
    fn an_id_splits_back_into_its_plugin_and_key() {
        for (plugin, key) in [
            ("p", "k"),
            ("my-plugin_2", "nul\u{0}in\u{0}key"),
            ("p", "é 😀"),
            ("p", ""),
        ] {
            assert_eq!(split_id(&id(plugin, key)).unwrap(), (plugin, key));
        }
        assert!(matches!(
            split_id(b"no separator"),
            Err(StoreError::CorruptKey)
        ));
        assert!(matches!(split_id(b"p\0\xff"), Err(StoreError::CorruptKey)));
        // One plugin's ids sort as its keys' bytes, and apart from every other plugin's, also
        // one whose name starts with this one's.
        let mut ids = [
            id("p-x", "a"),
            id("p", "b"),
            id("p", "a\u{0}"),
            id("p", "a"),
            id("o", "z"),
        ];
        ids.sort();
        let order: Vec<_> = ids.iter().map(|id| split_id(id).unwrap()).collect();
        assert_eq!(
            order,
            [
                ("o", "z"),
                ("p", "a"),
                ("p", "a\u{0}"),
                ("p", "b"),
                ("p-x", "a")
            ]
        );
    }

    /// A file made before the single-column key (migrations 1 and 2 applied, rows keyed by
    /// `(plugin_name, key)`) opens with every row, timestamp and expiry as it was.
    #[tokio::test]
    async fn a_store_made_with_the_two_column_key_is_migrated_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let url = url_in(&dir, "kv.db");
        let mut old = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        let before = MIGRATOR
            .iter()
            .filter(|migration| migration.version < 20261206000000)
            .cloned()
            .collect::<Vec<_>>();
        assert_eq!(before.len(), 2);
        sqlx::migrate::Migrator::with_migrations(before)
            .run(&mut old)
            .await
            .unwrap();
        let far = now_ms() + 3_600_000;
        for (plugin, key, value, expires_at) in [
            ("p", "a", "1", None),
            ("p", "nul\u{0}key", "\"x\"", Some(far)),
            ("p", "é", "{\"n\":null}", None),
            ("p-x", "a", "2", None),
            ("p", "gone", "3", Some(1)),
        ] {
            sqlx::query("INSERT INTO kv VALUES (?1, ?2, ?3, ?4, 7, 8)")
                .bind(plugin)
                .bind(key)
                .bind(value)
                .bind(expires_at)
                .execute(&mut old)
                .await
                .unwrap();
        }
        old.close().await.unwrap();

        for mirrored in [false, true] {
            let mut options = StoreOptions::new(url.clone());
            if !mirrored {
                options.mirror_budget_bytes = 0;
            }
            let store = Store::open(&options).await.unwrap();
            assert_eq!(store.mirrored(), mirrored);
            assert_eq!(text(&store, "p", "a").await.as_deref(), Some("1"));
            assert_eq!(
                text(&store, "p", "nul\u{0}key").await.as_deref(),
                Some("\"x\"")
            );
            assert_eq!(
                text(&store, "p", "é").await.as_deref(),
                Some("{\"n\":null}")
            );
            assert_eq!(text(&store, "p-x", "a").await.as_deref(), Some("2"));
            assert_eq!(
                text(&store, "p", "gone").await,
                None,
                "expired stays expired"
            );
            assert_eq!(
                store.list("p", "", 10).await.unwrap().key_strs(),
                ["a", "nul\u{0}key", "é"]
            );
            assert_eq!(
                store.list("p", "nul", 10).await.unwrap().key_strs(),
                ["nul\u{0}key"]
            );
            let rows = store.export(None, 10).await.unwrap();
            let rows: Vec<_> = rows
                .iter()
                .map(|row| {
                    let times = (row.expires_at, row.created_at, row.updated_at);
                    (
                        row.plugin.as_str(),
                        row.key.as_str(),
                        row.value.get(),
                        times,
                    )
                })
                .collect();
            assert_eq!(
                rows,
                [
                    ("p", "a", "1", (None, 7, 8)),
                    ("p", "nul\u{0}key", "\"x\"", (Some(far), 7, 8)),
                    ("p", "é", "{\"n\":null}", (None, 7, 8)),
                    ("p-x", "a", "2", (None, 7, 8)),
                ]
            );
            store.close().await;
        }
    }

    /// New files get the small page; a file made with SQLite's default 4096 keeps it (WAL cannot
    /// change it) and serves as before.
    #[tokio::test]
    async fn new_files_use_the_small_page_and_old_files_keep_theirs() {
        let (_dir, store) = fresh_with(true).await;
        assert_eq!(page_size(&store).await, PAGE_SIZE);
        store.close().await;

        let dir = tempfile::tempdir().expect("temp dir");
        let url = url_in(&dir, "old.db");
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

    #[tokio::test]
    async fn the_mirror_is_loaded_from_the_file_and_dropped_past_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let url = url_in(&dir, "kv.db");
        let store = Store::open(&StoreOptions::new(url.clone())).await.unwrap();
        store.set("p", "a", json(r#"{"x":1}"#), None).await.unwrap();
        store.set("p", "b", json("2"), Some(3600)).await.unwrap();
        store.close().await;

        let store = Store::open(&StoreOptions::new(url.clone())).await.unwrap();
        assert!(store.mirrored());
        assert_eq!(text(&store, "p", "a").await.as_deref(), Some(r#"{"x":1}"#));
        assert_eq!(
            store.list("p", "", 10).await.unwrap().key_strs(),
            ["a", "b"]
        );
        store.close().await;

        let mut small = StoreOptions::new(url);
        // Keys of 1 byte (3 rendered) each, values of 7 and 1 bytes: exactly the two rows.
        small.mirror_budget_bytes = 2 * ROW_OVERHEAD + (1 + 3 + 7) + (1 + 3 + 1);
        let store = Store::open(&small).await.unwrap();
        assert!(store.mirrored(), "two small rows fit");
        let big = json(&format!("\"{}\"", "x".repeat(100)));
        store.set("p", "c", big, None).await.unwrap();
        assert!(!store.mirrored(), "past the budget the mirror is dropped");
        assert_eq!(
            store.list("p", "", 10).await.unwrap().key_strs(),
            ["a", "b", "c"]
        );
        assert_eq!(text(&store, "p", "b").await.as_deref(), Some("2"));
        store.close().await;
    }

    #[tokio::test]
    async fn prefix_listing_is_an_index_range_not_a_scan() {
        let (_dir, store) = fresh_with(false).await;
        let plan = store.list_query_plan().await.unwrap();
        assert_eq!(
            plan,
            ["SEARCH kv USING PRIMARY KEY (id>? AND id<?)"],
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
        let mut other = SqliteConnectOptions::from_str(&url_in(&dir, "kv.db"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let value: String =
            sqlx::query_scalar("SELECT value FROM kv_rows WHERE plugin_name = 'p' AND key = 'k'")
                .fetch_one(&mut other)
                .await
                .unwrap();
        assert_eq!(value, "\"v\"");
        store.close().await;
    }

    /// Two stores on one file would each trust a mirror the other does not update: the second
    /// is refused, naming the file and the ways out, and may open once the first has closed.
    #[tokio::test]
    async fn a_second_store_on_one_file_is_refused_until_the_first_closes() {
        let (dir, first) = fresh_with(true).await;
        let url = url_in(&dir, "kv.db");
        let refused = Store::open(&StoreOptions::new(url.clone()))
            .await
            .expect_err("the file is taken");
        let message = refused.to_string();
        assert!(matches!(refused, StoreError::InUse { .. }), "{message}");
        assert!(
            message.contains(&dir.path().join("kv.db").display().to_string())
                && message.contains("in use by another kv-service process")
                && message.contains("DATABASE_URL=postgres://"),
            "{message}"
        );
        // Other tools may still read the file.
        let mut other = SqliteConnectOptions::from_str(&url)
            .unwrap()
            .read_only(true)
            .connect()
            .await
            .unwrap();
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM kv")
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert_eq!(count, 0);
        first.close().await;
        let second = Store::open(&StoreOptions::new(url))
            .await
            .expect("free again");
        second.close().await;
    }

    #[tokio::test]
    async fn the_identity_is_made_once_with_the_file() {
        let (dir, store) = fresh_with(true).await;
        let id = store.id().to_owned();
        assert_eq!(id.len(), 32, "128 random bits in hex: {id}");
        store.close().await;
        let again = Store::open(&StoreOptions::new(url_in(&dir, "kv.db")))
            .await
            .unwrap();
        assert_eq!(again.id(), id, "reopening keeps it");
        again.close().await;
        let (_other_dir, other) = fresh_with(true).await;
        assert_ne!(other.id(), id, "another file has its own");
        other.close().await;
    }
}
