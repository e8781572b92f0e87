//! The key-value store behind the service. Nothing outside this module sees SQL: the handlers
//! speak `set`/`get`/`delete`/`list`, the purge task `purge_expired`, `kv-service copy`
//! `export`/`import`. Two backends sit behind the same methods, chosen by the URL:
//!
//! - **SQLite** (`sqlite://…`, the embedded default): one process per file, which it holds
//!   locked so a second process refuses to start. Being provably the only writer, it serves
//!   reads from an in-memory mirror (`mirror.rs`); expiry follows this process's clock.
//! - **PostgreSQL** (`postgres://…` or `postgresql://…`): any number of instances on one
//!   database. No mirror (another instance may have written since), so every read is a
//!   statement, batched; expiry follows the database's clock, so instances whose clocks
//!   disagree still agree on it.
//!
//! Either way writes go through one writer task per process (`writer.rs`: group commit), and a
//! caller hears back only after the commit that holds its write. Each store has an identity,
//! made when the database is created, that instances advertise so that instances on different
//! stores never share one queue group.

mod mirror;
mod postgres;
mod sqlite;
mod writer;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A stored value: JSON text, shared without copying between the store and replies.
pub type Value = Arc<RawValue>;

/// Whether `c` may stand in a URL scheme's name (RFC 3986: letters, digits, `+`, `-`, `.`).
pub(crate) fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+-.".contains(c)
}

/// Which database a URL names: `postgres://` and `postgresql://` are PostgreSQL; `sqlite:` URLs
/// and bare paths are SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Any other `scheme://` is refused, rather than opened as a SQLite file of that name.
    pub(crate) fn of(url: &str) -> Result<Backend, StoreError> {
        let Some((scheme, _)) = url.split_once("://") else {
            return Ok(Backend::Sqlite);
        };
        let is = |name: &str| scheme.eq_ignore_ascii_case(name);
        if is("postgres") || is("postgresql") {
            Ok(Backend::Postgres)
        } else if is("sqlite") {
            Ok(Backend::Sqlite)
        } else {
            // Named only when it is a scheme's shape: what precedes `://` in a mistyped URL
            // may be a password.
            let shaped = scheme.chars().all(is_scheme_char);
            Err(StoreError::UnsupportedScheme(
                (shaped && !scheme.is_empty()).then(|| scheme.to_owned()),
            ))
        }
    }

    /// `sqlite` / `postgres`: how instances advertise it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the store opens its database.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://path/to/kv.db` (created if missing), `sqlite::memory:`, or
    /// `postgres://user@host/db`.
    pub url: String,
    /// SQLite: `synchronous=FULL` instead of `NORMAL`, to also survive power loss, at a cost
    /// per commit. Either way a committed write survives the process being killed.
    pub synchronous_full: bool,
    /// Connections serving reads: SQLite's read-only pool (used when the mirror is off) or
    /// PostgreSQL's reader tasks.
    pub read_connections: u32,
    /// SQLite: memory the in-memory mirror may use; past it (or at 0) reads go to the file.
    pub mirror_budget_bytes: usize,
    /// PostgreSQL: the longest a statement may run (`statement_timeout`) and, with a second
    /// of grace, the longest the service waits for any answer from the database.
    pub statement_timeout: Duration,
    /// Shifts this process's clock (for tests of clock skew). Only SQLite reads the process
    /// clock; on PostgreSQL expiry is the database's business and this changes nothing.
    pub clock_offset_ms: i64,
    /// SQLite: refuse a file that does not exist instead of creating it (a store to copy from,
    /// where a mistyped path would otherwise be an empty store, copied as 0 keys).
    pub must_exist: bool,
}

/// Connections serving reads unless told otherwise (the command line's default too).
pub const DEFAULT_READ_CONNECTIONS: u32 = 2;
/// MiB the SQLite read mirror may use unless told otherwise (the command line's default too).
pub const DEFAULT_MIRROR_MB: usize = 48;
/// PostgreSQL statement timeout, in milliseconds, unless told otherwise (the command line's
/// default too).
pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 5000;

impl StoreOptions {
    /// Defaults for `url`: WAL with `synchronous=NORMAL`, [`DEFAULT_READ_CONNECTIONS`] readers,
    /// a [`DEFAULT_MIRROR_MB`] MiB mirror, a [`DEFAULT_STATEMENT_TIMEOUT_MS`] statement timeout.
    pub fn new(url: impl Into<String>) -> Self {
        StoreOptions {
            url: url.into(),
            synchronous_full: false,
            read_connections: DEFAULT_READ_CONNECTIONS,
            mirror_budget_bytes: DEFAULT_MIRROR_MB << 20,
            statement_timeout: Duration::from_millis(DEFAULT_STATEMENT_TIMEOUT_MS),
            clock_offset_ms: 0,
            must_exist: false,
        }
    }
}

