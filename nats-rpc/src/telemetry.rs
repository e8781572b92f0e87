//! Per-request telemetry: a `tracing` span that continues the caller's W3C trace context, and
//! metrics through the [`metrics`] facade (recorded only when the application installs a
//! recorder, e.g. a Prometheus exporter, before `serve`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use async_nats::HeaderMap;
use metrics::{Counter, Gauge, Histogram};
use tracing::Span;
use tracing::field::Empty;

use crate::error::ErrorCode;

/// The `tracing` target of the per-request spans (level INFO): filter it out of a text log
/// that should not pay for formatting a span per request.
pub const SPAN_TARGET: &str = "nats_rpc::request";

/// The W3C Trace Context header a request may carry and [`crate::Client`] sends.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Metric: requests answered, by `endpoint` and reply `code` (`OK` for a success).
pub const REQUESTS_METRIC: &str = "nats_rpc_requests_total";
/// Metric: seconds from taking a request off the subscription to its reply being ready, by
/// `endpoint`, for requests that ran (shed ones are in [`SHED_METRIC`]).
pub const DURATION_METRIC: &str = "nats_rpc_request_duration_seconds";
/// Metric: requests being handled now, by `endpoint`.
pub const IN_FLIGHT_METRIC: &str = "nats_rpc_requests_in_flight";
/// Metric: requests answered without running their handler, by `endpoint` and `reason`
/// (`overloaded`: past the in-flight bound; `deadline`: its deadline had passed).
pub const SHED_METRIC: &str = "nats_rpc_requests_shed_total";

/// A `traceparent` value (W3C Trace Context, version `00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// 16 bytes, never zero.
    pub trace_id: u128,
    /// The caller's span: 8 bytes, never zero.
    pub parent_id: u64,
    /// Bit 0: sampled.
    pub flags: u8,
}

impl TraceParent {
    /// Parses a header value; `None` when it is not a valid trace context (which then starts
    /// no trace rather than failing the request). Later versions are read by their version-00
    /// prefix, as the W3C spec asks.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim();
        let bytes = value.as_bytes();
        let version = value.get(0..2)?;
        let well_formed = match version {
            "00" => bytes.len() == 55,
            "ff" => false,
            _ => bytes.len() == 55 || (bytes.len() > 55 && bytes[55] == b'-'),
        };
        if !well_formed || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let hex = |range: std::ops::Range<usize>| -> Option<&str> {
            let part = value.get(range)?;
            part.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                .then_some(part)
        };
        hex(0..2)?;
        let trace_id = u128::from_str_radix(hex(3..35)?, 16).ok()?;
        let parent_id = u64::from_str_radix(hex(36..52)?, 16).ok()?;
        let flags = u8::from_str_radix(hex(53..55)?, 16).ok()?;
        (trace_id != 0 && parent_id != 0).then_some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// A new trace with a new span id, sampled: for a caller starting a trace of its own.
    pub fn random() -> TraceParent {
        TraceParent {
            trace_id: rand::random::<u128>().max(1),
            parent_id: rand::random::<u64>().max(1),
            flags: 1,
        }
    }

