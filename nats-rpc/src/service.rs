//! Serving endpoints: one queue subscription per endpoint, requests handled concurrently up to a
//! bound, the NATS micro protocol (`$SRV.PING|INFO|STATS`) answered, and a graceful drain.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Waker};
use std::time::{Duration, Instant};

use async_nats::{Message, Subscriber};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::endpoint::{Deadline, Endpoint};
use crate::error::codes;
use crate::micro::{self, EndpointInfo, ServiceInfo};
use crate::responder::{Reply, Responder, expired};
use crate::schema::EndpointSchemas;
use crate::stats::{EndpointStats, StatsSnapshot};
use crate::telemetry::{self, EndpointMetrics};
use crate::validate::{RequestValidator, SchemaError};

/// Default queue group: every instance of a service joins it, so NATS spreads requests.
pub const DEFAULT_QUEUE_GROUP: &str = "q";
/// Default bound on requests being handled at once, across all endpoints of a service.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
/// Default time [`Service::shutdown`] waits for in-flight requests.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Subscription buffer (messages) that [`connect_options`] sets, instead of async-nats's 65,536
/// (which could hold 4 GiB of 64 KB requests). Requests past the in-flight bound are answered
/// `OVERLOADED` straight from the buffer, so it drains fast; it must still hold the largest burst
/// clients put in flight at once (thousands of requests): on overflow async-nats drops
/// messages, and their senders time out. Memory for buffered requests is their own
/// size, at most this many of them.
pub const SUBSCRIPTION_CAPACITY: usize = 16_384;
/// Requests an endpoint's reader handles in place while messages keep arriving back to back;
/// past that, each becomes a task for [`BACKLOG_MODE`], so a backlog holds in-flight permits
/// and is shed `OVERLOADED`. Above the bursts a client's in-flight window makes, far below
/// [`SUBSCRIPTION_CAPACITY`].
const INLINE_BACKLOG: usize = 128;
/// How long an endpoint's reader keeps making every request a task after a backlog, extended
/// by each further one: a reader that drains a backlog finds the buffer empty for a moment
/// between the bursts that arrive while its tasks run, which does not mean it has caught up.
const BACKLOG_MODE: Duration = Duration::from_millis(100);
/// An endpoint's reader, which reads unconstrained by tokio's budget, yields to the tasks after
/// this many messages in a row.
const YIELD_EVERY: usize = 1024;

/// Connect options suited to a service: a bounded subscription buffer and a name. Start from
/// these and add credentials, then `connect(url)`.
pub fn connect_options() -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new().subscription_capacity(SUBSCRIPTION_CAPACITY)
}

/// A running service: serving until [`Service::shutdown`].
#[must_use = "a service stops serving only through `shutdown`; dropping the handle keeps it running"]
#[derive(Debug)]
pub struct Service {
    info: Arc<ServiceInfo>,
    stats: Vec<Arc<EndpointStats>>,
    shutdown: watch::Sender<bool>,
    readers: Vec<JoinHandle<()>>,
    micro: JoinHandle<()>,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    drain_timeout: Duration,
    client: async_nats::Client,
}

type Starter<S> = Box<
    dyn FnOnce(
            Shared<S>,
        ) -> Pin<Box<dyn Future<Output = Result<JoinHandle<()>, ServeError>> + Send>>
        + Send,
>;

struct Registration<S> {
    info: EndpointInfo,
    stats: Arc<EndpointStats>,
    start: Starter<S>,
}

/// What every endpoint of one service shares.
struct Shared<S> {
    client: async_nats::Client,
    state: Arc<S>,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    queue_group: String,
    default_timeout: Option<Duration>,
    shutdown: watch::Receiver<bool>,
}

/// Configures a service; see [`Service::builder`].
#[must_use = "a builder does nothing until `serve`"]
pub struct ServiceBuilder<S> {
    name: String,
    version: String,
    description: String,
    queue_group: String,
    max_in_flight: usize,
    drain_timeout: Duration,
    request_timeout: Option<Duration>,
    metadata: BTreeMap<String, String>,
    endpoints: Vec<Registration<S>>,
    /// What `endpoint` refused, reported by `serve` (the first).
    errors: Vec<ServeError>,
}