/// A storage failure. Its text is for the log and for startup errors; clients see a generic
/// message. A variant shows its cause in its message and does not also return it from
/// `source()`, so a chain of errors names each cause once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// From SQLite's write connection (`sqlite/commit.rs`).
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    #[error("cannot start the SQLite writer thread: {0}")]
    WriterThread(std::io::Error),
    #[error("database migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("stored value is not valid JSON: {0}")]
    Corrupt(serde_json::Error),
    #[error("a stored key is malformed (not UTF-8, or in SQLite without its plugin name)")]
    CorruptKey,
    /// One failure reported to every caller it failed (a batch, a read batch).
    #[error(transparent)]
    Shared(Arc<StoreError>),
    #[error("the store's writer has stopped")]
    Closed,
    #[error(
        "the database cannot be written (check the file system and the permissions of the \
         file and its folder): {0}"
    )]
    NotWritable(sqlx::Error),
    #[error(
        "{path} is in use by another kv-service process, and a SQLite file has exactly one: \
         stop that process, give this one a file of its own, or run every instance on one \
         PostgreSQL database (DATABASE_URL=postgres://…)"
    )]
    InUse { path: String },
    #[error("the database gave no answer within {0:?}")]
    Timeout(Duration),
    /// The request's deadline passed first: nothing was done.
    #[error("the request's deadline ({:?}) passed before the store got to it", .0.budget())]
    DeadlinePassed(nats_rpc::Deadline),
    #[error("no connection to the database: {0}")]
    Unavailable(Arc<StoreError>),
    #[error(
        "PostgreSQL has no free connection slot ({0}): each kv-service instance holds one \
         connection for writes, one per reader and one more while purging; raise the server's \
         max_connections or lower --read-connections"
    )]
    NoSlots(sqlx::Error),
    #[error("the database has no identity row (kv_meta.store_id): was it made by kv-service?")]
    NoIdentity,
    #[error(
        "{} is not a database kv-service can use: give sqlite://path (a file) or \
         postgres://user:password@host/database",
        .0.as_ref().map_or("the URL's scheme".to_owned(), |scheme| format!("`{scheme}://`"))
    )]
    UnsupportedScheme(Option<String>),
    #[error("the SQLite file {0} does not exist")]
    NoSuchFile(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        StoreError::Database(err)
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        StoreError::Sqlite(err)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(err)
    }
}

/// A key as a listing hands it out. The read mirror keeps each key's JSON string (quoted and
/// escaped) beside it, rendered once when the key first arrives, so a listing of 100 keys
/// copies 100 finished strings into the reply instead of escaping each byte of each key (which
/// was a third of a listing's instructions). A key read from a database is rendered as it is
/// written into the reply, as any string is: rendering it first would only add allocations.
#[derive(Debug, Clone)]
pub struct ListedKey(Listed);

#[derive(Debug, Clone)]
enum Listed {
    /// The key's JSON string, as serde_json renders it.
    Rendered(Arc<RawValue>),
    Text(Box<str>),
}

impl ListedKey {
    /// A key to be listed many times: rendered now, once.
    pub fn rendered(key: &str) -> ListedKey {
        // Rendering a `str` cannot fail; `to_raw_value` renders without parsing the result.
        let json = serde_json::value::to_raw_value(key).expect("a string renders as JSON");
        ListedKey(Listed::Rendered(Arc::from(json)))
    }

    /// The key itself.
    pub fn key(&self) -> String {
        match &self.0 {
            Listed::Rendered(json) => {
                serde_json::from_str(json.get()).expect("a rendered JSON string")
            }
            Listed::Text(key) => key.to_string(),
        }
    }

    /// Bytes held, as the mirror's budget counts them.
    fn len(&self) -> usize {
        match &self.0 {
            Listed::Rendered(json) => json.get().len(),
            Listed::Text(key) => key.len(),
        }
    }
}

impl From<String> for ListedKey {
    fn from(key: String) -> ListedKey {
        ListedKey(Listed::Text(key.into_boxed_str()))
    }
}

impl From<&str> for ListedKey {
    fn from(key: &str) -> ListedKey {
        ListedKey(Listed::Text(key.into()))
    }
}

