//! SQLite's side of group commit: the write connection sqlx opened, driven with rusqlite.
//!
//! sqlx opens the connection (options, pragmas, migrations, the writability probe) and owns it
//! throughout; a thread of ours holds sqlx's handle lock for as long as the store is open, and
//! the connection is used through rusqlite while it is held. Through sqlx, every batch would be
//! a script built as text, its arguments copied into sqlx's own values, handed to sqlx's
//! worker thread and its rows handed back.
//!
//! Where a batch is committed: a small one (sets, deletes and probes, up to [`INLINE_BYTES`] of
//! values; a few tens of microseconds) right where the writer task runs, without waiting for
//! a lock, because handing it to a thread and back (two wake-ups) cost about as much as the
//! commit itself, and group commit waits on exactly that (README, benchmarks). Everything that
//! could hold the runtime up goes to the thread: large batches, purges, imports, every commit
//! with `--synchronous-full` (an fsync each), and a batch that found the
//! database locked by another connection (another process, or the background checkpoint
//! restarting the log: the thread waits for the lock, up to the busy timeout).
//! Either way the mirror is updated before anyone hears of the commit, so a read sees exactly
//! the committed state.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode};
use sqlx::Connection as _;
use sqlx::sqlite::{LockedSqliteHandle, SqliteConnection};
use tokio::sync::oneshot;

use super::super::mirror::{self, Entry, Mirror};
use super::super::writer::{self, Applied, Commit, MAX_BATCH, PROBE_SQL, Write};
use super::super::{StoreError, Value};
use super::{Clock, PURGE_CHUNK};

/// Most bytes of values a batch committed in place may carry: past it, the commit writes enough
/// WAL frames (a 2 KB page per 2 KB) to hold the runtime up noticeably, and the thread does it.
pub(super) const INLINE_BYTES: usize = 256 * 1024;

/// How long a commit on the thread waits for a lock another connection holds before it fails
/// (commits in place never wait: they go to the thread instead).
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a commit on the thread tries a locked database again. SQLite's own busy handler
/// sleeps 1, 2, 5, 10 ms and more between tries; the lock it meets is mostly the background
/// checkpoint's RESTART, held for a few milliseconds, and every queued write waits for this
/// commit, so it looks again soon after the lock is free rather than up to 5 ms later.
const BUSY_RETRY: Duration = Duration::from_micros(200);

/// The thread's busy handler: sleep [`BUSY_RETRY`] and try again, for about [`BUSY_TIMEOUT`].
fn retry_soon(tries: i32) -> bool {
    let waited = BUSY_RETRY.saturating_mul(u32::try_from(tries).unwrap_or(0));
    if waited >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(BUSY_RETRY);
    true
}

/// One batch for the thread, and where its outcomes go.
struct Job {
    writes: Vec<Write>,
    done: oneshot::Sender<Vec<Result<Applied, StoreError>>>,
}

/// The write connection, shared by the writer task (commits in place) and the thread (the
/// rest); used only under the lock, and never after the thread has taken it back.
struct Shared {
    /// `None` once the thread has taken the connection back (shutdown, or the thread failing).
    db: Option<Connection>,
    /// The upsert's SQL for each run length, made once (rusqlite caches its statements by SQL).
    upserts: Vec<Option<String>>,
}

/// The writer task's side.
pub(super) struct Committer {
    shared: Arc<Mutex<Shared>>,
    mirror: Arc<RwLock<Option<Mirror>>>,
    clock: Clock,
    /// Whether small batches may be committed in place (not with `--synchronous-full`).
    inline: bool,
    jobs: mpsc::Sender<Job>,
    finished: oneshot::Receiver<()>,
}

