//! kv-service: the `rosey.db.kv.*` key-value store, served over NATS request/reply with
//! nats-rpc on an sqlx database (SQLite, or PostgreSQL for several instances). `main.rs` only
//! parses the command line and calls in here.

pub mod api;
pub mod config;
mod error;
mod ops;
pub mod peers;
pub mod store;
mod value;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nats_rpc::Service;

pub use config::ServeConfig;
use config::redact_url;
pub use error::{ConnectAttempt, Error};
use store::{Store, StoreOptions};

/// Opens the store, connects to NATS, checks that no instance on another store serves the
/// same subjects, serves the endpoints until `shutdown` completes, then drains: in-flight
/// requests are answered and queued writes committed before it returns.
pub async fn serve(config: &ServeConfig, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    // Watched from the start: a signal while the store opens or NATS is retried stops cleanly.
    let mut shutdown = std::pin::pin!(shutdown);
    // First: the recorder must exist before the store and the endpoints register their metrics,
    // and a taken metrics port should fail the start before anything else happens.
    let ops = match config.metrics_addr {
        Some(addr) => {
            let ops = ops::Ops::new(ops::recorder().map_err(Error::MetricsRecorder)?);
            let server = ops::spawn(addr, ops.clone())
                .await
                .map_err(|source| Error::MetricsAddr { addr, source })?;
            Some((ops, server))
        }
        None => None,
    };
    let database = redact_url(&config.database_url);
    let options = config.store_options();
    let store = tokio::select! {
        store = Store::open(&options) => {
            store.map_err(|source| Error::Open { database: database.clone(), source })?
        }
        () = &mut shutdown => {
            tracing::info!("stopped before serving");
            return Ok(());
        }
    };
    let store = Arc::new(store);
    let builder = api::endpoints(
        Service::builder(peers::SERVICE, env!("CARGO_PKG_VERSION")),
        config.plugin_subjects,
    );
    let subjects: Vec<String> = builder.endpoints().map(|e| e.subject.clone()).collect();
    let mine = peers::Mine::new(&store, subjects.clone(), &config.queue_group);

    let connected = tokio::select! {
        connected = connect(config) => connected,
        () = &mut shutdown => {
            close_store(store).await;
            tracing::info!("stopped before serving");
            return Ok(());
        }
    };
    let nats = match connected {
        Ok(nats) => nats,
        Err(err) => {
            close_store(store).await;
            return Err(err);
        }
    };
    if let Err(err) = peers::refuse_conflicts(&nats, &mine).await {
        close_store(store).await;
        return Err(err);
    }
    let mut builder = builder
        .description(DESCRIPTION)
        .queue_group(config.queue_group.clone())
        .max_in_flight(config.max_in_flight)
        .request_timeout(config.request_timeout);
    for (key, value) in mine.metadata() {
        builder = builder.metadata(key, value);
    }
    let service = match builder.serve(nats.clone(), store.clone()).await {
        Ok(service) => service,
        Err(err) => {
            close_store(store).await;
            return Err(Error::Serve(err));
        }
    };
    if let Some((ops, _)) = &ops {
        ops.serving(nats.clone(), &store);
    }
    tracing::info!(
        subjects = %subjects.join(" "),
        nats = %redact_url(&config.nats_url),
        database = %database,
        store = %format_args!("{} {}", store.backend(), store.id()),
        id = service.id(),
        "kv-service ready"
    );

    let purger = tokio::spawn(purge_forever(store.clone(), config.purge_interval));
    let watcher = tokio::spawn(peers::watch(nats.clone(), mine, service.id().to_owned()));
    shutdown.await;
    tracing::info!("shutting down: draining in-flight requests");
    if let Some((ops, _)) = &ops {
        ops.draining();
    }
    watcher.abort();
    let drained = match service.shutdown().await {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(%err, "drain incomplete: requests still running were cut off");
            false
        }
    };
    purger.abort();
    let _ = purger.await;
    let _ = watcher.await;
    // Bounded: with the server gone, async-nats would wait for it to come back.
    match tokio::time::timeout(NATS_DRAIN_TIMEOUT, nats.drain()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::debug!(%err, "closing the NATS connection"),
        Err(_) => tracing::warn!("NATS did not confirm the last replies in time"),
    }
    if let Some((_, server)) = ops {
        server.stop().await; // a health probe in progress holds the store
    }
    if close_store(store).await && drained {
        tracing::info!("closed: every request taken was answered, every queued write committed");
    }
    Ok(())
}

/// Keys moved per page by [`copy`].
const COPY_PAGE: u32 = 1000;