    /// The header value, e.g. `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`.
    pub fn header_value(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

tokio::task_local! {
    /// The trace context of the request a task is handling: what a [`crate::Client`] call made
    /// from its handler sends on (without the `opentelemetry` feature).
    static CURRENT: TraceParent;
}

/// The span one request runs in: `otel.name` is `process <subject template>` (the template,
/// so wildcard endpoints make one span name and the reply inbox never appears); the concrete
/// subject is an attribute. A valid `traceparent` is continued: its ids are recorded as
/// `trace_id` / `parent_id`, and with the `opentelemetry` feature it becomes the span's parent;
/// without one the request starts a trace. The span gets its own `span_id`. Returns the span
/// and, when it is enabled, the context calls made while handling it carry on.
pub(crate) fn request_span(
    otel_name: &str,
    endpoint: &'static str,
    template: &'static str,
    subject: &str,
    headers: Option<&HeaderMap>,
) -> (Span, Option<TraceParent>) {
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "request",
        otel.name = otel_name,
        otel.kind = "server",
        otel.status_code = Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.template = template,
        messaging.destination.name = subject,
        rpc.endpoint = endpoint,
        rpc.code = Empty,
        trace_id = Empty,
        parent_id = Empty,
        span_id = Empty,
    );
    if span.is_disabled() {
        return (span, None);
    }
    let parent = headers
        .and_then(|headers| headers.get(TRACEPARENT_HEADER))
        .and_then(|value| TraceParent::parse(value.as_str()));
    let mine = TraceParent {
        trace_id: parent.map_or_else(|| rand::random::<u128>().max(1), |p| p.trace_id),
        parent_id: rand::random::<u64>().max(1),
        flags: parent.map_or(1, |p| p.flags),
    };
    span.record("trace_id", format_args!("{:032x}", mine.trace_id));
    span.record("span_id", format_args!("{:016x}", mine.parent_id));
    if let Some(parent) = parent {
        span.record("parent_id", format_args!("{:016x}", parent.parent_id));
        #[cfg(feature = "opentelemetry")]
        if let Some(headers) = headers {
            otel::continue_trace(&span, headers);
        }
    }
    (span, Some(mine))
}

pin_project_lite::pin_project! {
    /// A request's work, polled inside its span and with its trace as the context
    /// [`crate::Client`] calls carry on: what `instrument(span)` plus a task-local scope do, in
    /// one wrapper. The request futures are large (they hold the handler's), and every wrapper
    /// they pass through copies them whole; this one is the only one.
    pub(crate) struct Traced<F> {
        span: Span,
        trace: Option<TraceParent>,
        #[pin]
        inner: F,
    }
}

impl<F> Traced<F> {
    pub(crate) fn new(span: Span, trace: Option<TraceParent>, inner: F) -> Self {
        Traced { span, trace, inner }
    }
}

impl<F: Future> Future for Traced<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        match *this.trace {
            Some(trace) => CURRENT.sync_scope(trace, || this.inner.poll(cx)),
            None => this.inner.poll(cx),
        }
    }
}

/// Records the reply's code on the request span; a 5xx is an error span.
pub(crate) fn record_outcome(span: &Span, code: Option<(&str, u16)>) {
    match code {
        None => {
            span.record("rpc.code", "OK");
        }
        Some((code, status)) => {
            span.record("rpc.code", code);
            if status >= 500 {
                span.record("otel.status_code", "ERROR");
            }
        }
    }
}

/// The `traceparent` a client sends: with the `opentelemetry` feature, the current span's
/// context when it has one; else, inside a handler, the request's own (same trace, the
/// request's span as parent); else none (the callee starts a trace: an invented parent would
/// be a span no exporter ever saw).
pub(crate) fn outgoing_traceparent(headers: &mut HeaderMap) {
    #[cfg(feature = "opentelemetry")]
    if otel::inject_current(headers) {
        return;
    }
    if let Ok(value) = CURRENT.try_with(TraceParent::header_value) {
        headers.insert(TRACEPARENT_HEADER, value.as_str());
    }
}

/// One endpoint's metric handles, registered once at `serve` (so the hot path only adds).
pub(crate) struct EndpointMetrics {
    endpoint: &'static str,
    ok: Counter,
    by_code: Vec<(&'static str, Counter)>,
    pub(crate) duration: Histogram,
    pub(crate) in_flight: Gauge,
    pub(crate) overloaded: Counter,
    pub(crate) expired: Counter,
}

impl EndpointMetrics {
    /// Handles for `endpoint`, with a counter for each code it can reply with.
    pub(crate) fn new(endpoint: &'static str, codes: &[ErrorCode]) -> Self {
        let requests = |code: &'static str| metrics::counter!(REQUESTS_METRIC, "endpoint" => endpoint, "code" => code);
        EndpointMetrics {
            endpoint,
            ok: requests("OK"),
            by_code: codes.iter().map(|c| (c.code, requests(c.code))).collect(),
            duration: metrics::histogram!(DURATION_METRIC, "endpoint" => endpoint),
            in_flight: metrics::gauge!(IN_FLIGHT_METRIC, "endpoint" => endpoint),
            overloaded: metrics::counter!(SHED_METRIC, "endpoint" => endpoint, "reason" => "overloaded"),
            expired: metrics::counter!(SHED_METRIC, "endpoint" => endpoint, "reason" => "deadline"),
        }
    }