impl Committer {
    /// Starts the thread on `conn` (sqlx's, already set up and probed) and waits until the
    /// connection is ready for commits.
    pub(super) async fn start(
        conn: SqliteConnection,
        mirror: Arc<RwLock<Option<Mirror>>>,
        clock: Clock,
        synchronous_full: bool,
    ) -> Result<Committer, StoreError> {
        let shared = Arc::new(Mutex::new(Shared {
            db: None,
            upserts: (0..=MAX_BATCH).map(|_| None).collect(),
        }));
        let (jobs, queue) = mpsc::channel();
        let (ready_tx, ready) = oneshot::channel();
        let (finished_tx, finished) = oneshot::channel();
        let runtime = tokio::runtime::Handle::current();
        let thread = Thread {
            shared: shared.clone(),
            mirror: mirror.clone(),
            clock,
        };
        std::thread::Builder::new()
            .name("kv-sqlite-writer".into())
            .spawn(move || {
                thread.serve(&runtime, conn, &queue, ready_tx);
                let _ = finished_tx.send(());
            })
            .map_err(StoreError::WriterThread)?;
        ready.await.map_err(|_| StoreError::Closed)??;
        Ok(Committer {
            shared,
            mirror,
            clock,
            inline: !synchronous_full,
            jobs,
            finished,
        })
    }

    /// Commits `writes` here and now if they are small and the database is free; `None` sends
    /// them to the thread.
    fn commit_in_place(&self, writes: &[Write]) -> Option<Vec<Result<Applied, StoreError>>> {
        if !in_place(self.inline, writes) {
            return None;
        }
        let mut shared = lock(&self.shared);
        let Shared { db, upserts } = &mut *shared;
        let mut session = Session {
            db: db.as_ref()?,
            upserts,
        };
        session.commit(writes, &self.mirror, self.clock.now(), Wait::No)
    }
}

impl Commit for Committer {
    async fn commit(&mut self, writes: Vec<Write>) -> Vec<Result<Applied, StoreError>> {
        if let Some(outcomes) = self.commit_in_place(&writes) {
            return outcomes;
        }
        let count = writes.len();
        let (done, outcomes) = oneshot::channel();
        if self.jobs.send(Job { writes, done }).is_err() {
            return (0..count).map(|_| Err(StoreError::Closed)).collect();
        }
        outcomes
            .await
            .unwrap_or_else(|_| (0..count).map(|_| Err(StoreError::Closed)).collect())
    }

    fn first_part(&self, writes: &[Write]) -> usize {
        first_part(self.inline, writes)
    }

    async fn close(self) {
        drop(self.jobs);
        let _ = self.finished.await;
    }
}

/// Whether `writes` are committed in place (unless the database is locked): small sets,
/// deletes and probes, and only when `inline` (not with `--synchronous-full`).
fn in_place(inline: bool, writes: &[Write]) -> bool {
    let small = writes.iter().try_fold(0_usize, |bytes, write| match write {
        Write::Set { value, .. } => Some(bytes + value.get().len()),
        Write::Delete { .. } | Write::Probe => Some(bytes),
        Write::Purge | Write::Import(_) => None,
    });
    inline && small.is_some_and(|bytes| bytes <= INLINE_BYTES)
}

/// [`Commit::first_part`] for SQLite: a batch committed in place holds up the runtime thread,
/// so it goes in two parts; one committed on the thread does not (and with
/// `--synchronous-full` each part would cost an fsync).
fn first_part(inline: bool, writes: &[Write]) -> usize {
    if in_place(inline, writes) {
        writer::half(writes.len())
    } else {
        writes.len()
    }
}

/// The thread's side.
struct Thread {
    shared: Arc<Mutex<Shared>>,
    mirror: Arc<RwLock<Option<Mirror>>>,
    clock: Clock,
}