/// Copies every live key, with its value, expiry and timestamps, from the store at `from` to
/// the one at `to` (created and migrated if new), a page at a time; `progress` hears the
/// running total after each page. Rows already in the target are replaced, so running it again
/// is harmless. Returns how many keys were copied.
pub async fn copy(
    from: &str,
    to: &str,
    statement_timeout: Duration,
    mut progress: impl FnMut(u64),
) -> Result<u64, Error> {
    let source = open_to_copy(from, "source", statement_timeout).await?;
    let target = match open_to_copy(to, "target", statement_timeout).await {
        Ok(target) => target,
        Err(err) => {
            source.close().await;
            return Err(err);
        }
    };
    let outcome = if source.id() == target.id() {
        Err(Error::SameStore {
            from: redact_url(from),
            to: redact_url(to),
            id: source.id().to_string(),
        })
    } else {
        copy_pages(&source, &target, &mut progress).await
    };
    source.close().await;
    target.close().await;
    outcome
}

async fn open_to_copy(
    url: &str,
    role: &'static str,
    statement_timeout: Duration,
) -> Result<Store, Error> {
    let mut options = StoreOptions::new(url);
    options.mirror_budget_bytes = 0;
    // PostgreSQL: a page of large values over a slow link may need longer than the default.
    options.statement_timeout = statement_timeout;
    // A source that is not there is a mistake (a typo in its path), not an empty store.
    options.must_exist = role == "source";
    Store::open(&options)
        .await
        .map_err(|source| Error::OpenToCopy {
            role,
            url: redact_url(url),
            source,
        })
}

async fn copy_pages(
    source: &Store,
    target: &Store,
    progress: &mut impl FnMut(u64),
) -> Result<u64, Error> {
    let mut after: Option<(String, String)> = None;
    let mut copied = 0;
    loop {
        let page = source
            .export(
                after.as_ref().map(|(p, k)| (p.as_str(), k.as_str())),
                COPY_PAGE,
            )
            .await
            .map_err(Error::CopyRead)?;
        let Some(last) = page.last() else {
            return Ok(copied);
        };
        after = Some((last.plugin.clone(), last.key.clone()));
        let full = page.len() == COPY_PAGE as usize;
        copied += target.import(page).await.map_err(Error::CopyWrite)?;
        progress(copied);
        if !full {
            return Ok(copied);
        }
    }
}

/// The longest the NATS connection's own drain may take at shutdown (the replies sent are
/// confirmed by the server; without a server it would wait for one to come back).
const NATS_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest one connection attempt may take (a host that never answers).
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first pause between connection attempts at start; it doubles up to the next.
const CONNECT_FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between connection attempts at start.
const CONNECT_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Connects to NATS, retrying with backoff for `--nats-connect-timeout` (the bus may start
/// after the service), then failing with a clear error naming the URL. Once connected,
/// async-nats reconnects on its own, forever, and resubscribes.
async fn connect(config: &ServeConfig) -> Result<async_nats::Client, Error> {
    let url = config::redact_url(&config.nats_url);
    let started = tokio::time::Instant::now();
    let give_up = started + config.nats_connect_timeout;
    let mut backoff = CONNECT_FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let remaining = give_up.saturating_duration_since(tokio::time::Instant::now());
        // The last attempt, at the deadline, still gets a moment to connect.
        let limit = remaining.clamp(CONNECT_FIRST_BACKOFF, CONNECT_ATTEMPT_TIMEOUT);
        let error = match connect_once(config, limit).await {
            Ok(client) => return Ok(client),
            Err(ConnectFailure::Fatal(err)) => return Err(err),
            Err(ConnectFailure::Retry(attempt_error)) => attempt_error,
        };
        let remaining = give_up.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(Error::NatsUnreachable {
                url,
                last_error: error,
                attempts: attempt,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        let pause = backoff.min(remaining);
        tracing::warn!(
            attempt,
            retry_in_ms = pause.as_millis() as u64,
            "cannot connect to NATS at {url}: {error}; retrying"
        );
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(CONNECT_MAX_BACKOFF);
        attempt += 1;
    }
}

enum ConnectFailure {
    /// Worth trying again (refused, unreachable, timed out).
    Retry(ConnectAttempt),
    /// Will not get better (unreadable credentials).
    Fatal(Error),
}

async fn connect_once(
    config: &ServeConfig,
    limit: Duration,
) -> Result<async_nats::Client, ConnectFailure> {
    let options = config
        .credentials
        .apply(nats_rpc::connect_options())
        .await
        .map_err(ConnectFailure::Fatal)?;
    let options = options
        .name("kv-service")
        // This client publishes only to reply subjects, which arrive from the server already
        // split at whitespace, and to subjects made of names nats-rpc has checked: the
        // per-publish scan for whitespace could never fail (~150 instructions a request).
        .skip_subject_validation(true)
        .connection_timeout(CONNECT_ATTEMPT_TIMEOUT)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to NATS"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost, reconnecting")
                }
                async_nats::Event::SlowConsumer(_) => tracing::warn!(
                    "requests dropped: the subscription buffer overflowed (slow consumer); \
                     their senders time out"
                ),
                other => tracing::info!(event = %other, "NATS event"),
            }
        });
    match tokio::time::timeout(limit, options.connect(config.nats_url.as_str())).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(err)) => {
            use async_nats::ConnectErrorKind as Kind;
            // A TLS handshake the server refuses (a bad or missing client certificate) comes as
            // an IO error carrying the TLS alert.
            let text = err.to_string().to_ascii_lowercase();
            let tls_refused = ["certificate", "tls", "alert", "handshake"]
                .iter()
                .any(|word| text.contains(word));
            let permanent = match err.kind() {
                // Will not change by waiting: a bad URL, credentials or TLS setup.
                Kind::ServerParse | Kind::Authentication | Kind::AuthorizationViolation => true,
                Kind::Tls => true,
                Kind::Io => tls_refused,
                _ => false,
            };
            if permanent {
                Err(ConnectFailure::Fatal(Error::Nats {
                    url: config::redact_url(&config.nats_url),
                    source: err,
                }))
            } else {
                Err(ConnectFailure::Retry(ConnectAttempt::Refused(err)))
            }
        }
        Err(_) => Err(ConnectFailure::Retry(ConnectAttempt::Silent(limit))),
    }
}