/// Equal when the keys are, however each is held.
impl PartialEq for ListedKey {
    fn eq(&self, other: &ListedKey) -> bool {
        match (&self.0, &other.0) {
            (Listed::Rendered(a), Listed::Rendered(b)) => a.get() == b.get(),
            (Listed::Text(a), Listed::Text(b)) => a == b,
            _ => self.key() == other.key(),
        }
    }
}

impl Eq for ListedKey {}

impl Serialize for ListedKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            // Written as it is: serde_json copies a `RawValue` into its output untouched.
            Listed::Rendered(json) => json.serialize(serializer),
            Listed::Text(key) => serializer.serialize_str(key),
        }
    }
}

impl<'de> Deserialize<'de> for ListedKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(ListedKey::from)
    }
}

/// The keys of one `list` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Live keys in ascending byte order, at most `limit`.
    pub keys: Vec<ListedKey>,
    /// More live keys match beyond `limit`.
    pub truncated: bool,
}

impl Listing {
    /// The keys as text.
    pub fn key_strs(&self) -> Vec<String> {
        self.keys.iter().map(ListedKey::key).collect()
    }
}

/// One stored row, as `kv-service copy` moves it between stores.
#[derive(Debug, Clone)]
pub struct Row {
    pub plugin: String,
    pub key: String,
    pub value: Value,
    /// Milliseconds since the Unix epoch; `None` never expires.
    pub expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Metric: expired rows deleted by the purge.
pub(crate) const PURGED_METRIC: &str = "kv_store_purged_keys_total";
/// Metric: purge runs that failed (retried at the next interval).
pub(crate) const PURGE_FAILURES_METRIC: &str = "kv_store_purge_failures_total";
pub(crate) use writer::{BATCH_METRIC, COMMIT_METRIC, EXPIRED_WRITES_METRIC};

/// The store: one backend behind the operations.
#[derive(Debug)]
pub struct Store {
    backend: Backends,
    id: String,
}

#[derive(Debug)]
enum Backends {
    Sqlite(sqlite::Sqlite),
    /// Boxed: its connect options are large, and the store is moved around as a whole.
    Postgres(Box<postgres::Postgres>),
}

impl Store {
    /// Opens (creating if missing) the database, migrates it, reads its identity and starts the
    /// writer.
    pub async fn open(options: &StoreOptions) -> Result<Store, StoreError> {
        Ok(match Backend::of(&options.url)? {
            Backend::Sqlite => {
                let (store, id) = sqlite::Sqlite::open(options).await?;
                Store {
                    backend: Backends::Sqlite(store),
                    id,
                }
            }
            Backend::Postgres => {
                let (store, id) = postgres::Postgres::open(options).await?;
                Store {
                    backend: Backends::Postgres(Box::new(store)),
                    id,
                }
            }
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self.backend {
            Backends::Sqlite(_) => Backend::Sqlite,
            Backends::Postgres(_) => Backend::Postgres,
        }
    }

    /// The store's identity, made when its database was created: every instance serving one
    /// store reports the same.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether reads are served from memory (SQLite within its mirror budget).
    pub fn mirrored(&self) -> bool {
        match &self.backend {
            Backends::Sqlite(store) => store.mirrored(),
            Backends::Postgres(_) => false,
        }
    }

    /// `(rows, bytes)` in the read mirror; `None` without one (PostgreSQL, or a SQLite store
    /// past its mirror budget).
    pub(crate) fn mirror_usage(&self) -> Option<(usize, usize)> {
        match &self.backend {
            Backends::Sqlite(store) => store.mirror_usage(),
            Backends::Postgres(_) => None,
        }
    }

    /// Commits a write that changes nothing, through the same writer and connection as every
    /// write: `Ok` proves the store takes writes now (`/healthz`).
    /// Given up unapplied if its commit has not started within `limit`, so probes never pile
    /// up behind a stuck database.
    pub(crate) async fn probe(&self, limit: std::time::Duration) -> Result<(), StoreError> {
        let deadline = nats_rpc::Deadline::after(limit);
        self.writer()
            .write_within(writer::Write::Probe, Some(deadline))
            .await
            .map(drop)
    }

    /// Upserts `key` with `value`; replaces any earlier TTL. Returns once committed.
    pub async fn set(
        &self,
        plugin: impl Into<String>,
        key: impl Into<String>,
        value: Value,
        ttl_seconds: Option<u32>,
    ) -> Result<(), StoreError> {
        self.set_within(plugin, key, value, ttl_seconds, None).await
    }

    /// [`Store::set`], given up (`DeadlinePassed`, nothing written) if its commit has not
    /// started by `deadline`; a commit that started is reported, however late. The write is
    /// queued when this is called (see `Writer::write_within`).
    pub(crate) fn set_within(
        &self,
        plugin: impl Into<String>,
        key: impl Into<String>,
        value: Value,
        ttl_seconds: Option<u32>,
        deadline: Option<nats_rpc::Deadline>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + '_ {
        let write = writer::Write::Set {
            plugin: plugin.into(),
            key: key.into(),
            value,
            ttl_seconds,
        };
        let committed = self.writer().write_within(write, deadline);
        async move { committed.await.map(drop) }
    }

    /// Removes a live key; `true` if there was one. Returns once committed.
    pub async fn delete(&self, plugin: &str, key: &str) -> Result<bool, StoreError> {
        self.delete_within(plugin, key, None).await
    }

    /// [`Store::delete`], given up as [`Store::set_within`] is.
    pub(crate) fn delete_within(
        &self,
        plugin: &str,
        key: &str,
        deadline: Option<nats_rpc::Deadline>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + '_ {
        let write = writer::Write::Delete {
            plugin: plugin.to_owned(),
            key: key.to_owned(),
        };
        let committed = self.writer().write_within(write, deadline);
        async move { committed.await.map(|deleted| deleted > 0) }
    }

    /// The value of a live key.
    pub async fn get(&self, plugin: &str, key: &str) -> Result<Option<Value>, StoreError> {
        self.get_within(plugin, key, None).await
    }

    /// [`Store::get`], abandoned (`DeadlinePassed`) at `deadline`.
    pub(crate) async fn get_within(
        &self,
        plugin: &str,
        key: &str,
        deadline: Option<nats_rpc::Deadline>,
    ) -> Result<Option<Value>, StoreError> {
        // The mirror answers at once, without a statement, a timer or a future to move: most
        // reads end here. (The database paths' futures are large and boxed, so the request
        // futures that hold this one stay small and cheap to move.)
        if let Backends::Sqlite(store) = &self.backend
            && let Some(found) = store.get_mirrored(plugin, key)
        {
            return Ok(found);
        }
        let read: Read<'_, Option<Value>> = match &self.backend {
            Backends::Sqlite(store) => Box::pin(within(deadline, store.get(plugin, key))),
            Backends::Postgres(store) => Box::pin(within(deadline, store.get(plugin, key))),
        };
        read.await
    }

    /// Live keys starting with `prefix` (literally, bytewise), in byte order, at most `limit`.
    pub async fn list(
        &self,
        plugin: &str,
        prefix: &str,
        limit: u32,
    ) -> Result<Listing, StoreError> {
        self.list_within(plugin, prefix, limit, None).await
    }

    /// [`Store::list`], abandoned (`DeadlinePassed`) at `deadline`.
    pub(crate) async fn list_within(
        &self,
        plugin: &str,
        prefix: &str,
        limit: u32,
        deadline: Option<nats_rpc::Deadline>,
    ) -> Result<Listing, StoreError> {
        // As in `get_within`: the mirror first, the database boxed.
        if let Backends::Sqlite(store) = &self.backend
            && let Some(listing) = store.list_mirrored(plugin, prefix, limit)
        {
            return Ok(listing);
        }
        let read: Read<'_, Listing> = match &self.backend {
            Backends::Sqlite(store) => {
                Box::pin(within(deadline, store.list(plugin, prefix, limit)))
            }
            Backends::Postgres(store) => {
                Box::pin(within(deadline, store.list(plugin, prefix, limit)))
            }
        };
        read.await
    }