impl Thread {
    /// Takes sqlx's handle lock, puts the connection where commits find it, commits the batches
    /// sent here until the queue closes, then takes the connection back, releases the lock and
    /// closes the connection.
    fn serve(
        &self,
        runtime: &tokio::runtime::Handle,
        mut conn: SqliteConnection,
        queue: &mpsc::Receiver<Job>,
        ready: oneshot::Sender<Result<(), StoreError>>,
    ) {
        match runtime.block_on(conn.lock_handle()) {
            Ok(mut handle) => {
                // Declared after `handle`, so dropped before it, also when unwinding.
                let _release = Release(&self.shared);
                match borrow(&mut handle).and_then(prepare) {
                    Ok(db) => {
                        lock(&self.shared).db = Some(db);
                        let _ = ready.send(Ok(()));
                        for job in queue {
                            let mut shared = lock(&self.shared);
                            let Shared { db, upserts } = &mut *shared;
                            let outcomes = match db {
                                Some(db) => {
                                    let mut session = Session { db, upserts };
                                    let now = self.clock.now();
                                    session.commit(&job.writes, &self.mirror, now, Wait::Yes)
                                }
                                None => None,
                            };
                            drop(shared);
                            let outcomes = outcomes.unwrap_or_else(|| {
                                job.writes.iter().map(|_| Err(StoreError::Closed)).collect()
                            });
                            let _ = job.done.send(outcomes);
                        }
                    }
                    Err(err) => {
                        let _ = ready.send(Err(StoreError::Sqlite(err)));
                    }
                }
            }
            Err(err) => {
                let _ = ready.send(Err(StoreError::Database(err)));
            }
        }
        if let Err(err) = runtime.block_on(conn.close()) {
            tracing::warn!(%err, "closing the write connection");
        }
    }
}

/// Takes the connection back from where commits find it, before sqlx's handle lock is released
/// (see `borrow`), whichever way the thread ends.
struct Release<'a>(&'a Mutex<Shared>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let db = lock(self.0).db.take();
        drop(db);
    }
}

/// The shared connection; a panic while it was held leaves it as consistent as SQLite left it.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A rusqlite connection on the handle sqlx's lock holds out.
#[allow(unsafe_code)]
fn borrow(handle: &mut LockedSqliteHandle<'_>) -> rusqlite::Result<Connection> {
    // SAFETY: the pointer is sqlx's open `sqlite3*`, valid for as long as `handle` is held, and
    // sqlx's worker thread makes no call on it meanwhile: that is what the lock is for. rusqlite
    // does not take ownership of a handle it is given this way: dropping the connection
    // finalizes the statements it prepared and leaves the handle open. The connection is used
    // only under `Shared`'s mutex (never by two threads at once, which SQLite's multi-thread
    // mode, sqlx's, allows), and `Thread::serve` takes it back out and drops it (`Release`,
    // declared after `handle`, also when unwinding) before `handle` is dropped; this is
    // called from there alone. Both crates link the one libsqlite3-sys (Cargo.toml pins
    // rusqlite to sqlx's), so the handle is of the library that made it.
    unsafe { Connection::from_handle(handle.as_raw_handle().as_ptr()) }
}

/// The write connection's statements besides the upserts (one per batch size): BEGIN, COMMIT,
/// delete, purge, probe, import, with room to spare.
const OTHER_STATEMENTS: usize = 8;

/// Settings of the write connection ours alone: every statement of every batch size stays
/// prepared, and commits in place do not wait for locks (see [`BUSY_TIMEOUT`]).
fn prepare(db: Connection) -> rusqlite::Result<Connection> {
    db.set_prepared_statement_cache_capacity(MAX_BATCH + OTHER_STATEMENTS);
    db.busy_timeout(Duration::ZERO)?;
    Ok(db)
}

/// Whether a commit may wait for a lock another process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// In place: a locked database sends the batch to the thread instead.
    No,
    /// On the thread: up to [`BUSY_TIMEOUT`].
    Yes,
}

/// Commits batches on the write connection.
struct Session<'a> {
    db: &'a Connection,
    upserts: &'a mut Vec<Option<String>>,
}

