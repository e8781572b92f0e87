//! Request spans and trace context: each request runs in a span named `process <subject
//! template>` (never the reply inbox), a `traceparent` on the request is continued, the
//! `Client` sends one, and with the `opentelemetry` feature spans are exported with the caller
//! as their parent — checked with an in-memory exporter, no collector.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nats_rpc::{Client, Service, nats_rpc};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use test_support::NatsServer;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
struct Text {
    text: String,
}

#[nats_rpc(subject = "trace.echo")]
async fn echo(_state: &(), request: Text) -> Result<Text, nats_rpc::Error> {
    Ok(request)
}

#[nats_rpc(subject = "trace.room.*.fail")]
async fn fail(_state: &(), _request: Text) -> Result<Text, nats_rpc::Error> {
    Err(nats_rpc::Error::internal())
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

struct Fixture {
    _server: NatsServer,
    nats: async_nats::Client,
    service: Service,
}

async fn start() -> Fixture {
    let server = NatsServer::start();
    let nats = nats_rpc::connect_options()
        .connect(server.url())
        .await
        .expect("connect");
    let service = Service::builder("tracer", "1.0.0")
        .endpoint::<echo>()
        .endpoint::<fail>()
        .serve(nats.clone(), ())
        .await
        .expect("serve");
    Fixture {
        _server: server,
        nats,
        service,
    }
}

async fn request_with_traceparent(nats: &async_nats::Client, subject: &str, traceparent: &str) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent);
    tokio::time::timeout(
        Duration::from_secs(5),
        nats.request_with_headers(
            subject.to_owned(),
            headers,
            Bytes::from_static(br#"{"text":"hi"}"#),
        ),
    )
    .await
    .expect("a reply within 5 s")
    .expect("request");
}

/// A closed span's name and every field recorded on it.
type SpanFields = (String, BTreeMap<String, String>);

/// Spans as a plain `tracing` layer sees them.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<SpanFields>>>);

impl Captured {
    /// A capturing subscriber as this thread's default, for as long as the guard lives.
    fn install() -> (Captured, tracing::subscriber::DefaultGuard) {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(Capture(captured.clone()));
        (captured, tracing::subscriber::set_default(subscriber))
    }

    /// The fields of every closed request span, in closing order.
    fn requests(&self) -> Vec<BTreeMap<String, String>> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|(name, _)| name == "request")
            .map(|(_, fields)| fields.clone())
            .collect()
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

struct Capture(Captured);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: LayerContext<'_, S>) {
        let span = ctx.span(id).unwrap();
        let mut extensions = span.extensions_mut();
        let fields = extensions.get_mut::<BTreeMap<String, String>>().unwrap();
        values.record(&mut Fields(fields));
    }

    fn on_close(&self, id: Id, ctx: LayerContext<'_, S>) {
        let span = ctx.span(&id).unwrap();
        let fields = span
            .extensions()
            .get::<BTreeMap<String, String>>()
            .cloned()
            .unwrap();
        self.0
            .0
            .lock()
            .unwrap()
            .push((span.name().to_owned(), fields));
    }
}