    /// Deletes every expired row, a bounded chunk per commit so writes keep flowing meanwhile.
    /// Safe to run in several instances at once.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        let purged = match &self.backend {
            Backends::Sqlite(store) => store.purge_expired().await,
            Backends::Postgres(store) => store.purge_expired().await,
        };
        match &purged {
            Ok(rows) => metrics::counter!(PURGED_METRIC).increment(*rows),
            Err(_) => metrics::counter!(PURGE_FAILURES_METRIC).increment(1),
        }
        purged
    }

    /// Up to `limit` live rows after `after` (`(plugin, key)`, exclusive; `None` from the
    /// start), in (plugin, key) order: one page of `kv-service copy`.
    pub async fn export(
        &self,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<Row>, StoreError> {
        let (plugin, key) = after.unwrap_or(("", ""));
        match &self.backend {
            Backends::Sqlite(store) => store.export(plugin, key, limit).await,
            Backends::Postgres(store) => store.export(plugin, key, limit).await,
        }
    }

    /// Writes `rows` as they are (value, expiry and timestamps), replacing rows with the same
    /// keys, in one commit.
    pub async fn import(&self, rows: Vec<Row>) -> Result<u64, StoreError> {
        self.writer().write(writer::Write::Import(rows)).await
    }

    /// Stops the writer after the queued writes are committed, and closes every connection.
    pub async fn close(self) {
        match self.backend {
            Backends::Sqlite(store) => store.close().await,
            Backends::Postgres(store) => (*store).close().await,
        }
    }

    /// The database's plan for a prefix listing, one line per step (for the tests that prove
    /// it is an index range, not a scan).
    #[doc(hidden)]
    pub async fn list_query_plan(&self) -> Result<Vec<String>, StoreError> {
        match &self.backend {
            Backends::Sqlite(store) => store.list_query_plan().await,
            Backends::Postgres(store) => store.list_query_plan().await,
        }
    }

    fn writer(&self) -> &writer::Writer {
        match &self.backend {
            Backends::Sqlite(store) => &store.writer,
            Backends::Postgres(store) => &store.writer,
        }
    }
}