/// Why [`ServiceBuilder::serve`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServeError {
    /// The name, version, queue group or endpoint list is not acceptable.
    Config(String),
    /// An endpoint's request schema did not compile (a bug in its request type's
    /// `JsonSchema`, not bad input).
    Schema {
        /// The endpoint's name.
        endpoint: &'static str,
        /// What the schema compiler said.
        source: SchemaError,
    },
    /// Subscribing failed (connection closed, bad subject).
    Subscribe(async_nats::SubscribeError),
    /// The subscriptions could not be confirmed with the server.
    Flush(async_nats::client::FlushError),
}

/// The message says what failed; the cause, when there is one, is [`std::error::Error::source`]
/// (print the chain to see both).
impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Config(reason) => write!(f, "invalid service configuration: {reason}"),
            ServeError::Schema { endpoint, .. } => {
                write!(
                    f,
                    "the request schema of endpoint `{endpoint}` does not compile"
                )
            }
            ServeError::Subscribe(_) => f.write_str("cannot subscribe"),
            ServeError::Flush(_) => f.write_str("cannot confirm the subscriptions with the server"),
        }
    }
}

impl std::error::Error for ServeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServeError::Config(_) => None,
            ServeError::Schema { source, .. } => Some(source),
            ServeError::Subscribe(err) => Some(err),
            ServeError::Flush(err) => Some(err),
        }
    }
}

impl Service {
    /// Starts configuring a service called `name` (`[A-Za-z0-9_-]+`) at `version` (semver).
    pub fn builder<S: Send + Sync + 'static>(
        name: impl Into<String>,
        version: impl Into<String>,
    ) -> ServiceBuilder<S> {
        ServiceBuilder {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            queue_group: DEFAULT_QUEUE_GROUP.to_owned(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            request_timeout: None,
            metadata: BTreeMap::new(),
            endpoints: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The service's name, version, id and endpoints, as `$SRV.INFO` reports them.
    pub fn info(&self) -> &ServiceInfo {
        &self.info
    }

    /// The micro service id (unique per running instance).
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// Each endpoint's counters, in registration order, as `$SRV.STATS` reports them.
    pub fn stats(&self) -> Vec<(&EndpointInfo, StatsSnapshot)> {
        self.info
            .endpoints
            .iter()
            .zip(&self.stats)
            .map(|(info, stats)| (info, stats.snapshot()))
            .collect()
    }

    /// Serves until `signal` completes, then drains (see [`Service::shutdown`]).
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), DrainTimeout> {
        signal.await;
        self.shutdown().await
    }

    /// Graceful drain: stop taking new requests (unsubscribe), answer the ones already received
    /// (buffered or in flight), then stop. Returns `Err` if in-flight requests were still running
    /// after the drain timeout: they run on, but nothing takes a request any more. On `Ok`, the service holds the state no more: the caller's
    /// `Arc` is the last one unless it shared it elsewhere.
    pub async fn shutdown(self) -> Result<(), DrainTimeout> {
        // A round trip to the server first: everything it routed to us before this point is
        // then in our subscription buffers, where the drain below still answers it (async-nats
        // drops what arrives for a subscription after it is drained). Without a connection
        // there is nothing more to receive: only the requests in flight are waited for (a
        // flush would wait for the server's return).
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        if connected && !flush_within(&self.client, FLUSH_TIMEOUT).await {
            tracing::warn!("cannot flush before draining");
        }
        let started = Started {
            client: &self.client,
            shutdown: &self.shutdown,
            permits: &self.permits,
            max_in_flight: self.max_in_flight,
            drain_timeout: self.drain_timeout,
        };
        let drained = started
            .stop(self.readers, Some(self.micro), connected)
            .await;
        if connected {
            flush_within(&self.client, FLUSH_TIMEOUT).await;
        }
        if drained {
            Ok(())
        } else {
            Err(DrainTimeout(self.drain_timeout))
        }
    }
}

/// The longest [`Service::shutdown`] waits for the server to confirm what was sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits until the readers have finished (aborting them first when there is no connection:
/// nothing more can arrive) and every in-flight permit is back: every request taken has been
/// answered. A reader leaves `readers` once it has finished.
async fn drain(
    readers: &mut Vec<JoinHandle<()>>,
    permits: &Semaphore,
    max_in_flight: usize,
    connected: bool,
) {
    while let Some(reader) = readers.last_mut() {
        if !connected {
            reader.abort();
        }
        // Awaited either way: an aborted reader drops its hold on the state here.
        let _ = reader.await;
        readers.pop();
    }
    let _ = permits
        .acquire_many(u32::try_from(max_in_flight).unwrap_or(u32::MAX))
        .await;
}

/// What `serve` has started, to be stopped: by [`Service::shutdown`], or by a `serve` that
/// fails part-way.
struct Started<'a> {
    client: &'a async_nats::Client,
    shutdown: &'a watch::Sender<bool>,
    permits: &'a Semaphore,
    max_in_flight: usize,
    drain_timeout: Duration,
}