impl Session<'_> {
    /// Commits `writes` in one transaction and applies what committed to the mirror; one
    /// outcome per write, in order. `None` (only with [`Wait::No`]): another process holds the
    /// database's lock, and nothing was done.
    fn commit(
        &mut self,
        writes: &[Write],
        mirror: &RwLock<Option<Mirror>>,
        now: i64,
        wait: Wait,
    ) -> Option<Vec<Result<Applied, StoreError>>> {
        if wait == Wait::Yes {
            let _ = self.db.busy_handler(Some(retry_soon));
        }
        let outcome = self.transaction(writes, now);
        if wait == Wait::Yes {
            let _ = self.db.busy_handler(None);
        }
        match outcome {
            Ok(outcomes) => {
                apply(mirror, writes, &outcomes, now);
                Some(outcomes)
            }
            Err(err) => {
                // Nothing of the batch was committed: end the transaction if it is still open.
                if !self.db.is_autocommit() {
                    let _ = self.db.execute_batch("ROLLBACK");
                }
                if wait == Wait::No && err.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) {
                    return None;
                }
                // The database itself is failing (locked, full, read-only, gone): every write
                // of the batch fails the same way.
                tracing::error!(%err, writes = writes.len(), "write failed");
                let err = Arc::new(StoreError::Sqlite(err));
                Some(
                    writes
                        .iter()
                        .map(|_| Err(StoreError::Shared(err.clone())))
                        .collect(),
                )
            }
        }
    }

    /// One transaction: each run of consecutive sets as one multi-row upsert, every other
    /// write as its own statement. A write that fails alone (a row-level error: SQLite rolls
    /// back only that statement) gets its own error and its neighbours still commit; any
    /// other error ends the transaction and is returned.
    fn transaction(
        &mut self,
        writes: &[Write],
        now: i64,
    ) -> rusqlite::Result<Vec<Result<Applied, StoreError>>> {
        // A batch of sets only (the usual one) is one statement, atomic on its own: without
        // BEGIN and COMMIT around it, two statements fewer per batch. It fails as a whole, so a
        // row-level failure takes the transaction below, where each set gets its own outcome.
        if writes
            .iter()
            .all(|write| matches!(write, Write::Set { .. }))
        {
            match self.upsert(writes, now) {
                Ok(()) => return Ok(writes.iter().map(|_| Ok(0)).collect()),
                Err(err) if row_level(&err) && writes.len() > 1 => {}
                Err(err) => return Ok(vec![alone(Err(err))?]),
            }
        }
        self.db.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut start = 0;
        while start < writes.len() {
            let sets = writes[start..]
                .iter()
                .take_while(|write| matches!(write, Write::Set { .. }))
                .count();
            if sets > 0 {
                let run = &writes[start..start + sets];
                match self.upsert(run, now) {
                    Ok(()) => outcomes.extend(run.iter().map(|_| Ok(0))),
                    Err(err) if row_level(&err) && run.len() > 1 => {
                        tracing::warn!(%err, writes = run.len(), "batch failed, committing its writes one by one");
                        for write in run {
                            let one = self.upsert(std::slice::from_ref(write), now);
                            outcomes.push(alone(one)?.map(|()| 0));
                        }
                    }
                    Err(err) => outcomes.push(alone(Err(err))?),
                }
                start += sets;
            } else {
                outcomes.push(alone(self.one(&writes[start], now))?);
                start += 1;
            }
        }
        self.db.prepare_cached("COMMIT")?.execute([])?;
        Ok(outcomes)
    }

    /// Upserts a run of sets with one statement; the last write of a key in the run wins, as
    /// it would one by one.
    fn upsert(&mut self, run: &[Write], now: i64) -> rusqlite::Result<()> {
        // Sorted by key, a key's writes lie together, the last first: keeping the first of each
        // key leaves the writes that win, as distinct keys (one statement may not write a row
        // twice). Cheaper than hashing every key; keys are compared before plugins, as they
        // differ far more often.
        let mut rows: Vec<(&str, &str, usize, &Value, Option<u32>)> = Vec::with_capacity(run.len());
        rows.extend(
            run.iter()
                .enumerate()
                .filter_map(|(index, write)| match write {
                    Write::Set {
                        plugin,
                        key,
                        value,
                        ttl_seconds,
                    } => Some((key.as_str(), plugin.as_str(), index, value, *ttl_seconds)),
                    _ => None,
                }),
        );
        if rows.len() > 1 {
            rows.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(b.2.cmp(&a.2)));
            rows.dedup_by(|later, first| (later.0, later.1) == (first.0, first.1));
        }
        let sql = self.upserts[rows.len()].get_or_insert_with(|| upsert_sql(rows.len()));
        let mut statement = self.db.prepare_cached(sql)?;
        // SQLite copies each argument as it is bound: one buffer serves every row's id.
        let mut id = Vec::new();
        for (row, (key, plugin, _, value, ttl_seconds)) in rows.into_iter().enumerate() {
            let parameter = 1 + row * UPSERT_COLUMNS;
            super::write_id(&mut id, plugin, key);
            statement.raw_bind_parameter(parameter, id.as_slice())?;
            statement.raw_bind_parameter(parameter + 1, value.get())?;
            statement.raw_bind_parameter(parameter + 2, expires_at(now, ttl_seconds))?;
            statement.raw_bind_parameter(parameter + 3, now)?;
            statement.raw_bind_parameter(parameter + 4, now)?;
        }
        // The cache clears the arguments when the statement goes back to it: a statement of
        // 64 rows holds no copies of 64 values once done.
        statement.raw_execute().map(drop)
    }

    /// Any write but a set, as its own statement.
    fn one(&mut self, write: &Write, now: i64) -> rusqlite::Result<Applied> {
        let db = self.db;
        let changed = match write {
            Write::Set { .. } => {
                self.upsert(std::slice::from_ref(write), now)?;
                0
            }
            Write::Delete { plugin, key } => db
                .prepare_cached(DELETE_SQL)?
                .execute((super::id(plugin, key), now))?,
            Write::Purge => db.prepare_cached(PURGE_SQL)?.execute((now, PURGE_CHUNK))?,
            Write::Probe => {
                db.prepare_cached(PROBE_SQL)?.execute([])?;
                0
            }
            Write::Import(rows) => {
                let mut statement = db.prepare_cached(IMPORT_SQL)?;
                for row in rows {
                    statement.execute((
                        super::id(&row.plugin, &row.key),
                        row.value.get(),
                        row.expires_at,
                        row.created_at,
                        row.updated_at,
                    ))?;
                }
                rows.len()
            }
        };
        Ok(changed as Applied)
    }
}

