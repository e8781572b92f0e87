//! What operators scrape and probe (`--metrics-addr`): Prometheus text on `/metrics` and a
//! health check on `/healthz`. The request metrics come from nats-rpc, the store's from its
//! writer and purge, both through the `metrics` facade into the Prometheus recorder installed
//! here; gauges that describe state (NATS connection, mirror size) are read at each scrape.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::store::{self, Store};

/// The longest `/healthz` waits for the database to commit its probe write.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often histogram samples are folded in between scrapes (keeps memory bounded).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Histogram buckets, seconds: request latency and commit time (100 µs … 10 s).
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Histogram buckets: writes per committed batch (the writer takes at most 256).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

const NATS_CONNECTED: &str = "kv_nats_connected";
const NATS_CONNECTS: &str = "kv_nats_connects_total";
const MIRROR_ENABLED: &str = "kv_mirror_enabled";
const MIRROR_KEYS: &str = "kv_mirror_keys";
const MIRROR_BYTES: &str = "kv_mirror_bytes";
const STORE_INFO: &str = "kv_store_info";

/// The process-wide Prometheus recorder, installed on first use (before the store opens and
/// the service registers its endpoints, whose metric handles bind to the recorder of that
/// moment). Several services in one process (tests) share it.
pub(crate) fn recorder() -> Result<PrometheusHandle, Arc<BuildError>> {
    // The outcome is kept for later calls, so a failure is shared, not cloned.
    static HANDLE: OnceLock<Result<PrometheusHandle, Arc<BuildError>>> = OnceLock::new();
    // Installed inside `get_or_init`: concurrent first calls wait for the one install.
    HANDLE.get_or_init(install).clone()
}

fn install() -> Result<PrometheusHandle, Arc<BuildError>> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .and_then(|builder| {
            builder.set_buckets_for_metric(Matcher::Full(store::BATCH_METRIC.into()), BATCH_BUCKETS)
        })
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(Arc::new)?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        store::BATCH_METRIC,
        "Writes per committed batch (group commit)"
    );
    describe_histogram!(
        store::COMMIT_METRIC,
        metrics::Unit::Seconds,
        "Time one batch of writes takes to commit"
    );
    describe_counter!(
        store::EXPIRED_WRITES_METRIC,
        "Writes dropped unapplied because their deadline passed while queued"
    );
    describe_counter!(store::PURGED_METRIC, "Expired keys deleted by the purge");
    // Present (at 0) before the first purge, so a rate over them is defined from the start.
    metrics::counter!(store::PURGED_METRIC).increment(0);
    metrics::counter!(store::PURGE_FAILURES_METRIC).increment(0);
    describe_counter!(
        store::PURGE_FAILURES_METRIC,
        "Purge runs that failed (retried next interval)"
    );
    describe_gauge!(NATS_CONNECTED, "1 while connected to NATS, else 0");
    describe_counter!(
        NATS_CONNECTS,
        "Connections made to NATS (the first and every reconnect)"
    );
    describe_gauge!(
        MIRROR_ENABLED,
        "1 while reads are served from the in-memory mirror (SQLite within its budget)"
    );
    describe_gauge!(
        MIRROR_KEYS,
        "Rows in the in-memory read mirror (0 without one)"
    );
    describe_gauge!(
        MIRROR_BYTES,
        "Bytes of the in-memory read mirror, as its budget counts them"
    );
    describe_gauge!(
        STORE_INFO,
        "Always 1: the store's backend and identity as labels"
    );
}

/// Where the service is in its life, as `/healthz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Starting = 0,
    Serving = 1,
    Draining = 2,
}

/// What the HTTP handlers read. The store is held weakly: shutdown must be able to take it
/// back to close it.
#[derive(Debug)]
pub(crate) struct Ops {
    metrics: PrometheusHandle,
    phase: AtomicU8,
    serving: OnceLock<(async_nats::Client, Weak<Store>)>,
}

impl Ops {
    pub(crate) fn new(metrics: PrometheusHandle) -> Arc<Ops> {
        Arc::new(Ops {
            metrics,
            phase: AtomicU8::new(Phase::Starting as u8),
            serving: OnceLock::new(),
        })
    }

