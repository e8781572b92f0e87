//! Shared test harness: a private nats-server child on a free port, kv-service served
//! in-process on a fresh store (a SQLite file, or a private PostgreSQL cluster), and helpers to
//! send raw requests and read replies.
#![allow(dead_code)]

pub mod process;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use kv_service::ServeConfig;
pub use kv_service::store::Backend;
use serde_json::Value;
use test_support::NatsServer;
use test_support::Postgres;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Harness {
    pub nats: NatsServer,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL server behind a PostgreSQL store.
    pub postgres: Option<Postgres>,
    pub client: async_nats::Client,
    pub config: ServeConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), String>>>,
}

/// A raw reply: parsed body plus the error headers, if any.
#[derive(Debug)]
pub struct Reply {
    pub body: Value,
    pub error_header: Option<String>,
    /// `Rpc-Error-Code`: the code string.
    pub error_code_header: Option<String>,
    /// `Nats-Service-Error-Code`: the code's status, a number (ADR-32).
    pub status_header: Option<String>,
}

impl Reply {
    pub fn from_message(message: &async_nats::Message) -> Reply {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().to_owned())
        };
        Reply {
            body: serde_json::from_slice(&message.payload).expect("reply is JSON"),
            error_header: header("Nats-Service-Error"),
            error_code_header: header("Rpc-Error-Code"),
            status_header: header("Nats-Service-Error-Code"),
        }
    }

    /// The body of `message`, once its headers are checked against it: none on a success; on a
    /// failure the message, the code and the code's status (`envelope::status_of`).
    pub fn checked(message: &async_nats::Message) -> Value {
        let reply = Reply::from_message(message);
        if reply.body["success"] == true {
            assert_eq!(
                (
                    reply.error_header,
                    reply.error_code_header,
                    reply.status_header
                ),
                (None, None, None),
                "a success carries no error headers: {}",
                reply.body
            );
        } else {
            let error = &reply.body["error"];
            let code = error["code"].as_str().expect("an error code");
            assert_eq!(
                (
                    reply.error_header.as_deref(),
                    reply.error_code_header.as_deref(),
                    reply.status_header.as_deref()
                ),
                (
                    error["message"].as_str(),
                    Some(code),
                    Some(test_support::envelope::status_of(code))
                ),
                "the error headers of {}",
                reply.body
            );
        }
        reply.body
    }
}

impl Harness {
    pub async fn start(backend: Backend) -> Harness {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts with a config tweak (e.g. a short purge interval).
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut ServeConfig)) -> Harness {
        let nats = NatsServer::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let postgres = (backend == Backend::Postgres).then(Postgres::start);
        let database_url = match &postgres {
            Some(server) => server.url(),
            None => test_support::sqlite_url(&dir.path().join("kv.db")),
        };
        let mut config = ServeConfig::defaults();
        config.nats_url = nats.url();
        config.database_url = database_url;
        tweak(&mut config);
        let (stop, task) = spawn_service(config.clone());
        let client = async_nats::connect(nats.url())
            .await
            .expect("test client connects");
        let harness = Harness {
            nats,
            dir,
            postgres,
            client,
            config,
            stop: Some(stop),
            task: Some(task),
        };
        harness.wait_ready().await;
        harness
    }

    /// Waits until the service answers `$SRV.PING.kv-service`.
    pub async fn wait_ready(&self) {
        test_support::wait_for_service(&self.client, "kv-service").await;
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("kv.db")
    }

    /// Runs `sql` on the store's database, behind the service's back: SQLite through a
    /// connection of its own, PostgreSQL through psql (then `key` columns are bytea, so write
    /// `convert_to('k', 'UTF8')`). Returns the rows, columns joined by `|`, NULL as empty.
    pub async fn sql(&self, sqlite: &str, postgres: &str) -> Vec<String> {
        match &self.postgres {
            Some(server) => server
                .psql("postgres", postgres)
                .lines()
                .map(str::to_owned)
                .collect(),
            None => {
                use sqlx::{Row, ValueRef};
                let pool = sqlx::SqlitePool::connect_with(
                    sqlx::sqlite::SqliteConnectOptions::new().filename(self.db_path()),
                )
                .await
                .expect("open the service's database");
                let rows = sqlx::query(sqlx::AssertSqlSafe(sqlite.to_owned()))
                    .fetch_all(&pool)
                    .await
                    .unwrap_or_else(|err| panic!("{sqlite}: {err}"));
                pool.close().await;
                rows.iter()
                    .map(|row| {
                        (0..row.columns().len())
                            .map(|i| {
                                if row.try_get_raw(i).unwrap().is_null() {
                                    String::new()
                                } else if let Ok(int) = row.try_get::<i64, _>(i) {
                                    int.to_string()
                                } else {
                                    row.get::<String, _>(i)
                                }
                            })
                            .collect::<Vec<_>>()
                            .join("|")
                    })
                    .collect()
            }
        }
    }

    /// Sends raw bytes and returns the reply message as received, within 10 s.
    pub async fn request(&self, subject: &str, payload: impl Into<Bytes>) -> async_nats::Message {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.client.request(subject.to_owned(), payload.into()),
        )
        .await
        .expect("reply within 10 s")
        .expect("request succeeds")
    }

    /// Sends raw bytes and returns the full reply.
    pub async fn raw(&self, subject: &str, payload: impl Into<Bytes>) -> Reply {
        Reply::from_message(&self.request(subject, payload).await)
    }

    /// Sends raw bytes and returns the reply payload exactly as received (undecoded), so a test
    /// can check number text byte for byte.
    pub async fn raw_payload(&self, subject: &str, payload: impl Into<Bytes>) -> Bytes {
        self.request(subject, payload).await.payload
    }

    /// Sends a JSON body to `rosey.db.kv.<op>` and returns the reply body.
    pub async fn call(&self, op: &str, body: Value) -> Value {
        self.raw(&format!("rosey.db.kv.{op}"), body.to_string())
            .await
            .body
    }

    /// Stops the service gracefully and returns its result.
    pub async fn stop(mut self) -> Result<(), String> {
        self.stop_service().await
    }

    /// Stops the in-process service gracefully (drain, commit, close the database), then serves
    /// again with the same config: same NATS server, same SQLite file. Returns the first run's
    /// result.
    pub async fn restart_service(&mut self) -> Result<(), String> {
        let first = self.stop_service().await;
        let (stop, task) = spawn_service(self.config.clone());
        self.stop = Some(stop);
        self.task = Some(task);
        self.wait_ready().await;
        first
    }

    async fn stop_service(&mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .take()
            .expect("running")
            .await
            .expect("serve task")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs `kv_service::serve` with `config` on a task until the returned sender fires (or drops).
pub fn spawn_service(config: ServeConfig) -> (oneshot::Sender<()>, JoinHandle<Result<(), String>>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        kv_service::serve(&config, async {
            let _ = stopped.await;
        })
        .await
        .map_err(|err| err.to_string())
    });
    (stop, task)
}

/// Holds a SQLite database's write lock from another connection (as another process would)
/// until released: the service's writes wait for it, up to their busy timeout, then fail.
pub struct Locker(sqlx::SqliteConnection);

impl Locker {
    pub async fn lock(path: &std::path::Path) -> Locker {
        use sqlx::ConnectOptions;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .connect()
            .await
            .unwrap();
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut conn)
            .await
            .unwrap();
        Locker(conn)
    }

    pub async fn release(mut self) {
        use sqlx::Connection;
        sqlx::query("ROLLBACK").execute(&mut self.0).await.unwrap();
        self.0.close().await.unwrap();
    }
}
