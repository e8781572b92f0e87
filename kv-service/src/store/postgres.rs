//! The PostgreSQL backend: any number of instances on one database, in one queue group.
//!
//! - **Reads** are statements on the database, never a mirror: another instance may have
//!   written a moment ago, and an acknowledged write must be seen by every later read on any
//!   instance. Each statement takes its snapshot when it starts (READ COMMITTED), after the
//!   request arrived and so after any write acknowledged before it. Reader tasks each own a
//!   connection and answer every get queued meanwhile with one statement.
//! - **Writes**: the writer task owns one connection and commits a batch as one autocommit
//!   statement per segment (UNNEST arrays, a `DELETE … RETURNING` and an `ON CONFLICT` upsert):
//!   one round trip and one WAL flush. A segment never touches a key twice (PostgreSQL refuses
//!   that within a statement), and its rows are sorted so that every instance locks in one
//!   order. `synchronous_commit` stays on: an acknowledged write survives a crash of the
//!   database server as well as of the service.
//! - **Time** is the database's (`kv_now_ms()` in every statement), so instances whose clocks
//!   disagree still agree on expiry.
//! - **Faults**: every statement has a server-side `statement_timeout` and, a second later, a
//!   client-side one (sqlx never cancels a query), so no request outlives them. A lost
//!   connection fails what was in flight on it and is made again on next use, with a short
//!   backoff, so the service answers again as soon as the database is back.
//!
//! sqlx cannot pipeline on PostgreSQL and its pool pings on every release, hence connections
//! owned by tasks instead of a pool.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Row as _};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::error::Elapsed;

use super::writer::{Applied, Commit, PROBE_SQL, Write, Writer};
use super::{ListedKey, Listing, Row, StoreError, StoreOptions, Value, parse_value, prefix_end};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Expired rows deleted per purge statement: each is its own short transaction, so writers
/// never wait long behind one.
const PURGE_CHUNK: i64 = 1000;
/// Most reads answered by one reader at once.
const READ_BATCH: usize = 64;
/// Reads waiting for a reader before callers wait for room.
const READ_QUEUE: usize = 4096;
/// How often a segment is tried again after a deadlock or serialization failure (the failed
/// statement committed nothing).
const CONFLICT_RETRIES: usize = 3;
/// A connection unused for this long is pinged before its next statement: the server may have
/// restarted meanwhile, and a statement on a dead connection fails where a fresh one would not.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// First and longest wait before connecting again after a failed attempt.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// An open PostgreSQL store.
#[derive(Debug)]
pub(crate) struct Postgres {
    pub(crate) writer: Writer,
    reads: mpsc::Sender<Read>,
    readers: Vec<JoinHandle<()>>,
    connector: Connector,
}