/// Purges expired rows every `every`; a failure is logged and tried again next time.
async fn purge_forever(store: Arc<Store>, every: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        match store.purge_expired().await {
            Ok(purged) => tracing::info!(
                purged,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "purged expired keys"
            ),
            Err(err) => tracing::error!(%err, "purge failed, retrying at the next interval"),
        }
    }
}

/// Closes the store so the writer commits everything queued; false (and an error logged) when
/// something still holds it. Every other holder is gone by now (the drained service, the purge
/// task, the metrics server: each awaited), unless the drain timed out with requests running.
async fn close_store(store: Arc<Store>) -> bool {
    match Arc::try_unwrap(store) {
        Ok(store) => {
            store.close().await;
            true
        }
        Err(_) => {
            tracing::error!(
                "requests still running after the drain timeout hold the store: writes they \
                 queued and did not hear back about may not be committed"
            );
            false
        }
    }
}

/// Writes every endpoint's request, success-reply and error-reply schema to `dir`, one file
/// each, named `<subject>.<kind>.json` (a `*` token written `any`). Returns the paths written.
pub fn write_schemas(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, schema) in rendered_schemas() {
        let path = dir.join(name);
        std::fs::write(&path, schema)?;
        written.push(path);
    }
    Ok(written)
}

/// The service's one-line description (`$SRV.INFO`, the AsyncAPI document).
const DESCRIPTION: &str = "rosey.db.kv: per-plugin key-value store";
/// The file `kv-service asyncapi` writes by default: beside docs/NATS_SUBJECTS.md rather than in
/// schemas/, so that code generators pointed at schemas/ see JSON Schemas only.
pub const ASYNCAPI_FILE: &str = "docs/asyncapi.json";

/// The AsyncAPI 3.0 document of every endpoint kv-service can serve (the four contract subjects
/// and, with `--plugin-subjects`, the per-plugin ones), for queue group `queue_group`, as pretty
/// JSON. A running service answers its own on `$SRV.ASYNCAPI.kv-service`.
pub fn rendered_asyncapi(queue_group: &str) -> String {
    let endpoints = api::schemas();
    let document = nats_rpc::asyncapi::document(&nats_rpc::asyncapi::Api {
        name: peers::SERVICE,
        version: env!("CARGO_PKG_VERSION"),
        description: DESCRIPTION,
        queue_group,
        endpoints: &endpoints,
    });
    let mut text = serde_json::to_string_pretty(&document).expect("a document serializes");
    text.push('\n');
    text
}

/// `(file name, pretty JSON)` for every schema `write_schemas` writes.
pub fn rendered_schemas() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for endpoint in api::schemas() {
        for (kind, schema) in [
            ("request", &endpoint.request),
            ("response", &endpoint.response),
            ("error", &endpoint.error),
        ] {
            let mut text = serde_json::to_string_pretty(schema).expect("a schema serializes");
            text.push('\n');
            files.push((
                nats_rpc::EndpointSchemas::file_name(endpoint.subject, kind),
                text,
            ));
        }
    }
    files
}
