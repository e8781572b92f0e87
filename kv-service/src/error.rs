//! Why kv-service did not start, or a command did not finish. Each variant says what failed in
//! its `Display` and hands the cause over in `source()`; `main.rs` logs the whole chain on one
//! line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::store::StoreError;

/// Everything that stops the service from starting, or `copy`, `schemas` and `asyncapi` from
/// finishing, with what to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Prometheus recorder could not be installed (`--metrics-addr`). Its error is in the
    /// message, not in `source()`: its text already ends with its own cause.
    #[error("cannot install the metrics recorder: {0}")]
    MetricsRecorder(Arc<metrics_exporter_prometheus::BuildError>),
    /// `--metrics-addr` cannot be bound (taken, or not an address of this host).
    #[error("cannot serve metrics on {addr}")]
    MetricsAddr {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The store cannot be opened, migrated or written (`DATABASE_URL`, shown redacted).
    #[error("cannot open database `{database}`")]
    Open {
        database: String,
        #[source]
        source: StoreError,
    },
    /// A NATS credentials file cannot be read or used.
    #[error("cannot {action} {}", path.display())]
    Credentials {
        /// `read the NKey seed file`, `use the credentials file`.
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// NATS refused the connection in a way waiting will not change: a bad URL, credentials or
    /// TLS setup.
    #[error("cannot connect to NATS at {url}")]
    Nats {
        /// The URL, credentials redacted.
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    /// NATS did not accept a connection within `--nats-connect-timeout`.
    #[error(
        "cannot connect to NATS at {url} (tried {attempts} times in {seconds:.1} s; \
         --nats-connect-timeout)"
    )]
    NatsUnreachable {
        url: String,
        /// Why the last attempt failed.
        #[source]
        last_error: ConnectAttempt,
        attempts: u32,
        seconds: f64,
    },
    /// An instance on another store already serves one of this instance's subjects.
    #[error("refusing to start: {0}")]
    Conflict(String),
    /// The endpoints could not be served (subscriptions, NATS micro).
    #[error(transparent)]
    Serve(#[from] nats_rpc::ServeError),
    /// `copy`: the source or the target cannot be opened.
    #[error("cannot open the {role} `{url}`")]
    OpenToCopy {
        /// `source` or `target`.
        role: &'static str,
        url: String,
        #[source]
        source: StoreError,
    },
    /// `copy` between two URLs of one store.
    #[error("`{from}` and `{to}` are one store ({id}): nothing to copy")]
    SameStore {
        from: String,
        to: String,
        id: String,
    },
    /// `copy`: a page could not be read from the source.
    #[error("cannot read the source")]
    CopyRead(#[source] StoreError),
    /// `copy`: a page could not be written to the target.
    #[error("cannot write the target")]
    CopyWrite(#[source] StoreError),
    /// `schemas` or `asyncapi`: a file or folder cannot be written.
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why one attempt to reach NATS at start failed, in a way worth trying again.
#[derive(Debug, thiserror::Error)]
pub enum ConnectAttempt {
    /// Refused or unreachable. A leaf: async-nats's message already ends with its cause, which
    /// as a `source()` would be printed twice.
    #[error("{0}")]
    Refused(async_nats::ConnectError),
    /// Nothing answered within the attempt's time.
    #[error("no answer within {} ms", .0.as_millis())]
    Silent(Duration),
}