impl Postgres {
    /// Connects, migrates (instances starting together take turns: sqlx holds an advisory lock
    /// while migrating), reads the store's identity, and starts the writer and the readers,
    /// each on its own connection.
    pub(crate) async fn open(options: &StoreOptions) -> Result<(Postgres, String), StoreError> {
        let timeout = options.statement_timeout;
        let base = PgConnectOptions::from_str(&options.url)?
            .application_name("kv-service")
            .options([
                ("statement_timeout", timeout.as_millis().to_string()),
                (
                    "idle_in_transaction_session_timeout",
                    timeout.as_millis().to_string(),
                ),
                // Every statement is prepared once per connection and run thousands of times:
                // plan it once, instead of again on each run (PostgreSQL keeps re-planning
                // statements whose parameters are arrays).
                ("plan_cache_mode", "force_generic_plan".to_owned()),
            ]);
        let mut connector = Connector {
            options: base,
            timeout,
        };
        let mut setup = connector.connect().await?;
        let synchronous: String =
            sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
                .fetch_one(&mut setup)
                .await?;
        if synchronous == "off" {
            // An acknowledgement must mean durable: a commit the server has not flushed can
            // vanish in a crash after another instance has already read it.
            tracing::warn!(
                "the database has synchronous_commit=off; kv-service turns it on for its own \
                 sessions, so that an acknowledged write survives a crash of the server"
            );
            connector.options = connector.options.options([("synchronous_commit", "on")]);
        }
        // One connection at a time until the writer's and the readers' are made, so a server
        // short of slots is refused by `connect` and its clear error. Migrations go through a
        // one-connection pool: `Migrator::run` on a bare connection makes this future
        // non-`Send` (sqlx's `Acquire` lifetime quirk).
        setup.close().await?;
        let migrations = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .connect_with(connector.options.clone())
            .await?;
        let migrated = MIGRATOR.run(&migrations).await;
        let id: Result<Option<String>, sqlx::Error> =
            sqlx::query_scalar("SELECT value FROM kv_meta WHERE name = 'store_id'")
                .fetch_optional(&migrations)
                .await;
        migrations.close().await;
        migrated?;
        let id = id?.ok_or(StoreError::NoIdentity)?;
        let (reads, queue) = mpsc::channel(READ_QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        let mut readers = Vec::new();
        for _ in 0..options.read_connections.max(1) {
            let link = Link::connected(connector.clone(), connector.connect().await?);
            readers.push(tokio::spawn(read_forever(link, queue.clone())));
        }
        let writer = Writer::spawn(Committer {
            link: Link::connected(connector.clone(), connector.connect().await?),
        });
        let store = Postgres {
            writer,
            reads,
            readers,
            connector,
        };
        Ok((store, id))
    }

    /// Queued for a reader when called (see `store::enqueue`); the future waits for its answer.
    pub(crate) fn get(
        &self,
        plugin: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send + '_ {
        let (done, outcome) = oneshot::channel();
        let read = Read::Get {
            plugin: plugin.to_owned(),
            key: key.to_owned(),
            done,
        };
        let queued = super::enqueue(&self.reads, read);
        async move {
            queued.await?;
            outcome.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Queued for a reader when called, as [`Postgres::get`] is.
    pub(crate) fn list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: u32,
    ) -> impl Future<Output = Result<Listing, StoreError>> + Send + '_ {
        let (done, outcome) = oneshot::channel();
        let read = Read::List {
            plugin: plugin.to_owned(),
            prefix: prefix.to_owned(),
            limit,
            done,
        };
        let queued = super::enqueue(&self.reads, read);
        async move {
            queued.await?;
            outcome.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// On a connection of its own, beside the writer: chunk after chunk, each one statement
    /// that skips rows other transactions hold (a concurrent set, another instance's purge).
    pub(crate) async fn purge_expired(&self) -> Result<u64, StoreError> {
        let mut link = Link::connected(self.connector.clone(), self.connector.connect().await?);
        let mut total = 0;
        let outcome = loop {
            match purge_chunk(&mut link).await {
                Ok(purged) => {
                    total += purged;
                    if purged < PURGE_CHUNK as u64 {
                        break Ok(total);
                    }
                }
                Err(err) => break Err(err),
            }
        };
        link.close().await;
        outcome
    }

    pub(crate) async fn export(
        &self,
        plugin: &str,
        key: &str,
        limit: u32,
    ) -> Result<Vec<Row>, StoreError> {
        let mut link = Link::connected(self.connector.clone(), self.connector.connect().await?);
        let grace = link.grace();
        let query = sqlx::query(
            "SELECT plugin_name, key, value, expires_at, created_at, updated_at FROM kv \
             WHERE (plugin_name, key) > ($1, $2) \
               AND (expires_at IS NULL OR expires_at > kv_now_ms()) \
             ORDER BY plugin_name, key LIMIT $3",
        )
        .bind(plugin)
        .bind(key.as_bytes())
        .bind(i64::from(limit));
        let outcome = tokio::time::timeout(grace, query.fetch_all(link.conn().await?)).await;
        let rows = link.settle(outcome);
        link.close().await;
        rows?
            .into_iter()
            .map(|row| {
                Ok(Row {
                    plugin: row.get(0),
                    key: key_text(row.get(1))?,
                    value: parse_value(row.get(2))?,
                    expires_at: row.get(3),
                    created_at: row.get(4),
                    updated_at: row.get(5),
                })
            })
            .collect()
    }

    pub(crate) async fn close(self) {
        self.writer.close().await;
        drop(self.reads);
        for reader in self.readers {
            let _ = reader.await;
        }
    }

    /// The plan a prefix listing runs with: the generic plan of the prepared statement, made
    /// once per connection (`plan_cache_mode`), whatever the prefix.
    pub(crate) async fn list_query_plan(&self) -> Result<Vec<String>, StoreError> {
        use sqlx::Executor;
        let mut conn = self.connector.connect().await?;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "PREPARE kv_list_plan (text, bytea, bytea, bigint) AS {LIST_RANGE}"
        )))
        .await?;
        let rows = sqlx::query("EXPLAIN EXECUTE kv_list_plan ('p', '\\x61', '\\x62', 10)")
            .fetch_all(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(rows.into_iter().map(|row| row.get(0)).collect())
    }
}

/// How to reach the database, and how long to wait for it.
#[derive(Debug, Clone)]
struct Connector {
    options: PgConnectOptions,
    timeout: Duration,
}

impl Connector {
    async fn connect(&self) -> Result<PgConnection, StoreError> {
        match tokio::time::timeout(self.timeout, self.options.connect()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) if sqlstate(&err) == Some("53300") => Err(StoreError::NoSlots(err)),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

/// A connection owned by one task, made again on next use once lost, with a growing pause
/// between failed attempts so a database that is down is not hammered (and callers hear so at
/// once).
struct Link {
    connector: Connector,
    conn: Option<PgConnection>,
    /// When the connection last answered.
    used: Instant,
    retry_at: Instant,
    backoff: Duration,
    /// Why the last attempt to connect failed, told to callers until the next attempt.
    down: Option<Arc<StoreError>>,
}

/// How long after the server's `statement_timeout` its error may take to arrive.
const ERROR_GRACE: Duration = Duration::from_secs(1);

impl Link {
    fn connected(connector: Connector, conn: PgConnection) -> Link {
        Link {
            connector,
            conn: Some(conn),
            used: Instant::now(),
            retry_at: Instant::now(),
            backoff: BACKOFF.0,
            down: None,
        }
    }

    /// The longest a statement may take from the client's side: the server's
    /// `statement_timeout` plus [`ERROR_GRACE`] for its error to arrive.
    fn grace(&self) -> Duration {
        self.connector.timeout + ERROR_GRACE
    }

    async fn conn(&mut self) -> Result<&mut PgConnection, StoreError> {
        if self.used.elapsed() > IDLE_CHECK
            && let Some(conn) = self.conn.as_mut()
        {
            let alive = tokio::time::timeout(self.connector.timeout, conn.ping()).await;
            if matches!(alive, Ok(Ok(()))) {
                self.used = Instant::now();
            } else {
                tracing::info!("an idle database connection had gone; connecting again");
                self.conn = None;
            }
        }
        if self.conn.is_none() {
            if let Some(down) = &self.down
                && Instant::now() < self.retry_at
            {
                return Err(StoreError::Unavailable(down.clone()));
            }
            match self.connector.connect().await {
                Ok(conn) => {
                    if self.down.take().is_some() {
                        tracing::info!("connected to the database again");
                    }
                    self.backoff = BACKOFF.0;
                    self.conn = Some(conn);
                    self.used = Instant::now();
                }
                Err(err) => {
                    if self.down.is_none() {
                        tracing::error!(%err, "cannot connect to the database; retrying");
                    }
                    let err = Arc::new(err);
                    self.down = Some(err.clone());
                    self.retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(BACKOFF.1);
                    return Err(StoreError::Unavailable(err));
                }
            }
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// The result of a statement run on [`Link::conn`] under [`Link::grace`]: a connection
    /// that failed or never answered is dropped (its state is unknown), anything else kept.
    fn settle<T>(
        &mut self,
        outcome: Result<Result<T, sqlx::Error>, Elapsed>,
    ) -> Result<T, StoreError> {
        match outcome {
            Ok(Ok(value)) => {
                self.used = Instant::now();
                Ok(value)
            }
            Ok(Err(err)) => {
                if connection_lost(&err) {
                    tracing::warn!(%err, "lost the database connection");
                    self.conn = None;
                }
                Err(err.into())
            }
            Err(_) => {
                tracing::warn!(
                    timeout = ?self.grace(),
                    "the database did not answer in time; dropping the connection"
                );
                self.conn = None;
                Err(StoreError::Timeout(self.grace()))
            }
        }
    }

    async fn close(self) {
        if let Some(conn) = self.conn {
            let _ = conn.close().await;
        }
    }
}

/// The SQLSTATE of a database error.
fn sqlstate(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .map(|pg| pg.code()),
        _ => None,
    }
}

/// The connection itself is gone or unusable (I/O, protocol, the server shutting down or
/// restarting): drop it and connect again.
fn connection_lost(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => sqlstate(err).is_some_and(|code| {
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
        }),
    }
}

/// A store error that trying the same statement again may cure: a deadlock or a serialization
/// failure, where PostgreSQL rolled the statement back.
fn conflict(err: &StoreError) -> bool {
    matches!(err, StoreError::Database(err) if matches!(sqlstate(err), Some("40P01" | "40001")))
}

/// An error that belongs to one row (bad data, a constraint, a size limit) rather than to the
/// database as a whole: only those make committing a segment's writes one by one worthwhile.
fn row_level(err: &StoreError) -> bool {
    matches!(err, StoreError::Database(err)
        if sqlstate(err).is_some_and(|code| ["22", "23", "54"].contains(&&code[..2])))
}

fn key_text(bytes: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| StoreError::CorruptKey)
}

/// Keys in `[prefix, end)`: a range on the primary key (plugin_name, key), never a scan. Keys
/// are `bytea`, compared bytewise (UTF-8 byte order), which also lets them hold U+0000.
const LIST_RANGE: &str = "SELECT key FROM kv \
     WHERE plugin_name = $1 AND key >= $2 AND key < $3 \
       AND (expires_at IS NULL OR expires_at > kv_now_ms()) \
     ORDER BY key LIMIT $4";
/// Keys `>= prefix` (for an empty prefix, or one with no upper bound).
const LIST_FROM: &str = "SELECT key FROM kv \
     WHERE plugin_name = $1 AND key >= $2 \
       AND (expires_at IS NULL OR expires_at > kv_now_ms()) \
     ORDER BY key LIMIT $3";
/// Every queued get in one statement: `i` says which request a row answers.
const GET_BATCH: &str = "SELECT k.i, kv.value \
     FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS k(plugin_name, key, i) \
     JOIN kv ON kv.plugin_name = k.plugin_name AND kv.key = k.key \
     WHERE kv.expires_at IS NULL OR kv.expires_at > kv_now_ms()";

/// One segment of writes in one autocommit statement: the upserts ($1..$4: plugin, key, value,
/// TTL in ms or NULL) and the deletes ($5, $6), on disjoint keys. Returns the deletes that
/// found a live key. `created_at` survives an update unless the old row had expired (then the
/// key is new again). Data-modifying CTEs run to completion whether or not they are read.
const WRITE_SEGMENT: &str = "WITH clock AS (SELECT kv_now_ms() AS now_ms), \
     deleted AS ( \
       DELETE FROM kv USING unnest($5::text[], $6::bytea[]) AS d(plugin_name, key), clock \
       WHERE kv.plugin_name = d.plugin_name AND kv.key = d.key \
         AND (kv.expires_at IS NULL OR kv.expires_at > clock.now_ms) \
       RETURNING kv.plugin_name, kv.key), \
     upserted AS ( \
       INSERT INTO kv (plugin_name, key, value, expires_at, created_at, updated_at) \
       SELECT u.plugin_name, u.key, u.value, clock.now_ms + u.ttl_ms, clock.now_ms, clock.now_ms \
       FROM unnest($1::text[], $2::bytea[], $3::text[], $4::int8[]) \
            AS u(plugin_name, key, value, ttl_ms), clock \
       ORDER BY u.plugin_name, u.key \
       ON CONFLICT (plugin_name, key) DO UPDATE SET \
         value = excluded.value, expires_at = excluded.expires_at, \
         updated_at = excluded.updated_at, \
         created_at = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= excluded.updated_at \
                           THEN excluded.created_at ELSE kv.created_at END \
       RETURNING 1) \
     SELECT plugin_name, key FROM deleted";

/// Copied rows, exactly as they were (`kv-service copy`).
const IMPORT: &str = "INSERT INTO kv (plugin_name, key, value, expires_at, created_at, updated_at) \
     SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::int8[], $5::int8[], $6::int8[]) \
     ON CONFLICT (plugin_name, key) DO UPDATE SET value = excluded.value, \
       expires_at = excluded.expires_at, created_at = excluded.created_at, \
       updated_at = excluded.updated_at";

/// One chunk of expired rows. Both guards matter with concurrent writers: `SKIP LOCKED` passes
/// over rows a set is rewriting this instant, and the outer predicate is checked again on the
/// newest version of each row, so a key set again without a TTL after the inner select saw it
/// expired is kept (READ COMMITTED re-checks only the deleting statement's own `WHERE`).
const PURGE: &str = "DELETE FROM kv \
     WHERE expires_at IS NOT NULL AND expires_at <= kv_now_ms() \
       AND (plugin_name, key) IN ( \
         SELECT plugin_name, key FROM kv \
         WHERE expires_at IS NOT NULL AND expires_at <= kv_now_ms() \
         LIMIT $1 FOR UPDATE SKIP LOCKED)";

async fn purge_chunk(link: &mut Link) -> Result<u64, StoreError> {
    let grace = link.grace();
    let query = sqlx::query(PURGE).bind(PURGE_CHUNK);
    let outcome = tokio::time::timeout(grace, query.execute(link.conn().await?)).await;
    Ok(link.settle(outcome)?.rows_affected())
}

/// A read waiting for a reader.
enum Read {
    Get {
        plugin: String,
        key: String,
        done: oneshot::Sender<Result<Option<Value>, StoreError>>,
    },
    List {
        plugin: String,
        prefix: String,
        limit: u32,
        done: oneshot::Sender<Result<Listing, StoreError>>,
    },
}

/// A reader: takes every read queued (up to [`READ_BATCH`]), answers the gets with one
/// statement and each list with one of its own.
async fn read_forever(mut link: Link, queue: Arc<Mutex<mpsc::Receiver<Read>>>) {
    let mut batch: Vec<Read> = Vec::with_capacity(READ_BATCH);
    loop {
        {
            let mut queue = queue.lock().await;
            if queue.recv_many(&mut batch, READ_BATCH).await == 0 {
                break;
            }
            // As the writer does: let requests already readable queue theirs too.
            tokio::task::yield_now().await;
            while batch.len() < READ_BATCH {
                match queue.try_recv() {
                    Ok(read) => batch.push(read),
                    Err(_) => break,
                }
            }
        }
        let mut gets = Vec::new();
        for read in batch.drain(..) {
            match read {
                Read::Get { plugin, key, done } => gets.push((plugin, key, done)),
                Read::List {
                    plugin,
                    prefix,
                    limit,
                    done,
                } => {
                    let listing = list(&mut link, &plugin, &prefix, limit).await;
                    let _ = done.send(listing);
                }
            }
        }
        if !gets.is_empty() {
            get_batch(&mut link, gets).await;
        }
    }
    link.close().await;
}

type Get = (
    String,
    String,
    oneshot::Sender<Result<Option<Value>, StoreError>>,
);

async fn get_batch(link: &mut Link, gets: Vec<Get>) {
    let plugins: Vec<&str> = gets.iter().map(|(plugin, _, _)| plugin.as_str()).collect();
    let keys: Vec<&[u8]> = gets.iter().map(|(_, key, _)| key.as_bytes()).collect();
    let grace = link.grace();
    let outcome = match link.conn().await {
        Ok(conn) => {
            let query = sqlx::query(GET_BATCH).bind(&plugins).bind(&keys);
            let outcome = tokio::time::timeout(grace, query.fetch_all(conn)).await;
            link.settle(outcome)
        }
        Err(err) => Err(err),
    };
    let mut values: Vec<Option<Result<Value, StoreError>>> =
        std::iter::repeat_with(|| None).take(gets.len()).collect();
    let failure = match outcome {
        Ok(rows) => {
            for row in rows {
                let index: i64 = row.get(0);
                if let Some(slot) = usize::try_from(index - 1)
                    .ok()
                    .and_then(|index| values.get_mut(index))
                {
                    *slot = Some(parse_value(row.get(1)));
                }
            }
            None
        }
        Err(err) => {
            tracing::error!(%err, reads = gets.len(), "read failed");
            Some(Arc::new(err))
        }
    };
    for ((_, _, done), value) in gets.into_iter().zip(values) {
        let answer = match &failure {
            Some(err) => Err(StoreError::Shared(err.clone())),
            None => value.transpose(),
        };
        let _ = done.send(answer);
    }
}

async fn list(
    link: &mut Link,
    plugin: &str,
    prefix: &str,
    limit: u32,
) -> Result<Listing, StoreError> {
    let fetch = i64::from(limit) + 1;
    let end = prefix_end(prefix);
    let query = match &end {
        Some(end) => sqlx::query(LIST_RANGE)
            .bind(plugin)
            .bind(prefix.as_bytes())
            .bind(end.as_bytes())
            .bind(fetch),
        None => sqlx::query(LIST_FROM)
            .bind(plugin)
            .bind(prefix.as_bytes())
            .bind(fetch),
    };
    let grace = link.grace();
    let outcome = tokio::time::timeout(grace, query.fetch_all(link.conn().await?)).await;
    let rows = link.settle(outcome).inspect_err(|err| {
        tracing::error!(%err, "list failed");
    })?;
    let mut keys = rows
        .into_iter()
        .map(|row| key_text(row.get(0)).map(ListedKey::from))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let truncated = keys.len() > limit as usize;
    keys.truncate(limit as usize);
    Ok(Listing { keys, truncated })
}

/// The writer's side: one connection, and how a batch becomes statements.
struct Committer {
    link: Link,
}

impl Commit for Committer {
    async fn commit(&mut self, writes: Vec<Write>) -> Vec<Result<Applied, StoreError>> {
        let writes: Vec<&Write> = writes.iter().collect();
        let writes = writes.as_slice();
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut start = 0;
        while start < writes.len() {
            let end = segment_end(writes, start);
            let segment = &writes[start..end];
            match self.commit_segment(segment).await {
                Ok(applied) => outcomes.extend(applied.into_iter().map(Ok)),
                Err(err) if segment.len() > 1 && row_level(&err) => {
                    // One bad row must not fail its neighbours: each alone, each its own answer.
                    tracing::warn!(%err, writes = segment.len(), "segment failed, committing its writes one by one");
                    for write in segment {
                        let outcome = self.commit_segment(&[*write]).await;
                        if let Err(err) = &outcome {
                            tracing::error!(%err, "write failed");
                        }
                        outcomes.push(outcome.map(|applied| applied[0]));
                    }
                }
                Err(err) => {
                    tracing::error!(%err, writes = segment.len(), "write failed");
                    let err = Arc::new(err);
                    outcomes.extend(segment.iter().map(|_| Err(StoreError::Shared(err.clone()))));
                }
            }
            start = end;
        }
        outcomes
    }