/// A write's own outcome when its error is row-level; any other error is the transaction's.
fn alone<T>(outcome: rusqlite::Result<T>) -> rusqlite::Result<Result<T, StoreError>> {
    match outcome {
        Ok(value) => Ok(Ok(value)),
        Err(err) if row_level(&err) => {
            tracing::error!(%err, "write failed");
            Ok(Err(StoreError::Sqlite(err)))
        }
        Err(err) => Err(err),
    }
}

/// Errors that belong to one row (constraint, too big, type mismatch, out of range) rather than
/// to the database as a whole: SQLite rolls back only the statement, and the transaction goes on.
fn row_level(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(
            ErrorCode::TooBig
                | ErrorCode::ConstraintViolation
                | ErrorCode::TypeMismatch
                | ErrorCode::ParameterOutOfRange
        )
    )
}

/// Applies the writes that committed to the mirror; drops the mirror if it outgrows its budget.
fn apply(
    mirror: &RwLock<Option<Mirror>>,
    writes: &[Write],
    outcomes: &[Result<Applied, StoreError>],
    now: i64,
) {
    let mut guard = mirror::write_lock(mirror);
    let Some(mirror) = guard.as_mut() else {
        return;
    };
    let mut within_budget = true;
    let committed = writes
        .iter()
        .zip(outcomes)
        .filter(|(_, outcome)| outcome.is_ok());
    for (write, _) in committed {
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
            Write::Probe => {}
            Write::Import(rows) => {
                for row in rows {
                    let entry = Entry {
                        value: row.value.clone(),
                        expires_at: row.expires_at,
                    };
                    within_budget &= mirror.set(&row.plugin, &row.key, entry);
                }
            }
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

/// The values each row of the upsert binds: id, value, expires_at, created_at, updated_at.
const UPSERT_COLUMNS: usize = 5;

/// The upsert, for `rows` rows. `created_at` survives an update unless the old row had expired
/// (then the key is new again).
fn upsert_sql(rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO kv (id, value, expires_at, created_at, updated_at) VALUES ");
    for index in 0..rows {
        if index > 0 {
            sql.push(',');
        }
        sql.push('(');
        for column in 0..UPSERT_COLUMNS {
            sql.push_str(if column == 0 { "?" } else { ",?" });
        }
        sql.push(')');
    }
    sql.push_str(
        " ON CONFLICT (id) DO UPDATE SET \
           value = excluded.value, \
           expires_at = excluded.expires_at, \
           updated_at = excluded.updated_at, \
           created_at = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= excluded.updated_at \
                             THEN excluded.created_at ELSE kv.created_at END",
    );
    sql
}

/// Deletes a live key; expired rows are left to the purge.
const DELETE_SQL: &str = "DELETE FROM kv WHERE id = ?1 AND (expires_at IS NULL OR expires_at > ?2)";

/// One chunk of expired rows.
const PURGE_SQL: &str = "DELETE FROM kv WHERE id IN \
       (SELECT id FROM kv \
        WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)";

/// One copied row, exactly as it was.
const IMPORT_SQL: &str = "INSERT INTO kv (id, value, expires_at, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT (id) DO UPDATE SET value = excluded.value, \
       expires_at = excluded.expires_at, created_at = excluded.created_at, \
       updated_at = excluded.updated_at";

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    /// The store's schema, made by its migrations (the ones sqlx runs) in order.
    fn migrate(db: &Connection) {
        for migration in super::super::MIGRATOR.iter() {
            db.execute_batch(migration.sql.as_str()).unwrap();
        }
    }

    /// The store's schema, with one value it refuses (a row-level error, as a value over
    /// SQLite's length limit would be).
    fn database() -> Connection {
        let db = Connection::open_in_memory().unwrap();
        migrate(&db);
        db.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON kv WHEN NEW.value = '\"refused\"' \
               BEGIN SELECT RAISE(ABORT, 'refused'); END",
        )
        .unwrap();
        db
    }

    fn set(key: &str, value: &str) -> Write {
        Write::Set {
            plugin: "p".into(),
            key: key.into(),
            value: Arc::from(RawValue::from_string(value.into()).unwrap()),
            ttl_seconds: None,
        }
    }

    fn delete(key: &str) -> Write {
        Write::Delete {
            plugin: "p".into(),
            key: key.into(),
        }
    }

    #[test]
    fn only_a_batch_committed_in_place_is_split() {
        let sets: Vec<Write> = (0..20).map(|i| set(&format!("k{i}"), "1")).collect();
        assert_eq!(first_part(true, &sets), 10);
        // `--synchronous-full`: every commit on the thread, each part an fsync.
        assert_eq!(first_part(false, &sets), 20);
        let mut with_purge: Vec<Write> = (0..19).map(|i| delete(&format!("k{i}"))).collect();
        with_purge.push(Write::Purge);
        assert_eq!(first_part(true, &with_purge), 20);
        // Past INLINE_BYTES of values the batch goes to the thread.
        let big = format!("\"{}\"", "x".repeat(INLINE_BYTES / 16));
        let large: Vec<Write> = (0..20).map(|i| set(&format!("k{i}"), &big)).collect();
        assert_eq!(first_part(true, &large), 20);
        // Half of them fits: in place, split.
        assert_eq!(first_part(true, &large[..10]), 8);
    }

    fn rows(db: &Connection) -> Vec<(String, String)> {
        let mut statement = db
            .prepare("SELECT key, value FROM kv_rows ORDER BY key")
            .unwrap();
        statement
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn mirrored(mirror: &RwLock<Option<Mirror>>, key: &str) -> Option<String> {
        let mirror = mirror::read(mirror);
        let entry = mirror.as_ref().unwrap().get("p", key, 0)?;
        Some(entry.value.get().to_owned())
    }

    fn outcomes(outcomes: &[Result<Applied, StoreError>]) -> Vec<Option<Applied>> {
        outcomes
            .iter()
            .map(|outcome| outcome.as_ref().ok().copied())
            .collect()
    }

    /// A mirror, and `writes` committed on `db` through a session as the thread runs one.
    struct Bench {
        db: Connection,
        upserts: Vec<Option<String>>,
        mirror: RwLock<Option<Mirror>>,
    }

    impl Bench {
        fn new() -> Bench {
            Bench {
                db: database(),
                upserts: vec![None; MAX_BATCH + 1],
                mirror: RwLock::new(Some(Mirror::new(1 << 20))),
            }
        }

        fn commit(
            &mut self,
            writes: Vec<Write>,
            wait: Wait,
        ) -> Option<Vec<Result<Applied, StoreError>>> {
            let mut session = Session {
                db: &self.db,
                upserts: &mut self.upserts,
            };
            session.commit(&writes, &self.mirror, 10, wait)
        }
    }

    #[test]
    fn a_batch_of_sets_keeps_the_last_write_of_each_key() {
        let mut bench = Bench::new();
        let done = bench.commit(vec![set("a", "1"), set("b", "2"), set("a", "3")], Wait::Yes);
        assert_eq!(outcomes(&done.unwrap()), [Some(0), Some(0), Some(0)]);
        assert_eq!(
            rows(&bench.db),
            [("a".into(), "3".into()), ("b".into(), "2".into())]
        );
        assert_eq!(mirrored(&bench.mirror, "a").as_deref(), Some("3"));
        assert!(bench.db.is_autocommit(), "no transaction left open");
    }

    #[test]
    fn a_refused_write_fails_alone_and_is_not_mirrored() {
        let mut bench = Bench::new();
        // Sets only: the one-statement path, then each set alone.
        let done = bench
            .commit(
                vec![set("a", "1"), set("b", r#""refused""#), set("c", "3")],
                Wait::Yes,
            )
            .unwrap();
        assert_eq!(outcomes(&done), [Some(0), None, Some(0)]);
        assert!(
            matches!(done[1], Err(StoreError::Sqlite(_))),
            "{:?}",
            done[1]
        );
        // Mixed: one transaction, the refused set on its own inside it.
        let done = bench
            .commit(
                vec![
                    delete("a"),
                    set("d", r#""refused""#),
                    set("e", "5"),
                    delete("a"),
                ],
                Wait::Yes,
            )
            .unwrap();
        assert_eq!(outcomes(&done), [Some(1), None, Some(0), Some(0)]);
        assert_eq!(
            rows(&bench.db),
            [("c".into(), "3".into()), ("e".into(), "5".into())]
        );
        for (key, expected) in [
            ("a", None),
            ("b", None),
            ("c", Some("3")),
            ("d", None),
            ("e", Some("5")),
        ] {
            assert_eq!(mirrored(&bench.mirror, key).as_deref(), expected, "{key}");
        }
        // A lone refused set: its own error, nothing else touched.
        let done = bench
            .commit(vec![set("f", r#""refused""#)], Wait::Yes)
            .unwrap();
        assert_eq!(outcomes(&done), [None]);
        assert_eq!(rows(&bench.db).len(), 2);
        assert!(bench.db.is_autocommit(), "no transaction left open");
    }

    #[test]
    fn a_failing_database_fails_the_whole_batch_and_commits_none_of_it() {
        let mut bench = Bench::new();
        bench.db.execute_batch("PRAGMA query_only = ON").unwrap();
        let done = bench
            .commit(vec![set("a", "1"), delete("b"), set("c", "3")], Wait::No)
            .expect("a failing database is answered, not handed on");
        assert_eq!(outcomes(&done), [None, None, None]);
        assert!(
            done.iter()
                .all(|outcome| matches!(outcome, Err(StoreError::Shared(_))))
        );
        bench.db.execute_batch("PRAGMA query_only = OFF").unwrap();
        assert!(rows(&bench.db).is_empty());
        assert_eq!(mirrored(&bench.mirror, "a"), None);
        assert!(
            bench.db.is_autocommit(),
            "the failed transaction was rolled back"
        );
        let done = bench.commit(vec![set("a", "1")], Wait::No).unwrap();
        assert_eq!(
            outcomes(&done),
            [Some(0)],
            "serves again once the database does"
        );
    }

    /// A bench on a WAL file in `dir`, set up as the write connection is, and a second
    /// connection holding the file's write lock (in `BEGIN IMMEDIATE`; `COMMIT` frees it).
    fn locked_elsewhere(dir: &tempfile::TempDir) -> (Bench, Connection) {
        let path = dir.path().join("kv.db");
        let mut bench = Bench::new();
        bench.db = Connection::open(&path).unwrap();
        bench.db.execute_batch("PRAGMA journal_mode = WAL").unwrap();
        migrate(&bench.db);
        bench.db.busy_timeout(Duration::ZERO).unwrap();
        let other = Connection::open(&path).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        (bench, other)
    }

    /// Another connection holding the write lock for a few milliseconds (as the background
    /// checkpoint's RESTART does): a commit on the thread waits and commits once it is free;
    /// the handler gives up after about BUSY_TIMEOUT.
    #[test]
    fn a_commit_on_the_thread_waits_for_a_short_lock() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bench, other) = locked_elsewhere(&dir);
        let held = Duration::from_millis(30);
        let holder = std::thread::spawn(move || {
            std::thread::sleep(held);
            other.execute_batch("COMMIT").unwrap();
        });
        let started = std::time::Instant::now();
        let done = bench.commit(vec![set("a", "1")], Wait::Yes).unwrap();
        let waited = started.elapsed();
        holder.join().unwrap();
        assert_eq!(outcomes(&done), [Some(0)]);
        assert!(waited >= held, "{waited:?}");
        assert!(waited < BUSY_TIMEOUT, "{waited:?}");
        assert_eq!(rows(&bench.db), [("a".into(), "1".into())]);
        // The handler itself: tries again until about BUSY_TIMEOUT has passed.
        assert!(retry_soon(0));
        let tries_in_timeout = BUSY_TIMEOUT.as_micros() / BUSY_RETRY.as_micros();
        assert!(retry_soon(i32::try_from(tries_in_timeout).unwrap() - 1));
        assert!(!retry_soon(i32::try_from(tries_in_timeout).unwrap()));
    }

    /// Another process holding the write lock: a commit in place gives the batch back at once,
    /// untouched, for the thread, which waits for the lock.
    #[test]
    fn a_locked_database_sends_the_batch_on_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bench, other) = locked_elsewhere(&dir);
        let started = std::time::Instant::now();
        assert!(
            bench
                .commit(vec![set("a", "1"), delete("b")], Wait::No)
                .is_none()
        );
        assert!(bench.commit(vec![set("a", "1")], Wait::No).is_none());
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert!(bench.db.is_autocommit());
        assert_eq!(mirrored(&bench.mirror, "a"), None);
        other.execute_batch("COMMIT").unwrap();
        let done = bench
            .commit(vec![set("a", "1"), delete("b")], Wait::Yes)
            .unwrap();
        assert_eq!(outcomes(&done), [Some(0), Some(0)]);
        assert_eq!(rows(&bench.db), [("a".into(), "1".into())]);
    }
}
