//! SQLite's side of group commit: the write connection, driven from a thread of its own.
//!
//! sqlx opens the connection (options, pragmas, migrations, the writability probe) and owns it
//! throughout; this thread borrows its raw handle through sqlx's handle lock and makes the
//! calls itself with rusqlite. Through sqlx, every batch was a script built as text, its
//! arguments copied into sqlx's own values, handed to sqlx's worker thread and its rows handed
//! back: about a fifth of a set's instructions in the service (the README's instruction
//! table). Here a batch is bound and stepped in place, with statements prepared once.
//!
//! The thread still runs beside the runtime, as sqlx's worker did: a commit (and, with
//! `--synchronous-full`, its fsync, or a wait for a lock another process holds) never stalls
//! the requests being parsed meanwhile. It applies each commit to the mirror before anyone
//! hears of it, so a read sees exactly the committed state.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, RwLock};

use rusqlite::{Connection, ErrorCode, Statement};
use sqlx::Connection as _;
use sqlx::sqlite::{LockedSqliteHandle, SqliteConnection};
use tokio::sync::oneshot;

use super::super::StoreError;
use super::super::mirror::{self, Entry, Mirror};
use super::super::writer::{Applied, Commit, MAX_BATCH, PROBE_SQL, Write};
use super::{Clock, PURGE_CHUNK};

/// One batch for the thread, and where its outcomes go.
struct Job {
    writes: Vec<Write>,
    done: oneshot::Sender<Vec<Result<Applied, StoreError>>>,
}

/// The writer task's handle on the thread.
pub(super) struct Committer {
    jobs: mpsc::Sender<Job>,
    finished: oneshot::Receiver<()>,
}

impl Committer {
    /// Starts the thread on `conn` (sqlx's, already set up and probed) and waits until it holds
    /// the handle.
    pub(super) async fn start(
        conn: SqliteConnection,
        mirror: Arc<RwLock<Option<Mirror>>>,
        clock: Clock,
    ) -> Result<Committer, StoreError> {
        let (jobs, queue) = mpsc::channel();
        let (ready_tx, ready) = oneshot::channel();
        let (finished_tx, finished) = oneshot::channel();
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("kv-sqlite-writer".into())
            .spawn(move || {
                serve(&runtime, conn, &mirror, clock, &queue, ready_tx);
                let _ = finished_tx.send(());
            })
            .map_err(StoreError::WriterThread)?;
        ready.await.map_err(|_| StoreError::Closed)??;
        Ok(Committer { jobs, finished })
    }
}

impl Commit for Committer {
    async fn commit(&mut self, writes: Vec<Write>) -> Vec<Result<Applied, StoreError>> {
        let count = writes.len();
        let (done, outcomes) = oneshot::channel();
        if self.jobs.send(Job { writes, done }).is_err() {
            return (0..count).map(|_| Err(StoreError::Closed)).collect();
        }
        outcomes
            .await
            .unwrap_or_else(|_| (0..count).map(|_| Err(StoreError::Closed)).collect())
    }

    async fn close(self) {
        drop(self.jobs);
        let _ = self.finished.await;
    }
}

/// The thread: borrow the handle, commit batches until the queue closes, hand the connection
/// back to sqlx and close it.
fn serve(
    runtime: &tokio::runtime::Handle,
    mut conn: SqliteConnection,
    mirror: &RwLock<Option<Mirror>>,
    clock: Clock,
    queue: &mpsc::Receiver<Job>,
    ready: oneshot::Sender<Result<(), StoreError>>,
) {
    match runtime.block_on(conn.lock_handle()) {
        Ok(mut handle) => match borrow(&mut handle) {
            Ok(db) => {
                let _ = ready.send(Ok(()));
                let mut session = Session::new(&db);
                for job in queue {
                    let outcomes = session.commit(job.writes, mirror, clock.now());
                    let _ = job.done.send(outcomes);
                }
                // Statements before the connection, the connection before the lock.
                drop(session);
                drop(db);
            }
            Err(err) => {
                let _ = ready.send(Err(StoreError::Sqlite(err)));
            }
        },
        Err(err) => {
            let _ = ready.send(Err(StoreError::Database(err)));
        }
    }
    if let Err(err) = runtime.block_on(conn.close()) {
        tracing::warn!(%err, "closing the write connection");
    }
}

/// A rusqlite connection on the handle sqlx's lock holds out.
#[allow(unsafe_code)]
fn borrow(handle: &mut LockedSqliteHandle<'_>) -> rusqlite::Result<Connection> {
    // SAFETY: the pointer is sqlx's open `sqlite3*`, valid for as long as `handle` is held, and
    // sqlx's worker thread makes no call on it meanwhile: that is what the lock is for. rusqlite
    // does not take ownership of a handle it is given this way: dropping the connection
    // finalizes the statements it prepared and leaves the handle open. `serve` drops it (and
    // every statement, which borrow it) before `handle`, the only place this is called from.
    // Both crates link the one libsqlite3-sys (Cargo.toml pins rusqlite to sqlx's), so the
    // handle is of the library that made it.
    unsafe { Connection::from_handle(handle.as_raw_handle().as_ptr()) }
}

