//! The NATS micro protocol (ADR-32): every instance answers `$SRV.PING|INFO|STATS`, also
//! addressed by service name and by name + id, with its name, version, endpoints and counters.
//! Written here rather than on async-nats's `service` module because that one neither counts
//! error envelopes (errors that carry a body) nor lets requests run concurrently.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::error::ErrorCode;
use crate::schema::EndpointSchemas;
use crate::stats::{EndpointStats, LATENCY_WINDOW};

/// Header carrying an error reply's message (ADR-32).
pub const ERROR_HEADER: &str = "Nats-Service-Error";
/// Header carrying an error reply's status as a number (ADR-32), e.g. `400`.
pub const ERROR_CODE_HEADER: &str = "Nats-Service-Error-Code";
/// Header carrying an error reply's code string, e.g. `MISSING_FIELD` (also in the body).
pub const RPC_CODE_HEADER: &str = "Rpc-Error-Code";

const VERBS: [&str; 3] = ["PING", "INFO", "STATS"];

/// What `$SRV.INFO` tells about a service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceInfo {
    pub name: String,
    pub id: String,
    pub version: String,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
    pub endpoints: Vec<EndpointInfo>,
    /// RFC 3339 UTC start time.
    pub started: String,
}

/// What `$SRV.INFO` tells about one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointInfo {
    pub name: String,
    pub subject: String,
    pub queue_group: String,
    /// Its request, success-reply and error-reply schemas and error codes: published as
    /// endpoint metadata, so a client with only a NATS connection can fetch them.
    pub schemas: EndpointSchemas,
}

/// Endpoint metadata key: the comma-separated error codes an endpoint can reply with.
pub const ERRORS_KEY: &str = "errors";
/// Endpoint metadata keys: its JSON Schemas (compact JSON text, 2020-12) for the request, the
/// success reply and the error reply.
pub const SCHEMA_KEYS: [&str; 3] = ["request_schema", "response_schema", "error_schema"];
/// Service metadata key: the subject answering with the service's AsyncAPI document.
pub const ASYNCAPI_KEY: &str = "asyncapi_subject";

impl EndpointInfo {
    /// The error codes the endpoint can reply with.
    pub fn errors(&self) -> &[ErrorCode] {
        &self.schemas.errors
    }

    /// Its `$SRV.INFO` metadata: every value a string, as ADR-32 requires.
    pub(crate) fn metadata(&self) -> BTreeMap<&'static str, String> {
        let codes: Vec<&str> = self.errors().iter().map(|code| code.code).collect();
        let mut metadata = BTreeMap::from([(ERRORS_KEY, codes.join(","))]);
        for (key, schema) in SCHEMA_KEYS.into_iter().zip([
            &self.schemas.request,
            &self.schemas.response,
            &self.schemas.error,
        ]) {
            metadata.insert(key, schema.to_string());
        }
        metadata
    }
}

/// The subject answering with service `name`'s AsyncAPI document (and `.<id>` for one
/// instance's).
pub fn asyncapi_subject(name: &str) -> String {
    format!("$SRV.ASYNCAPI.{name}")
}

#[derive(Serialize)]
struct EndpointJson<'a> {
    name: &'a str,
    subject: &'a str,
    queue_group: &'a str,
    metadata: BTreeMap<&'static str, String>,
}

impl ServiceInfo {
    fn ping(&self) -> bytes::Bytes {
        render(&json!({
            "type": "io.nats.micro.v1.ping_response",
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "metadata": self.metadata,
        }))
    }

    fn info(&self) -> bytes::Bytes {
        let endpoints: Vec<EndpointJson<'_>> = self
            .endpoints
            .iter()
            .map(|endpoint| EndpointJson {
                name: &endpoint.name,
                subject: &endpoint.subject,
                queue_group: &endpoint.queue_group,
                metadata: endpoint.metadata(),
            })
            .collect();
        render(&json!({
            "type": "io.nats.micro.v1.info_response",
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "description": self.description,
            "metadata": self.metadata,
            "endpoints": endpoints,
        }))
    }