impl Started<'_> {
    /// The readers stop taking requests, answer what they had received and are awaited with
    /// the requests they spawned, within the drain timeout; readers still running after it
    /// are aborted, so none takes a request later; then the micro task is aborted. Whether
    /// everything was answered in time.
    async fn stop(
        &self,
        mut readers: Vec<JoinHandle<()>>,
        micro: Option<JoinHandle<()>>,
        connected: bool,
    ) -> bool {
        let _ = self.shutdown.send(true);
        let drained = drain(&mut readers, self.permits, self.max_in_flight, connected);
        let drained = tokio::time::timeout(self.drain_timeout, drained)
            .await
            .is_ok();
        // Empty when drained: a reader leaves the list once it has finished.
        for reader in readers {
            reader.abort();
            let _ = reader.await;
        }
        if let Some(micro) = micro {
            micro.abort();
            let _ = micro.await;
        }
        drained
    }

    /// Undoes a start that failed part-way, as [`Service::shutdown`] does, so when `serve`
    /// returns its error nothing answers for the service any more and the caller's state is
    /// free again, unless a request outlived the drain timeout.
    async fn abandon(&self, readers: Vec<JoinHandle<()>>, micro: Option<JoinHandle<()>>) {
        let connected = self.client.connection_state() == async_nats::connection::State::Connected;
        if !self.stop(readers, micro, connected).await {
            tracing::warn!("serve failed and requests were still running after the drain timeout");
        }
    }
}

/// Whether the server confirmed everything sent so far within `limit`.
async fn flush_within(client: &async_nats::Client, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, client.flush()).await,
        Ok(Ok(()))
    )
}

/// Requests were still in flight when the drain timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainTimeout(pub Duration);

impl std::fmt::Display for DrainTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "requests were still in flight after {:?}", self.0)
    }
}

impl std::error::Error for DrainTimeout {}