    /// The service is up: probes check `nats` and `store` from now on.
    pub(crate) fn serving(&self, nats: async_nats::Client, store: &Arc<Store>) {
        metrics::gauge!(
            STORE_INFO,
            "backend" => store.backend().as_str(),
            "store_id" => store.id().to_owned()
        )
        .set(1.0);
        let _ = self.serving.set((nats, Arc::downgrade(store)));
        self.phase.store(Phase::Serving as u8, Ordering::Release);
    }

    /// Shutdown began: probes answer 503 so the orchestrator stops sending traffic.
    pub(crate) fn draining(&self) {
        self.phase.store(Phase::Draining as u8, Ordering::Release);
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    /// `Ok` when NATS is connected and the database commits a write within
    /// [`PROBE_TIMEOUT`]; else why not.
    async fn health(&self) -> Result<(), String> {
        let (nats, store) = match (self.phase(), self.serving.get()) {
            (Phase::Starting, _) | (_, None) => return Err("starting".into()),
            (Phase::Draining, _) => return Err("shutting down".into()),
            (Phase::Serving, Some(serving)) => serving,
        };
        let state = nats.connection_state();
        if state != async_nats::connection::State::Connected {
            return Err(format!("NATS: not connected ({state})"));
        }
        let Some(store) = store.upgrade() else {
            return Err("shutting down".into());
        };
        match tokio::time::timeout(PROBE_TIMEOUT, store.probe(PROBE_TIMEOUT)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("database: not writable: {err}")),
            Err(_) => Err(format!(
                "database: a write did not commit within {} ms",
                PROBE_TIMEOUT.as_millis()
            )),
        }
    }

    /// The Prometheus text, with the state gauges read now.
    fn render(&self) -> String {
        if let Some((nats, store)) = self.serving.get() {
            let connected = nats.connection_state() == async_nats::connection::State::Connected;
            metrics::gauge!(NATS_CONNECTED).set(f64::from(u8::from(connected)));
            let connects = nats.statistics().connects.load(Ordering::Relaxed);
            metrics::counter!(NATS_CONNECTS).absolute(connects);
            if let Some(store) = store.upgrade() {
                // 0 once the mirror is dropped (over budget) or when there is none.
                let usage = store.mirror_usage();
                let (keys, bytes) = usage.unwrap_or((0, 0));
                metrics::gauge!(MIRROR_ENABLED).set(f64::from(u8::from(usage.is_some())));
                metrics::gauge!(MIRROR_KEYS).set(keys as f64);
                metrics::gauge!(MIRROR_BYTES).set(bytes as f64);
            }
        }
        self.metrics.render()
    }
}

/// The running HTTP server; [`Server::stop`] ends it.
#[derive(Debug)]
pub(crate) struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Stops accepting, lets requests in progress (a health probe holding the store) finish,
    /// and returns once they have.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    /// On every other way out of `serve` (a failed start): no waiting, just gone.
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Binds `addr` now (so a taken port fails the start, before anything else happens) and
/// serves `/metrics`, `/healthz` and `/livez` until stopped.
pub(crate) async fn spawn(addr: SocketAddr, ops: Arc<Ops>) -> std::io::Result<Server> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr().map_or(addr, |local| local);
    tracing::info!(addr = %local, "serving /metrics and /healthz");
    let upkeep = ops.metrics.clone();
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(ops);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(UPKEEP_INTERVAL);
        let upkeep = async move {
            loop {
                ticker.tick().await;
                upkeep.run_upkeep();
            }
        };
        let served = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        tokio::select! {
            served = served => {
                if let Err(err) = served {
                    tracing::error!(%err, "the metrics server stopped");
                }
            }
            () = upkeep => {}
        }
    });
    Ok(Server {
        stop: Some(stop),
        task: Some(task),
    })
}

/// Liveness: the process answers HTTP. Unlike `/healthz` it does not look at NATS or the
/// database, whose outages kv-service rides out by itself (restarting it would not help).
async fn livez() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "{\"status\":\"alive\"}\n",
    )
}

async fn metrics_text(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ops.render(),
    )
}

async fn healthz(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    let (status, body) = match ops.health().await {
        Ok(()) => (
            StatusCode::OK,
            json!({"status": "ok", "nats": "connected", "database": "writable"}),
        ),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "unavailable", "reason": reason}),
        ),
    };
    let mut text = body.to_string();
    text.push('\n');
    (status, [(header::CONTENT_TYPE, "application/json")], text)
}