    fn stats(&self, stats: &[Arc<EndpointStats>]) -> bytes::Bytes {
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .zip(stats)
            .map(|(endpoint, stats)| {
                let snapshot = stats.snapshot();
                let latency = snapshot.latency;
                json!({
                    "name": endpoint.name,
                    "subject": endpoint.subject,
                    "queue_group": endpoint.queue_group,
                    "num_requests": snapshot.num_requests,
                    "num_errors": snapshot.num_errors,
                    "last_error": snapshot.last_error,
                    "processing_time": nanos(snapshot.processing_time),
                    "average_processing_time": nanos(snapshot.average_processing_time),
                    // Beyond ADR-32's counters: processing-time percentiles (nanoseconds, like
                    // `processing_time`) of the requests of the last `window_seconds`.
                    "data": {
                        "latency": {
                            "window_seconds": LATENCY_WINDOW.as_secs(),
                            "count": latency.count,
                            "p50": nanos(latency.p50),
                            "p90": nanos(latency.p90),
                            "p99": nanos(latency.p99),
                            "max": nanos(latency.max),
                        }
                    },
                })
            })
            .collect();
        render(&json!({
            "type": "io.nats.micro.v1.stats_response",
            "name": self.name,
            "id": self.id,
            "version": self.version,
            "metadata": self.metadata,
            "started": self.started,
            "endpoints": endpoints,
        }))
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn render(body: &Value) -> bytes::Bytes {
    serde_json::to_vec(body)
        .expect("a JSON value serializes")
        .into()
}

/// Subscribes the nine discovery subjects, and the AsyncAPI document's two, and answers them
/// until aborted.
pub(crate) async fn spawn(
    client: async_nats::Client,
    info: Arc<ServiceInfo>,
    stats: Vec<Arc<EndpointStats>>,
    asyncapi: bytes::Bytes,
) -> Result<JoinHandle<()>, async_nats::SubscribeError> {
    let mut subscribers = Vec::with_capacity(VERBS.len() * 3 + 2);
    for verb in VERBS {
        for subject in [
            format!("$SRV.{verb}"),
            format!("$SRV.{verb}.{}", info.name),
            format!("$SRV.{verb}.{}.{}", info.name, info.id),
        ] {
            subscribers.push((verb, client.subscribe(subject).await?));
        }
    }
    let document = asyncapi_subject(&info.name);
    for subject in [document.clone(), format!("{document}.{}", info.id)] {
        subscribers.push(("ASYNCAPI", client.subscribe(subject).await?));
    }
    let mut requests = futures_util::stream::select_all(
        subscribers
            .into_iter()
            .map(|(verb, subscriber)| subscriber.map(move |message| (verb, message))),
    );
    Ok(tokio::spawn(async move {
        while let Some((verb, message)) = requests.next().await {
            let Some(reply) = message.reply else { continue };
            let payload = match verb {
                "PING" => info.ping(),
                "INFO" => info.info(),
                "ASYNCAPI" => asyncapi.clone(),
                _ => info.stats(&stats),
            };
            if let Err(err) = client.publish(reply, payload).await {
                tracing::warn!(%err, verb, "cannot answer discovery request");
            }
        }
    }))
}

/// One running instance of a service, as its `$SRV.INFO` reply describes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Instance {
    pub name: String,
    pub id: String,
    #[serde(default)]
    pub version: String,
    /// The service's metadata (`null` in the reply reads as empty).
    #[serde(default, deserialize_with = "null_as_default")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<InstanceEndpoint>,
}

/// One endpoint of an [`Instance`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstanceEndpoint {
    pub name: String,
    pub subject: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub queue_group: String,
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Every instance of service `name` that answers `$SRV.INFO.<name>` within `window` (any
/// implementation of NATS micro, this one or another), in the order their replies came.
/// Replies that are not an INFO response are skipped.
pub async fn discover(
    client: &async_nats::Client,
    name: &str,
    window: Duration,
) -> Result<Vec<Instance>, async_nats::Error> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(format!("$SRV.INFO.{name}"), inbox, bytes::Bytes::new())
        .await?;
    client.flush().await?;
    let deadline = tokio::time::Instant::now() + window;
    let mut found = Vec::new();
    while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.next()).await {
        match serde_json::from_slice::<Instance>(&reply.payload) {
            Ok(instance) if instance.name == name => found.push(instance),
            Ok(_) => {}
            Err(err) => tracing::debug!(%err, "skipping a reply that is not an INFO response"),
        }
    }
    let _ = replies.unsubscribe().await;
    Ok(found)
}

/// A fresh, unique service id.
pub(crate) fn new_id() -> String {
    nuid::next().to_string()
}

/// Now, as RFC 3339 UTC (what `started` holds).
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `[A-Za-z0-9_-]+`, the micro naming rule.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `MAJOR.MINOR.PATCH` with optional `-pre` / `+build`, as micro requires.
pub(crate) fn is_semver(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_digit())
                && (part.len() == 1 || !part.starts_with('0'))
        })
}