    async fn close(self) {
        self.link.close().await;
    }
}

/// Where the segment starting at `start` ends: before the first write whose key it already
/// holds (one statement may not touch a row twice), and around an import or a purge, which go
/// alone.
fn segment_end(writes: &[&Write], start: usize) -> usize {
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    for (offset, write) in writes[start..].iter().enumerate() {
        match write.target() {
            Some(target) if seen.insert(target) => {}
            Some(_) => return start + offset,
            None if offset == 0 => return start + 1,
            None => return start + offset,
        }
    }
    writes.len()
}

impl Committer {
    /// One segment, tried again after a deadlock or serialization failure.
    async fn commit_segment(&mut self, segment: &[&Write]) -> Result<Vec<Applied>, StoreError> {
        let mut attempt = 0;
        loop {
            match self.run_segment(segment).await {
                Err(err) if conflict(&err) && attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(%err, attempt, "write conflict; trying the segment again");
                }
                outcome => return outcome,
            }
        }
    }

    async fn run_segment(&mut self, segment: &[&Write]) -> Result<Vec<Applied>, StoreError> {
        let link = &mut self.link;
        let grace = link.grace();
        match segment {
            [Write::Purge] => return Ok(vec![purge_chunk(link).await?]),
            [Write::Probe] => {
                let query = sqlx::query(PROBE_SQL);
                let outcome = tokio::time::timeout(grace, query.execute(link.conn().await?)).await;
                link.settle(outcome)?;
                return Ok(vec![0]);
            }
            [Write::Import(rows)] => {
                let query = sqlx::query(IMPORT)
                    .bind(
                        rows.iter()
                            .map(|row| row.plugin.as_str())
                            .collect::<Vec<_>>(),
                    )
                    .bind(
                        rows.iter()
                            .map(|row| row.key.as_bytes())
                            .collect::<Vec<_>>(),
                    )
                    .bind(rows.iter().map(|row| row.value.get()).collect::<Vec<_>>())
                    .bind(rows.iter().map(|row| row.expires_at).collect::<Vec<_>>())
                    .bind(rows.iter().map(|row| row.created_at).collect::<Vec<_>>())
                    .bind(rows.iter().map(|row| row.updated_at).collect::<Vec<_>>());
                let outcome = tokio::time::timeout(grace, query.execute(link.conn().await?)).await;
                link.settle(outcome)?;
                return Ok(vec![rows.len() as u64]);
            }
            _ => {}
        }
        // Sorted by (plugin, key), so that every instance takes row locks in one order.
        let mut sets: Vec<(&str, &str, &str, Option<i64>)> = Vec::new();
        let mut deletes: Vec<(&str, &str)> = Vec::new();
        for write in segment {
            match write {
                Write::Set {
                    plugin,
                    key,
                    value,
                    ttl_seconds,
                } => sets.push((
                    plugin,
                    key,
                    value.get(),
                    ttl_seconds.map(|ttl| i64::from(ttl) * 1000),
                )),
                Write::Delete { plugin, key } => deletes.push((plugin, key)),
                Write::Purge | Write::Import(_) | Write::Probe => {
                    unreachable!("`segment_end` keeps them alone")
                }
            }
        }
        sets.sort_unstable_by_key(|&(plugin, key, _, _)| (plugin, key));
        deletes.sort_unstable();
        let query = sqlx::query(WRITE_SEGMENT)
            .bind(sets.iter().map(|set| set.0).collect::<Vec<_>>())
            .bind(sets.iter().map(|set| set.1.as_bytes()).collect::<Vec<_>>())
            .bind(sets.iter().map(|set| set.2).collect::<Vec<_>>())
            .bind(sets.iter().map(|set| set.3).collect::<Vec<_>>())
            .bind(deletes.iter().map(|delete| delete.0).collect::<Vec<_>>())
            .bind(
                deletes
                    .iter()
                    .map(|delete| delete.1.as_bytes())
                    .collect::<Vec<_>>(),
            );
        let outcome = tokio::time::timeout(grace, query.fetch_all(link.conn().await?)).await;
        let found: HashSet<(String, Vec<u8>)> = link
            .settle(outcome)?
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        Ok(segment
            .iter()
            .map(|write| match write {
                Write::Delete { plugin, key } => {
                    u64::from(found.contains(&(plugin.clone(), key.as_bytes().to_vec())))
                }
                _ => 0,
            })
            .collect())
    }
}