impl<S: Send + Sync + 'static> ServiceBuilder<S> {
    /// Adds endpoint `E` (the type `#[nats_rpc]` generates, named like the handler fn). Its
    /// request schema is compiled here, once.
    pub fn endpoint<E: Endpoint<State = S>>(mut self) -> Self {
        let validator = match RequestValidator::new::<E::Request>() {
            Ok(validator) => validator,
            Err(source) => {
                self.errors.push(ServeError::Schema {
                    endpoint: E::NAME,
                    source,
                });
                return self;
            }
        };
        let stats = Arc::new(EndpointStats::default());
        let info = EndpointInfo {
            name: E::NAME.to_owned(),
            subject: E::SUBJECT.to_owned(),
            queue_group: String::new(), // set in `serve`, once the group is final
            schemas: EndpointSchemas::of::<E>(),
        };
        let endpoint_stats = stats.clone();
        let codes = info.schemas.errors.clone();
        let start: Starter<S> = Box::new(move |context: Shared<S>| {
            Box::pin(async move {
                // Registered here, at `serve`: after the application installed its recorder.
                let metrics = EndpointMetrics::new(E::NAME, &codes);
                let subscriber = context
                    .client
                    .queue_subscribe(E::SUBJECT, context.queue_group.clone())
                    .await
                    .map_err(ServeError::Subscribe)?;
                let endpoint = Arc::new(Running::<E> {
                    client: context.client,
                    default_timeout: context.default_timeout,
                    responder: Responder::with(context.state, validator),
                    stats: endpoint_stats,
                    metrics,
                    span_name: format!("process {}", E::SUBJECT),
                    permits: context.permits,
                    max_in_flight: context.max_in_flight,
                });
                // Unconstrained: tokio's cooperative budget would make the reader yield after
                // 128 messages and wait behind every task it spawned, while the subscription
                // buffer fills and overflows; it yields on its own every YIELD_EVERY messages.
                Ok(tokio::spawn(tokio::task::unconstrained(
                    endpoint.read(subscriber, context.shutdown),
                )))
            })
        });
        self.endpoints.push(Registration { info, stats, start });
        self
    }

    /// The endpoints added so far, in order, as `$SRV.INFO` will describe them (queue group
    /// not yet set): so a service's endpoint list can be written once and read back, e.g. for
    /// its subjects or schemas.
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointInfo> {
        self.endpoints.iter().map(|registration| &registration.info)
    }

    /// A one-line description for `$SRV.INFO`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// The queue group every endpoint joins (default `q`), so instances share the load.
    pub fn queue_group(mut self, group: impl Into<String>) -> Self {
        self.queue_group = group.into();
        self
    }

    /// The bound on requests handled at once (default 512). Past it, requests are answered
    /// `OVERLOADED` at once instead of queueing toward a timeout.
    pub fn max_in_flight(mut self, limit: usize) -> Self {
        self.max_in_flight = limit;
        self
    }

    /// How long [`Service::shutdown`] waits for in-flight requests (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The deadline of requests that carry no `Rpc-Timeout-Ms` header (default: none, they
    /// are always run).
    pub fn request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// A metadata entry for `$SRV.INFO` / `PING` / `STATS`.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Subscribes every endpoint and the micro discovery subjects, confirms the subscriptions
    /// with the server, and returns the running service.
    pub async fn serve(
        mut self,
        client: async_nats::Client,
        state: impl Into<Arc<S>>,
    ) -> Result<Service, ServeError> {
        self.check()?;
        telemetry::describe();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(self.max_in_flight));
        let started = Started {
            client: &client,
            shutdown: &shutdown_tx,
            permits: &permits,
            max_in_flight: self.max_in_flight,
            drain_timeout: self.drain_timeout,
        };
        let state = state.into();
        let mut infos = Vec::with_capacity(self.endpoints.len());
        let mut all_stats = Vec::with_capacity(self.endpoints.len());
        let mut readers = Vec::with_capacity(self.endpoints.len());
        for registration in self.endpoints {
            let context = Shared {
                client: client.clone(),
                state: state.clone(),
                permits: permits.clone(),
                max_in_flight: self.max_in_flight,
                queue_group: self.queue_group.clone(),
                default_timeout: self.request_timeout,
                shutdown: shutdown_rx.clone(),
            };
            match (registration.start)(context).await {
                Ok(reader) => readers.push(reader),
                Err(err) => {
                    started.abandon(readers, None).await;
                    return Err(err);
                }
            }
            let mut info = registration.info;
            info.queue_group = self.queue_group.clone();
            infos.push(info);
            all_stats.push(registration.stats);
        }
        let schemas: Vec<EndpointSchemas> = infos.iter().map(|info| info.schemas.clone()).collect();
        let asyncapi = crate::asyncapi::document(&crate::asyncapi::Api {
            name: &self.name,
            version: &self.version,
            description: &self.description,
            queue_group: &self.queue_group,
            endpoints: &schemas,
        });
        let mut metadata = self.metadata;
        metadata.insert(
            micro::ASYNCAPI_KEY.to_owned(),
            micro::asyncapi_subject(&self.name),
        );
        let info = Arc::new(ServiceInfo {
            name: self.name,
            id: micro::new_id(),
            version: self.version,
            description: self.description,
            metadata,
            endpoints: infos,
            started: micro::now_rfc3339(),
        });
        let asyncapi = serde_json::to_vec(&asyncapi).expect("a JSON value serializes");
        let micro = micro::spawn(
            client.clone(),
            info.clone(),
            all_stats.clone(),
            asyncapi.into(),
        )
        .await;
        let micro = match micro {
            Ok(micro) => micro,
            Err(err) => {
                started.abandon(readers, None).await;
                return Err(ServeError::Subscribe(err));
            }
        };
        if let Err(err) = client.flush().await {
            started.abandon(readers, Some(micro)).await;
            return Err(ServeError::Flush(err));
        }
        Ok(Service {
            info,
            stats: all_stats,
            shutdown: shutdown_tx,
            readers,
            micro,
            permits,
            max_in_flight: self.max_in_flight,
            drain_timeout: self.drain_timeout,
            client,
        })
    }

    fn check(&mut self) -> Result<(), ServeError> {
        if !self.errors.is_empty() {
            return Err(self.errors.swap_remove(0));
        }
        if !micro::is_valid_name(&self.name) {
            return Err(ServeError::Config(format!(
                "service name `{}` must be non-empty and use only `A-Z a-z 0-9 _ -`",
                self.name
            )));
        }
        if !micro::is_semver(&self.version) {
            return Err(ServeError::Config(format!(
                "service version `{}` must be semver, e.g. `1.2.3`",
                self.version
            )));
        }
        if self.queue_group.is_empty() || self.queue_group.contains(char::is_whitespace) {
            return Err(ServeError::Config(format!(
                "queue group `{}` must be non-empty without whitespace",
                self.queue_group
            )));
        }
        if self.max_in_flight == 0 || self.max_in_flight > Semaphore::MAX_PERMITS {
            return Err(ServeError::Config(format!(
                "max_in_flight is {}; it must be from 1 to {}",
                self.max_in_flight,
                Semaphore::MAX_PERMITS
            )));
        }
        if self.endpoints.is_empty() {
            return Err(ServeError::Config(
                "a service needs at least one endpoint".into(),
            ));
        }
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            // `#[nats_rpc]` checks this at compile time; a hand-written `Endpoint` may not.
            if !micro::is_valid_name(&endpoint.info.name) {
                return Err(ServeError::Config(format!(
                    "endpoint name `{}` must be non-empty and use only `A-Z a-z 0-9 _ -` \
                     (NATS micro tools drop services whose endpoint names break this)",
                    endpoint.info.name
                )));
            }
            let clash = self.endpoints[..index]
                .iter()
                .find(|other| other.info.subject == endpoint.info.subject);
            if let Some(other) = clash {
                return Err(ServeError::Config(format!(
                    "endpoints `{}` and `{}` both serve `{}`",
                    other.info.name, endpoint.info.name, endpoint.info.subject
                )));
            }
        }
        Ok(())
    }
}