    /// Counts one reply with `code` (`None`: success).
    pub(crate) fn answered(&self, code: Option<&str>) {
        let Some(code) = code else {
            self.ok.increment(1);
            return;
        };
        match self.by_code.iter().find(|(known, _)| *known == code) {
            Some((_, counter)) => counter.increment(1),
            // A code outside the endpoint's catalogue (a hand-written `RpcError` that does not
            // list it): registered on first use.
            None => metrics::counter!(
                REQUESTS_METRIC,
                "endpoint" => self.endpoint,
                "code" => code.to_owned()
            )
            .increment(1),
        }
    }
}

/// Describes the metrics for the installed recorder (their `# HELP` lines).
pub(crate) fn describe() {
    metrics::describe_counter!(
        REQUESTS_METRIC,
        "Requests answered, by endpoint and reply code (OK for a success)"
    );
    metrics::describe_histogram!(
        DURATION_METRIC,
        metrics::Unit::Seconds,
        "Time from taking a request off the subscription to its reply being ready (requests that ran)"
    );
    metrics::describe_gauge!(IN_FLIGHT_METRIC, "Requests being handled now");
    metrics::describe_counter!(
        SHED_METRIC,
        "Requests answered without running their handler (overloaded or past their deadline)"
    );
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use async_nats::HeaderMap;
    use opentelemetry::global;
    use opentelemetry::propagation::{Extractor, Injector};
    use opentelemetry::trace::TraceContextExt;
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    struct Headers<'a>(&'a HeaderMap);

    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(|value| value.as_str())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(name, _)| name.as_ref()).collect()
        }
    }

    struct HeadersMut<'a>(&'a mut HeaderMap);

    impl Injector for HeadersMut<'_> {
        fn set(&mut self, key: &str, value: String) {
            self.0.insert(key, value.as_str());
        }
    }

    /// Makes the caller's context (read by the global propagator: set
    /// `opentelemetry_sdk::propagation::TraceContextPropagator`) the span's parent.
    pub(super) fn continue_trace(span: &Span, headers: &HeaderMap) {
        let parent = global::get_text_map_propagator(|p| p.extract(&Headers(headers)));
        if parent.span().span_context().is_valid() {
            // Fails only without an OpenTelemetry layer: then there is nothing to continue.
            let _ = span.set_parent(parent);
        }
    }

    /// Injects the current span's context; false when there is none to inject.
    pub(super) fn inject_current(headers: &mut HeaderMap) -> bool {
        let context = Span::current().context();
        if !context.span().span_context().is_valid() {
            return false;
        }
        global::get_text_map_propagator(|p| p.inject_context(&context, &mut HeadersMut(headers)));
        headers.get(super::TRACEPARENT_HEADER).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parses_the_w3c_example_and_round_trips() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(value).unwrap();
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.parent_id, 0x00f067aa0ba902b7);
        assert_eq!(parent.flags, 1);
        assert_eq!(parent.header_value(), value);
        // A later version with more fields is read by its prefix.
        let future = format!("cc-{}-what-ever", &value[3..]);
        assert_eq!(
            TraceParent::parse(&future).unwrap().trace_id,
            parent.trace_id
        );
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for value in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00+4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
        ] {
            assert_eq!(TraceParent::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn random_traceparents_are_valid_and_distinct() {
        let a = TraceParent::random();
        let b = TraceParent::random();
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(TraceParent::parse(&a.header_value()), Some(a));
    }
}