/// The statements of the write path, prepared once on first use: a multi-row upsert for each
/// run length seen (at most [`MAX_BATCH`]), and one statement for each other kind of write.
struct Session<'db> {
    db: &'db Connection,
    upserts: Vec<Option<Statement<'db>>>,
}

impl<'db> Session<'db> {
    fn new(db: &'db Connection) -> Self {
        // Single-row statements go through rusqlite's cache.
        db.set_prepared_statement_cache_capacity(8);
        Session {
            db,
            upserts: (0..=MAX_BATCH).map(|_| None).collect(),
        }
    }

    /// Commits `writes` in one transaction and applies what committed to the mirror; one
    /// outcome per write, in order.
    fn commit(
        &mut self,
        writes: Vec<Write>,
        mirror: &RwLock<Option<Mirror>>,
        now: i64,
    ) -> Vec<Result<Applied, StoreError>> {
        match self.transaction(&writes, now) {
            Ok(outcomes) => {
                apply(mirror, &writes, &outcomes, now);
                outcomes
            }
            Err(err) => {
                // The database itself is failing (locked, full, read-only, gone): every write
                // of the batch fails the same way, and nothing of it was committed.
                if !self.db.is_autocommit() {
                    let _ = self.db.execute_batch("ROLLBACK");
                }
                tracing::error!(%err, writes = writes.len(), "write failed");
                let err = Arc::new(StoreError::Sqlite(err));
                writes
                    .iter()
                    .map(|_| Err(StoreError::Shared(err.clone())))
                    .collect()
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
                            outcomes.push(
                                alone(self.upsert(std::slice::from_ref(write), now))?.map(|()| 0),
                            );
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
        let mut last: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for (index, write) in run.iter().enumerate() {
            if let Write::Set { plugin, key, .. } = write {
                last.insert((plugin, key), index);
            }
        }
        let rows = last.len();
        let statement = match &mut self.upserts[rows] {
            Some(statement) => statement,
            slot => slot.insert(self.db.prepare(&upsert_sql(rows))?),
        };
        let mut parameter = 1;
        for (index, write) in run.iter().enumerate() {
            if let Write::Set {
                plugin,
                key,
                value,
                ttl_seconds,
            } = write
                && last.get(&(plugin.as_str(), key.as_str())) == Some(&index)
            {
                statement.raw_bind_parameter(parameter, plugin.as_str())?;
                statement.raw_bind_parameter(parameter + 1, key.as_str())?;
                statement.raw_bind_parameter(parameter + 2, value.get())?;
                statement.raw_bind_parameter(parameter + 3, expires_at(now, *ttl_seconds))?;
                statement.raw_bind_parameter(parameter + 4, now)?;
                statement.raw_bind_parameter(parameter + 5, now)?;
                parameter += 6;
            }
        }
        let executed = statement.raw_execute().map(drop);
        // A prepared statement keeps its last arguments (copies of them) until rebound: a
        // statement of 64 rows would hold 64 values of up to 64 KB each, for every row count.
        statement.clear_bindings();
        executed
    }

    /// Any write but a set, as its own statement.
    fn one(&mut self, write: &Write, now: i64) -> rusqlite::Result<Applied> {
        let db = self.db;
        let changed = match write {
            Write::Set { .. } => {
                self.upsert(std::slice::from_ref(write), now)?;
                0
            }
            Write::Delete { plugin, key } => {
                db.prepare_cached(DELETE_SQL)?
                    .execute((plugin.as_str(), key.as_str(), now))?
            }
            Write::Purge => db.prepare_cached(PURGE_SQL)?.execute((now, PURGE_CHUNK))?,
            Write::Probe => {
                db.prepare_cached(PROBE_SQL)?.execute([])?;
                0
            }
            Write::Import(rows) => {
                let mut statement = db.prepare_cached(IMPORT_SQL)?;
                for row in rows {
                    statement.execute((
                        row.plugin.as_str(),
                        row.key.as_str(),
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

/// The upsert, for `rows` rows. `created_at` survives an update unless the old row had expired
/// (then the key is new again).
fn upsert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO kv (plugin_name, key, value, expires_at, created_at, updated_at) VALUES ",
    );
    for index in 0..rows {
        if index > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?)");
    }
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

/// Deletes a live key; expired rows are left to the purge.
const DELETE_SQL: &str = "DELETE FROM kv \
     WHERE plugin_name = ?1 AND key = ?2 AND (expires_at IS NULL OR expires_at > ?3)";

/// One chunk of expired rows.
const PURGE_SQL: &str = "DELETE FROM kv WHERE (plugin_name, key) IN \
       (SELECT plugin_name, key FROM kv \
        WHERE expires_at IS NOT NULL AND expires_at <= ?1 LIMIT ?2)";

/// One copied row, exactly as it was.
const IMPORT_SQL: &str = "INSERT INTO kv (plugin_name, key, value, expires_at, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
     ON CONFLICT (plugin_name, key) DO UPDATE SET value = excluded.value, \
       expires_at = excluded.expires_at, created_at = excluded.created_at, \
       updated_at = excluded.updated_at";

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;

    /// The store's table, with one value it refuses (a row-level error, as a value over
    /// SQLite's length limit would be).
    fn database() -> Connection {
        let db = Connection::open_in_memory().unwrap();
        db.execute_batch(
            "CREATE TABLE kv (plugin_name TEXT NOT NULL, key TEXT NOT NULL, \
               value TEXT NOT NULL CHECK (value <> '\"refused\"'), expires_at INTEGER, \
               created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, \
               PRIMARY KEY (plugin_name, key)) WITHOUT ROWID",
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

    fn rows(db: &Connection) -> Vec<(String, String)> {
        let mut statement = db
            .prepare("SELECT key, value FROM kv ORDER BY key")
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

    #[test]
    fn a_batch_of_sets_keeps_the_last_write_of_each_key() {
        let db = database();
        let mirror = RwLock::new(Some(Mirror::new(1 << 20)));
        let mut session = Session::new(&db);
        let done = session.commit(
            vec![set("a", "1"), set("b", "2"), set("a", "3")],
            &mirror,
            10,
        );
        assert_eq!(outcomes(&done), [Some(0), Some(0), Some(0)]);
        assert_eq!(
            rows(&db),
            [("a".into(), "3".into()), ("b".into(), "2".into())]
        );
        assert_eq!(mirrored(&mirror, "a").as_deref(), Some("3"));
        assert!(db.is_autocommit(), "no transaction left open");
    }

    #[test]
    fn a_refused_write_fails_alone_and_is_not_mirrored() {
        let db = database();
        let mirror = RwLock::new(Some(Mirror::new(1 << 20)));
        let mut session = Session::new(&db);
        // Sets only: the one-statement path, then each set alone.
        let done = session.commit(
            vec![set("a", "1"), set("b", r#""refused""#), set("c", "3")],
            &mirror,
            10,
        );
        assert_eq!(outcomes(&done), [Some(0), None, Some(0)]);
        assert!(
            matches!(done[1], Err(StoreError::Sqlite(_))),
            "{:?}",
            done[1]
        );
        // Mixed: one transaction, the refused set on its own inside it.
        let done = session.commit(
            vec![
                delete("a"),
                set("d", r#""refused""#),
                set("e", "5"),
                delete("a"),
            ],
            &mirror,
            11,
        );
        assert_eq!(outcomes(&done), [Some(1), None, Some(0), Some(0)]);
        assert_eq!(
            rows(&db),
            [("c".into(), "3".into()), ("e".into(), "5".into())]
        );
        for (key, expected) in [
            ("a", None),
            ("b", None),
            ("c", Some("3")),
            ("d", None),
            ("e", Some("5")),
        ] {
            assert_eq!(mirrored(&mirror, key).as_deref(), expected, "{key}");
        }
        // A lone refused set: its own error, nothing else touched.
        let done = session.commit(vec![set("f", r#""refused""#)], &mirror, 12);
        assert_eq!(outcomes(&done), [None]);
        assert_eq!(rows(&db).len(), 2);
        assert!(db.is_autocommit(), "no transaction left open");
    }

    #[test]
    fn a_failing_database_fails_the_whole_batch_and_commits_none_of_it() {
        let db = database();
        let mirror = RwLock::new(Some(Mirror::new(1 << 20)));
        let mut session = Session::new(&db);
        db.execute_batch("PRAGMA query_only = ON").unwrap();
        let done = session.commit(vec![set("a", "1"), delete("b"), set("c", "3")], &mirror, 10);
        assert_eq!(outcomes(&done), [None, None, None]);
        assert!(
            done.iter()
                .all(|outcome| matches!(outcome, Err(StoreError::Shared(_))))
        );
        db.execute_batch("PRAGMA query_only = OFF").unwrap();
        assert!(rows(&db).is_empty());
        assert_eq!(mirrored(&mirror, "a"), None);
        assert!(db.is_autocommit(), "the failed transaction was rolled back");
        let done = session.commit(vec![set("a", "1")], &mirror, 11);
        assert_eq!(
            outcomes(&done),
            [Some(0)],
            "serves again once the database does"
        );
    }
}