/// Waits (up to 10 s) until `count` request spans have closed (their tasks finish after the
/// reply is sent).
async fn wait_for<T: Clone>(spans: impl Fn() -> Vec<T>, count: usize) -> Vec<T> {
    for _ in 0..1000 {
        let now = spans();
        if now.len() >= count {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    spans()
}

#[tokio::test]
async fn request_spans_record_subject_template_code_and_trace_context() {
    let (captured, _guard) = Captured::install();
    let f = start().await;

    request_with_traceparent(
        &f.nats,
        "trace.echo",
        &format!("00-{TRACE_ID}-{PARENT_ID}-01"),
    )
    .await;
    request_with_traceparent(&f.nats, "trace.room.lobby.fail", "not a traceparent").await;

    let spans = wait_for(|| captured.requests(), 2).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    let echo = &spans[0];
    assert_eq!(echo["otel.name"], "process trace.echo");
    assert_eq!(echo["otel.kind"], "server");
    assert_eq!(echo["messaging.destination.name"], "trace.echo");
    assert_eq!(echo["rpc.endpoint"], "echo");
    assert_eq!(echo["rpc.code"], "OK");
    assert_eq!(echo["trace_id"], TRACE_ID);
    assert_eq!(echo["parent_id"], PARENT_ID);
    assert!(!echo.contains_key("otel.status_code"), "{echo:?}");

    // A wildcard endpoint is named by its template; the concrete subject is an attribute. An
    // invalid traceparent is ignored (the request starts a trace of its own, and is served).
    let fail = &spans[1];
    assert_eq!(fail["otel.name"], "process trace.room.*.fail");
    assert_eq!(fail["messaging.destination.template"], "trace.room.*.fail");
    assert_eq!(fail["messaging.destination.name"], "trace.room.lobby.fail");
    assert_eq!(fail["rpc.code"], "INTERNAL_ERROR");
    assert_eq!(fail["otel.status_code"], "ERROR");
    assert!(!fail.contains_key("parent_id"), "{fail:?}");
    assert_ne!(fail["trace_id"], TRACE_ID, "a trace of its own");

    for span in &spans {
        assert!(
            span.values().all(|value| !value.contains("_INBOX")),
            "the reply inbox leaked into a span: {span:?}"
        );
    }
    drop(f.service);
}

#[nats_rpc(subject = "trace.relay")]
async fn relay(client: &Client, request: Text) -> Result<Text, nats_rpc::Error> {
    client
        .call::<echo>(&request)
        .await
        .map_err(|_| nats_rpc::Error::internal())
}

/// Without OpenTelemetry: a `Client` call made by a handler carries the request's trace on
/// (same trace id; the handler's request span as parent); a call from outside any request
/// sends no `traceparent`, and the callee starts a trace of its own.
#[tokio::test]
async fn the_client_carries_the_handlers_trace_on_and_invents_none() {
    let (captured, _guard) = Captured::install();
    let f = start().await;
    let relaying = Service::builder("relayer", "1.0.0")
        .endpoint::<relay>()
        .serve(f.nats.clone(), Client::new(f.nats.clone()))
        .await
        .expect("serve");
    request_with_traceparent(
        &f.nats,
        "trace.relay",
        &format!("00-{TRACE_ID}-{PARENT_ID}-01"),
    )
    .await;
    Client::new(f.nats.clone())
        .call::<echo>(&Text { text: "a".into() })
        .await
        .unwrap();
    let spans = wait_for(|| captured.requests(), 3).await;
    let by = |endpoint: &str| -> Vec<&BTreeMap<String, String>> {
        spans
            .iter()
            .filter(|s| s["rpc.endpoint"] == endpoint)
            .collect()
    };
    let relayed = by("relay");
    assert_eq!(relayed.len(), 1, "{spans:?}");
    let relayed = relayed[0];
    assert_eq!(relayed["trace_id"], TRACE_ID);
    assert_eq!(relayed["parent_id"], PARENT_ID);
    let echoes = by("echo");
    assert_eq!(echoes.len(), 2, "{spans:?}");
    let inner = echoes
        .iter()
        .find(|s| s.get("parent_id") == relayed.get("span_id"))
        .unwrap_or_else(|| panic!("no echo span under the relay's span: {spans:?}"));
    assert_eq!(inner["trace_id"], TRACE_ID, "the same trace, carried on");
    let outside = echoes
        .iter()
        .find(|s| s["trace_id"] != TRACE_ID)
        .unwrap_or_else(|| panic!("no echo span of its own trace: {spans:?}"));
    assert!(
        !outside.contains_key("parent_id"),
        "no invented parent: {outside:?}"
    );
    assert_eq!(outside["trace_id"].len(), 32);
    assert_eq!(outside["span_id"].len(), 16);
    drop(relaying);
}

fn otel_subscriber() -> (
    InMemorySpanExporter,
    SdkTracerProvider,
    impl tracing::Subscriber,
) {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("nats-rpc-test"));
    (
        exporter,
        provider,
        tracing_subscriber::registry().with(layer),
    )
}

/// The exported request spans (`process …`): other spans (the client library's, the test's
/// own) may be exported too, and in any order.
fn exported(exporter: &InMemorySpanExporter) -> Vec<SpanData> {
    exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|span| span.name.starts_with("process "))
        .collect()
}

/// With the `opentelemetry` feature, an incoming `traceparent` becomes the exported server
/// span's remote parent.
#[tokio::test]
async fn opentelemetry_export_continues_the_callers_trace() {
    let (exporter, _provider, subscriber) = otel_subscriber();
    let _guard = tracing::subscriber::set_default(subscriber);
    let f = start().await;
    request_with_traceparent(
        &f.nats,
        "trace.echo",
        &format!("00-{TRACE_ID}-{PARENT_ID}-01"),
    )
    .await;
    request_with_traceparent(
        &f.nats,
        "trace.room.x.fail",
        &format!("00-{TRACE_ID}-{PARENT_ID}-01"),
    )
    .await;
    let spans = wait_for(|| exported(&exporter), 2).await;
    let echo = spans
        .iter()
        .find(|span| span.name == "process trace.echo")
        .unwrap_or_else(|| panic!("no echo span in {spans:?}"));
    assert_eq!(echo.span_kind, SpanKind::Server);
    assert_eq!(echo.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(echo.parent_span_id.to_string(), PARENT_ID);
    assert!(echo.parent_span_is_remote);
    let attribute = |span: &SpanData, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(
        attribute(echo, "messaging.destination.name").as_deref(),
        Some("trace.echo")
    );
    assert_eq!(attribute(echo, "rpc.code").as_deref(), Some("OK"));
    let fail = spans
        .iter()
        .find(|span| span.name == "process trace.room.*.fail")
        .unwrap_or_else(|| panic!("no fail span in {spans:?}"));
    assert!(
        matches!(fail.status, Status::Error { .. }),
        "{:?}",
        fail.status
    );
}

/// A `Client` call made inside a span propagates that span: the server's span is its child.
#[tokio::test]
async fn the_client_propagates_the_current_span() {
    let (exporter, _provider, subscriber) = otel_subscriber();
    let _guard = tracing::subscriber::set_default(subscriber);
    let f = start().await;
    let client = Client::new(f.nats.clone());
    let caller = tracing::info_span!("caller");
    let caller_context = caller.context().span().span_context().clone();
    assert!(caller_context.is_valid());
    {
        use tracing::Instrument;
        client
            .call::<echo>(&Text { text: "a".into() })
            .instrument(caller.clone())
            .await
            .unwrap();
    }
    drop(caller);
    let spans = wait_for(|| exported(&exporter), 1).await;
    let server = spans
        .iter()
        .find(|span| span.name == "process trace.echo")
        .unwrap_or_else(|| panic!("no server span in {spans:?}"));
    assert_eq!(server.span_context.trace_id(), caller_context.trace_id());
    assert_eq!(server.parent_span_id, caller_context.span_id());
}