/// Queues `item` at once while `queue` has room (nearly always); only a full queue costs a
/// future, boxed: the future returned is little more than a flag, because the request futures
/// that hold it are moved whole several times per request. `Closed` once the queue's task is
/// gone.
fn enqueue<T: Send>(
    queue: &tokio::sync::mpsc::Sender<T>,
    item: T,
) -> impl Future<Output = Result<(), StoreError>> + Send + '_ {
    use tokio::sync::mpsc::error::TrySendError;
    let (room, closed) = match queue.try_send(item) {
        Ok(()) => (None, false),
        Err(TrySendError::Full(item)) => (Some(Box::pin(queue.send(item))), false),
        Err(TrySendError::Closed(_)) => (None, true),
    };
    async move {
        if closed {
            return Err(StoreError::Closed);
        }
        if let Some(room) = room {
            room.await.map_err(|_| StoreError::Closed)?;
        }
        Ok(())
    }
}

/// A read from the database, boxed: see [`Store::get_within`].
type Read<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Runs a read, dropping it (a read can always be abandoned) once `deadline` passes.
async fn within<T>(
    deadline: Option<nats_rpc::Deadline>,
    read: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match deadline {
        None => read.await,
        Some(deadline) => tokio::time::timeout_at(deadline.at().into(), read)
            .await
            .unwrap_or(Err(StoreError::DeadlinePassed(deadline))),
    }
}

/// The smallest string greater than every string starting with `prefix`: the last character
/// bumped to the next scalar value (dropping trailing `char::MAX`). UTF-8 byte order is code
/// point order, so `[prefix, end)` is exactly the keys with that byte prefix; `%` and `_` are
/// ordinary characters here, unlike in `LIKE`.
fn prefix_end(prefix: &str) -> Option<String> {
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

/// Milliseconds since the Unix epoch: the unit of `expires_at`, `created_at`, `updated_at`.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

fn parse_value(text: String) -> Result<Value, StoreError> {
    RawValue::from_string(text)
        .map(Value::from)
        .map_err(StoreError::Corrupt)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_scheme_picks_the_backend() {
        for url in ["postgres://u@h/db", "postgresql://h/db", "POSTGRES://h/db"] {
            assert_eq!(Backend::of(url).unwrap(), Backend::Postgres, "{url}");
        }
        for url in [
            "sqlite://kv.db",
            "SQLite://kv.db",
            "sqlite::memory:",
            "kv.db",
            "postgres.db",
        ] {
            assert_eq!(Backend::of(url).unwrap(), Backend::Sqlite, "{url}");
        }
        let refused = |url| Backend::of(url).unwrap_err().to_string();
        assert_eq!(
            refused("mysql://kv:pw@db/kv"),
            "`mysql://` is not a database kv-service can use: give sqlite://path (a file) or \
             postgres://user:password@host/database"
        );
        // What precedes `://` is not shown unless it is shaped like a scheme.
        let shown = refused("kv:s3cret@db://x");
        assert!(shown.starts_with("the URL's scheme is not"), "{shown}");
        assert!(refused("://x").starts_with("the URL's scheme is not"));
    }
}