/// Whether a reply's time goes into the latency figures: not for requests shed without running
/// (their microseconds would pull the percentiles down exactly when the service is saturated;
/// they are counted as requests and as shed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measured {
    Yes,
    No,
}

/// One endpoint being served.
struct Running<E: Endpoint> {
    client: async_nats::Client,
    responder: Responder<E>,
    /// The timeout of requests without a timeout header.
    default_timeout: Option<Duration>,
    stats: Arc<EndpointStats>,
    metrics: EndpointMetrics,
    /// The request span's `otel.name`: `process <subject template>`.
    span_name: String,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
}

impl<E: Endpoint> Running<E> {
    /// Takes messages off the subscription: each gets a permit and its own task, or an
    /// immediate `OVERLOADED` reply. On shutdown, unsubscribes and keeps reading until the
    /// buffered messages are gone.
    async fn read(
        self: Arc<Self>,
        mut subscriber: Subscriber,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut draining = false;
        // Messages taken since the subscription was last found empty.
        let mut backlog: usize = 0;
        // Every request a task until then (see BACKLOG_MODE).
        let mut tasks_until: Option<Instant> = None;
        // Set when the wait below saw the stop (it marks the value seen, so has_changed is
        // false from then on).
        let mut stop = false;
        loop {
            // The value changes once, to stop; a dropped service (the sender gone) stops too.
            // has_changed is an atomic load, where borrow would take the value's lock.
            if !draining && (stop || shutdown.has_changed().unwrap_or(true)) {
                draining = true;
                if let Err(err) = subscriber.drain().await {
                    tracing::warn!(endpoint = E::NAME, %err, "cannot drain subscription");
                    break;
                }
            }
            let message = match subscriber.next().now_or_never() {
                Some(message) => {
                    backlog += 1;
                    message
                }
                None if draining => {
                    backlog = 0;
                    subscriber.next().await
                }
                None => {
                    backlog = 0;
                    tokio::select! {
                        biased;
                        () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                            stop = true;
                            continue;
                        }
                        message = subscriber.next() => message,
                    }
                }
            };
            let Some(message) = message else { break };
            // The deadline counts from here: the message has just left the subscription.
            let now = Instant::now();
            let deadline =
                Deadline::of_request(now, message.headers.as_ref(), self.default_timeout);
            if backlog >= INLINE_BACKLOG {
                tasks_until = Some(now + BACKLOG_MODE);
            }
            let inline = tasks_until.is_none_or(|until| now >= until);
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let mut request = Box::pin(self.clone().handle(message, deadline, permit));
                    // Poll once right here while the subscription keeps up: a request that
                    // completes without waiting (a rejection, a handler answering from memory)
                    // is answered without the cost of scheduling a task, often on another
                    // thread. Behind a backlog every request becomes a task, so the backlog
                    // holds permits and the in-flight bound sheds it: handled here, it would
                    // sit in the subscription buffer, invisible, until async-nats dropped it
                    // unanswered.
                    let mut cx = TaskContext::from_waker(Waker::noop());
                    if !inline || request.as_mut().poll(&mut cx).is_pending() {
                        tokio::spawn(request);
                    }
                }
                Err(_) => self.overloaded(message).await,
            }
            if backlog % YIELD_EVERY == YIELD_EVERY - 1 {
                // Read unconstrained (the buffer must keep draining), but let the tasks run.
                tokio::task::yield_now().await;
            }
        }
    }

    async fn handle(
        self: Arc<Self>,
        message: Message,
        deadline: Option<Deadline>,
        permit: OwnedSemaphorePermit,
    ) {
        let started = Instant::now();
        let (span, trace) = telemetry::request_span(
            &self.span_name,
            E::NAME,
            E::SUBJECT,
            message.subject.as_str(),
            message.headers.as_ref(),
        );
        self.metrics.in_flight.increment(1);
        let (reply, measured) = match expired(deadline) {
            Some(reply) => {
                self.metrics.expired.increment(1);
                (reply, Measured::No)
            }
            None => {
                let run = self.responder.run(
                    message.subject.as_str(),
                    &message.payload,
                    message.headers.as_ref(),
                    deadline,
                );
                let reply = telemetry::Traced::new(span.clone(), trace, run).await;
                (reply, Measured::Yes)
            }
        };
        telemetry::record_outcome(&span, reply.code());
        let finish = self.finish(started, message.reply, reply, measured);
        telemetry::Traced::new(span, None, finish).await;
        self.metrics.in_flight.decrement(1);
        // The state goes before the permit: once shutdown holds every permit, no request task
        // still holds the state, so the caller can take it back (e.g. to close a database).
        drop(self);
        drop(permit);
    }

    async fn overloaded(&self, message: Message) {
        let reply = Reply::failure(
            &codes::OVERLOADED,
            format!(
                "Service overloaded: {} requests already in flight, retry later",
                self.max_in_flight
            ),
        );
        self.metrics.overloaded.increment(1);
        self.finish(Instant::now(), message.reply, reply, Measured::No)
            .await;
    }

    async fn finish(
        &self,
        started: Instant,
        to: Option<async_nats::Subject>,
        reply: Reply,
        measured: Measured,
    ) {
        let elapsed = started.elapsed();
        let measured = measured == Measured::Yes;
        self.stats.record(elapsed, reply.error(), measured);
        self.metrics.answered(reply.code().map(|(code, _)| code));
        if measured {
            self.metrics.duration.record(elapsed.as_secs_f64());
        }
        let Some(to) = to else {
            tracing::debug!(endpoint = E::NAME, "request without a reply subject");
            return;
        };
        let sent = match reply.headers() {
            None => self.client.publish(to, reply.payload()).await,
            Some(headers) => {
                self.client
                    .publish_with_headers(to, headers, reply.payload())
                    .await
            }
        };
        if let Err(err) = sent {
            tracing::warn!(endpoint = E::NAME, %err, "cannot send reply");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::{Semaphore, watch};

    use super::Started;

    /// A failed `serve` waits for the requests its readers had spawned, not only for the
    /// readers: a request still running holds the state and an in-flight permit, and `serve`
    /// returns once it has answered.
    #[tokio::test]
    async fn abandon_waits_for_the_requests_already_spawned() {
        let server = test_support::NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let (shutdown, mut stop) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(4));
        let state = Arc::new(());
        // A request in flight: its permit and its hold on the state, for 300 ms.
        let permit = permits.clone().acquire_owned().await.unwrap();
        let held = state.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop((held, permit));
        });
        // Its reader, which stops when told to.
        let reader = tokio::spawn(async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        });
        let started = Started {
            client: &client,
            shutdown: &shutdown,
            permits: &permits,
            max_in_flight: 4,
            drain_timeout: Duration::from_secs(5),
        };
        started.abandon(vec![reader], None).await;
        assert_eq!(
            Arc::strong_count(&state),
            1,
            "a request still holds the state"
        );
    }
}
