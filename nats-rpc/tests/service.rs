//! nats-rpc end to end, against a private nats-server child: every error class with its exact
//! code and message, the envelope shapes, panic isolation, concurrency, the overload reply, the
//! NATS micro protocol, drain, schema export and the typed client.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nats_rpc::{
    CallError, Client, EndpointSchemas, ErrorCode, Reply, Responder, RpcError, Service,
    ServiceBuilder, Subject, codes, nats_rpc,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use test_support::NatsServer;
use test_support::envelope::failure;

#[derive(Default)]
struct State {
    calls: AtomicUsize,
    started: AtomicUsize,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
struct Echo {
    #[schemars(length(min = 1, max = 10))]
    text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 5))]
    times: Option<u32>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
struct Nothing {}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
struct Sleep {
    millis: u64,
}

#[derive(Debug, thiserror::Error)]
enum TeaError {
    #[error("teapot refused {0}")]
    Teapot(String),
    #[error("kettle exploded: secret detail")]
    Kettle,
}

const TEAPOT: ErrorCode = ErrorCode::new("TEAPOT", 418, "the server is a teapot");

impl RpcError for TeaError {
    const CATALOGUE: &'static [ErrorCode] = &[TEAPOT, codes::INTERNAL_ERROR];

    fn code(&self) -> &str {
        match self {
            TeaError::Teapot(_) => TEAPOT.code,
            TeaError::Kettle => codes::INTERNAL_ERROR.code,
        }
    }

    fn message(&self) -> Cow<'_, str> {
        match self {
            TeaError::Teapot(what) => format!("I am a teapot, not a {what}").into(),
            TeaError::Kettle => nats_rpc::INTERNAL_MESSAGE.into(),
        }
    }
}

#[nats_rpc(subject = "test.echo")]
async fn echo(state: &State, request: Echo) -> Result<Echo, nats_rpc::Error> {
    state.calls.fetch_add(1, Ordering::SeqCst);
    Ok(request)
}

#[nats_rpc(subject = "test.tea", name = "brew")]
async fn tea(_state: &State, request: Echo) -> Result<Nothing, TeaError> {
    if request.text == "kettle" {
        Err(TeaError::Kettle)
    } else {
        Err(TeaError::Teapot(request.text))
    }
}

#[nats_rpc(subject = "test.panic")]
async fn boom(_state: &State, _request: Nothing) -> Result<Nothing, nats_rpc::Error> {
    panic!("secret panic detail");
}

#[nats_rpc(subject = "test.slow")]
async fn slow(state: &State, request: Sleep) -> Result<Sleep, nats_rpc::Error> {
    state.started.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(request.millis)).await;
    Ok(request)
}

#[derive(Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
struct Where {
    subject: String,
    wildcards: Vec<String>,
}

#[nats_rpc(subject = "test.room.*.where.>")]
async fn room(
    _state: &State,
    _request: Nothing,
    subject: Subject<'_>,
) -> Result<Where, nats_rpc::Error> {
    Ok(Where {
        subject: subject.as_str().to_owned(),
        wildcards: subject.wildcards().map(str::to_owned).collect(),
    })
}

#[nats_rpc(subject = "test.unit")]
async fn unit(_state: &State, _request: Nothing) -> Result<(), nats_rpc::Error> {
    Ok(())
}

fn builder() -> ServiceBuilder<State> {
    Service::builder("tester", "1.2.3")
        .description("test service")
        .endpoint::<echo>()
        .endpoint::<tea>()
        .endpoint::<boom>()
        .endpoint::<slow>()
        .endpoint::<unit>()
        .endpoint::<room>()
}

struct Fixture {
    _server: NatsServer,
    nats: async_nats::Client,
    state: Arc<State>,
    service: Option<Service>,
}

impl Fixture {
    async fn start() -> Fixture {
        Self::start_with(|builder| builder).await
    }

    async fn start_with(
        tweak: impl FnOnce(ServiceBuilder<State>) -> ServiceBuilder<State>,
    ) -> Fixture {
        let server = NatsServer::start();
        let nats = nats_rpc::connect_options()
            .connect(server.url())
            .await
            .expect("connect");
        let state = Arc::new(State::default());
        let service = tweak(builder())
            .serve(nats.clone(), state.clone())
            .await
            .expect("serve");
        Fixture {
            _server: server,
            nats,
            state,
            service: Some(service),
        }
    }

    async fn raw(&self, subject: &str, payload: &[u8]) -> async_nats::Message {
        tokio::time::timeout(
            Duration::from_secs(5),
            self.nats
                .request(subject.to_owned(), Bytes::copy_from_slice(payload)),
        )
        .await
        .expect("a reply within 5 s")
        .expect("request")
    }

    /// Sends a request in the background.
    fn spawn_request(
        &self,
        subject: &'static str,
        payload: impl Into<Bytes>,
    ) -> tokio::task::JoinHandle<Result<async_nats::Message, async_nats::RequestError>> {
        let nats = self.nats.clone();
        let payload = payload.into();
        tokio::spawn(async move { nats.request(subject, payload).await })
    }

    async fn json(&self, subject: &str, payload: &[u8]) -> Value {
        serde_json::from_slice(&self.raw(subject, payload).await.payload).expect("JSON reply")
    }
}

#[tokio::test]
async fn success_envelope_has_exactly_success_and_data() {
    let f = Fixture::start().await;
    let message = f.raw("test.echo", br#"{"text":"hi","times":2}"#).await;
    assert_eq!(
        std::str::from_utf8(&message.payload).unwrap(),
        r#"{"success":true,"data":{"text":"hi","times":2}}"#
    );
    assert!(
        message.headers.is_none(),
        "success replies carry no error headers"
    );
}

#[tokio::test]
async fn unit_response_is_null_data() {
    let f = Fixture::start().await;
    assert_eq!(
        f.json("test.unit", b"{}").await,
        json!({"success": true, "data": null})
    );
}

#[tokio::test]
async fn invalid_json_reports_parser_detail() {
    let f = Fixture::start().await;
    assert_eq!(
        f.json("test.echo", b"").await,
        failure(
            "INVALID_JSON",
            "Invalid JSON: EOF while parsing a value at line 1 column 0"
        )
    );
    assert_eq!(
        f.json("test.echo", b"{\"text\":").await,
        failure(
            "INVALID_JSON",
            "Invalid JSON: EOF while parsing a value at line 1 column 8"
        )
    );
    assert_eq!(
        f.json("test.echo", b"nope").await,
        failure(
            "INVALID_JSON",
            "Invalid JSON: expected ident at line 1 column 2"
        )
    );
}

#[tokio::test]
async fn invalid_utf8_is_invalid_json() {
    let f = Fixture::start().await;
    assert_eq!(
        f.json("test.echo", b"{\"text\":\"\xff\"}").await,
        failure(
            "INVALID_JSON",
            "Invalid JSON: body is not valid UTF-8 (invalid byte at offset 9)"
        )
    );
}

#[tokio::test]
async fn non_object_bodies_are_validation_errors() {
    let f = Fixture::start().await;
    for (body, kind) in [
        ("[]", "array"),
        ("5", "number"),
        ("\"s\"", "string"),
        ("null", "null"),
        ("true", "boolean"),
    ] {
        assert_eq!(
            f.json("test.echo", body.as_bytes()).await,
            failure(
                "VALIDATION_ERROR",
                &format!("Request body must be a JSON object, got {kind}")
            ),
            "body {body}"
        );
    }
}

#[tokio::test]
async fn missing_field_covers_absent_null_and_empty() {
    let f = Fixture::start().await;
    for body in [r#"{}"#, r#"{"text":null}"#, r#"{"text":""}"#] {
        assert_eq!(
            f.json("test.echo", body.as_bytes()).await,
            failure("MISSING_FIELD", "Required field 'text' is missing"),
            "body {body}"
        );
    }
}

#[tokio::test]
async fn schema_violations_name_field_and_rule() {
    let f = Fixture::start().await;
    let cases = [
        (r#"{"text":5}"#, "Field 'text' must be of type string"),
        (
            r#"{"text":"01234567890"}"#,
            "Field 'text' must be at most 10 characters long",
        ),
        (r#"{"text":"a","times":0}"#, "Field 'times' must be >= 1"),
        (r#"{"text":"a","times":6}"#, "Field 'times' must be <= 5"),
        (
            r#"{"text":"a","times":"2"}"#,
            "Field 'times' must be of type integer or null",
        ),
    ];
    for (body, message) in cases {
        assert_eq!(
            f.json("test.echo", body.as_bytes()).await,
            failure("VALIDATION_ERROR", message),
            "body {body}"
        );
    }
}

#[tokio::test]
async fn missing_field_takes_precedence_over_validation() {
    let f = Fixture::start().await;
    // `times` breaks its range, but the missing `text` is reported first.
    assert_eq!(
        f.json("test.echo", br#"{"times":0}"#).await,
        failure("MISSING_FIELD", "Required field 'text' is missing")
    );
}

#[tokio::test]
async fn unknown_members_are_ignored() {
    let f = Fixture::start().await;
    assert_eq!(
        f.json("test.echo", br#"{"text":"a","extra":[1,2]}"#).await,
        json!({"success": true, "data": {"text": "a"}})
    );
}

#[tokio::test]
async fn domain_errors_use_the_trait_code_message_and_headers() {
    let f = Fixture::start().await;
    let message = f.raw("test.tea", br#"{"text":"kettle"}"#).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&message.payload).unwrap(),
        failure("INTERNAL_ERROR", "Internal error"),
        "the Display text with the secret stays in the log"
    );
    let message = f.raw("test.tea", br#"{"text":"cup"}"#).await;
    assert_eq!(
        serde_json::from_slice::<Value>(&message.payload).unwrap(),
        failure("TEAPOT", "I am a teapot, not a cup")
    );
    let headers = message.headers.expect("error replies carry headers");
    assert_eq!(
        headers.get("Nats-Service-Error").map(|v| v.as_str()),
        Some("I am a teapot, not a cup")
    );
    // ADR-32: the code header is a number, the code's declared status; the string code goes
    // in the body and in a header of its own.
    assert_eq!(
        headers.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("418")
    );
    assert_eq!(
        headers.get("Rpc-Error-Code").map(|v| v.as_str()),
        Some("TEAPOT")
    );
}

#[tokio::test]
async fn panicking_handler_answers_internal_error_and_service_keeps_serving() {
    let f = Fixture::start().await;
    let reply = f.raw("test.panic", b"{}").await;
    let text = std::str::from_utf8(&reply.payload).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap(),
        failure("INTERNAL_ERROR", "Internal error")
    );
    assert!(
        !text.contains("secret"),
        "panic text never reaches the client"
    );
    assert_eq!(
        f.json("test.echo", br#"{"text":"after"}"#).await,
        json!({"success": true, "data": {"text": "after"}})
    );
}

#[tokio::test]
async fn slow_handler_does_not_block_others() {
    let f = Fixture::start().await;
    let slow = f.spawn_request("test.slow", Bytes::from_static(br#"{"millis":3000}"#));
    while f.state.started.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    assert_eq!(
        f.json("test.echo", br#"{"text":"quick"}"#).await,
        json!({"success": true, "data": {"text": "quick"}})
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "echo waited {:?} behind the slow handler",
        started.elapsed()
    );
    assert!(!slow.is_finished(), "the slow request is still running");
    slow.abort();
}

#[tokio::test]
async fn past_the_in_flight_bound_replies_overloaded_at_once() {
    let f = Fixture::start_with(|builder| builder.max_in_flight(2)).await;
    let mut pending = Vec::new();
    for _ in 0..2 {
        pending.push(f.spawn_request("test.slow", Bytes::from_static(br#"{"millis":2000}"#)));
    }
    while f.state.started.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let reply = f.raw("test.echo", br#"{"text":"more"}"#).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    let message = "Service overloaded: 2 requests already in flight, retry later";
    assert_eq!(
        serde_json::from_slice::<Value>(&reply.payload).unwrap(),
        failure("OVERLOADED", message)
    );
    let headers = reply.headers.expect("error replies carry headers");
    let header = |name| headers.get(name).map(|v| v.as_str());
    assert_eq!(
        (
            header("Nats-Service-Error"),
            header("Nats-Service-Error-Code"),
            header("Rpc-Error-Code")
        ),
        (Some(message), Some("503"), Some("OVERLOADED"))
    );
    for request in pending {
        let reply = request.await.unwrap().unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&reply.payload).unwrap(),
            json!({"success": true, "data": {"millis": 2000}})
        );
    }
    // Capacity is back.
    assert_eq!(
        f.json("test.echo", br#"{"text":"again"}"#).await,
        json!({"success": true, "data": {"text": "again"}})
    );
}

#[tokio::test]
async fn ping_info_and_stats_answer_on_all_three_subjects() {
    let f = Fixture::start().await;
    let id = f.service.as_ref().unwrap().id().to_owned();
    for subject in [
        "$SRV.PING",
        "$SRV.PING.tester",
        &format!("$SRV.PING.tester.{id}"),
    ] {
        assert_eq!(
            f.json(subject, b"").await,
            json!({
                "type": "io.nats.micro.v1.ping_response",
                "name": "tester",
                "id": id,
                "version": "1.2.3",
                "metadata": {"asyncapi_subject": "$SRV.ASYNCAPI.tester"},
            }),
            "{subject}"
        );
    }
    let info = f.json(&format!("$SRV.INFO.tester.{id}"), b"").await;
    assert_eq!(info["type"], "io.nats.micro.v1.info_response");
    assert_eq!(info["description"], "test service");
    let brew = &info["endpoints"][1];
    assert_eq!(
        (&brew["name"], &brew["subject"], &brew["queue_group"]),
        (&json!("brew"), &json!("test.tea"), &json!("q"))
    );
    let metadata = brew["metadata"].as_object().unwrap();
    assert_eq!(
        metadata.keys().collect::<Vec<_>>(),
        [
            "error_schema",
            "errors",
            "request_schema",
            "response_schema"
        ]
    );
    assert_eq!(
        metadata["errors"],
        "INVALID_JSON,VALIDATION_ERROR,MISSING_FIELD,INTERNAL_ERROR,OVERLOADED,TIMEOUT,TEAPOT"
    );
    let names: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "brew", "boom", "slow", "unit", "room"]);
}

#[tokio::test]
async fn stats_count_requests_and_error_envelopes() {
    let f = Fixture::start().await;
    f.json("test.echo", br#"{"text":"ok"}"#).await;
    f.json("test.echo", b"[]").await;
    f.json("test.echo", br#"{"text":""}"#).await;
    f.json("test.tea", br#"{"text":"cup"}"#).await;
    let stats = f.json("$SRV.STATS.tester", b"").await;
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response");
    assert!(stats["started"].as_str().unwrap().ends_with('Z'));
    let echo = &stats["endpoints"][0];
    assert_eq!(echo["name"], "echo");
    assert_eq!(echo["num_requests"], 3);
    assert_eq!(echo["num_errors"], 2);
    assert_eq!(
        echo["last_error"],
        "MISSING_FIELD: Required field 'text' is missing"
    );
    assert!(echo["processing_time"].as_u64().unwrap() > 0);
    let tea = &stats["endpoints"][1];
    assert_eq!(
        (tea["num_requests"].as_u64(), tea["num_errors"].as_u64()),
        (Some(1), Some(1))
    );
    // The handle reports the same counters.
    let local = f.service.as_ref().unwrap().stats();
    assert_eq!((local[0].1.num_requests, local[0].1.num_errors), (3, 2));
    assert_eq!(local[0].1.latency.count, 3);
}

/// `$SRV.STATS` endpoint `data.latency`: p50/p90/p99/max processing time (ns) over the last
/// minute: nine fast requests and one slow one put p50 near the fast ones and p99/max at the
/// slow one.
#[tokio::test]
async fn stats_report_latency_percentiles() {
    let f = Fixture::start().await;
    for millis in [20, 20, 20, 20, 20, 20, 20, 20, 20, 300] {
        let body = format!(r#"{{"millis":{millis}}}"#);
        f.json("test.slow", body.as_bytes()).await;
    }
    let stats = f.json("$SRV.STATS.tester", b"").await;
    let slow = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "slow")
        .unwrap();
    let latency = &slow["data"]["latency"];
    assert_eq!(latency["window_seconds"], 60);
    assert_eq!(latency["count"], 10);
    let ms = |key: &str| latency[key].as_u64().unwrap() as f64 / 1e6;
    assert!((19.0..100.0).contains(&ms("p50")), "{latency}");
    assert!((19.0..100.0).contains(&ms("p90")), "{latency}");
    assert!((297.0..600.0).contains(&ms("p99")), "{latency}");
    assert!((297.0..600.0).contains(&ms("max")), "{latency}");
    // The echo endpoint had no traffic: an empty window.
    assert_eq!(stats["endpoints"][0]["data"]["latency"]["count"], 0);
}

#[tokio::test]
async fn instances_in_the_queue_group_share_the_load() {
    let f = Fixture::start().await;
    let other_state = Arc::new(State::default());
    let other = builder()
        .serve(f.nats.clone(), other_state.clone())
        .await
        .expect("second instance");
    for _ in 0..40 {
        f.json("test.echo", br#"{"text":"x"}"#).await;
    }
    let (a, b) = (
        f.state.calls.load(Ordering::SeqCst),
        other_state.calls.load(Ordering::SeqCst),
    );
    assert_eq!(a + b, 40, "each request served exactly once");
    assert!(a > 0 && b > 0, "both instances served: {a} / {b}");
    other.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_answers_every_request_in_flight_then_stops() {
    let mut f = Fixture::start().await;
    let mut pending = Vec::new();
    for millis in [300_u64, 400, 500, 600, 700] {
        pending.push(f.spawn_request("test.slow", format!(r#"{{"millis":{millis}}}"#)));
    }
    while f.state.started.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f.service
        .take()
        .unwrap()
        .shutdown()
        .await
        .expect("drained in time");
    for request in pending {
        let reply = request.await.unwrap().expect("a reply, not a timeout");
        assert_eq!(
            serde_json::from_slice::<Value>(&reply.payload).unwrap()["success"],
            true
        );
    }
    let after = f
        .nats
        .request("test.echo", Bytes::from_static(br#"{"text":"late"}"#))
        .await;
    assert_eq!(
        after.expect_err("nobody serves after shutdown").kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );
}

/// A request that outlives the drain timeout: shutdown returns `DrainTimeout` when the timeout
/// passes, not when the request ends, and the service takes no request after it.
#[tokio::test]
async fn shutdown_past_the_drain_timeout_says_so_and_stops_serving() {
    let mut f =
        Fixture::start_with(|builder| builder.drain_timeout(Duration::from_millis(200))).await;
    let _stuck = f.spawn_request("test.slow", r#"{"millis":3000}"#);
    while f.state.started.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    let outcome = f.service.take().unwrap().shutdown().await;
    assert_eq!(
        outcome,
        Err(nats_rpc::DrainTimeout(Duration::from_millis(200)))
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "waited for the request: {:?}",
        started.elapsed()
    );
    let after = f
        .nats
        .request("test.echo", Bytes::from_static(br#"{"text":"late"}"#))
        .await;
    assert_eq!(
        after.expect_err("nobody serves after shutdown").kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );
}

#[tokio::test]
async fn handlers_on_wildcard_subjects_see_what_the_wildcards_matched() {
    let f = Fixture::start().await;
    assert_eq!(
        f.json("test.room.kitchen.where.shelf.top", b"{}").await,
        json!({"success": true, "data": {
            "subject": "test.room.kitchen.where.shelf.top",
            "wildcards": ["kitchen", "shelf.top"],
        }})
    );
    let typed = Client::new(f.nats.clone())
        .call_on::<room>("test.room.hall.where.door", &Nothing {})
        .await
        .unwrap();
    assert_eq!(typed.wildcards, ["hall", "door"]);
    // `call` would send to the pattern itself (the handler saw a `*` token): refused before
    // sending, naming `call_on`.
    let err = Client::new(f.nats.clone())
        .call::<room>(&Nothing {})
        .await
        .unwrap_err();
    assert!(matches!(&err, CallError::Pattern(subject) if subject == "test.room.*.where.>"));
    assert_eq!(
        err.to_string(),
        "`test.room.*.where.>` is a pattern, not a subject to send to: give `Client::call_on` a \
         subject it matches"
    );
    // Validation runs before the handler, on wildcard endpoints as on any other.
    assert_eq!(
        f.json("test.room.hall.where.door", b"[]").await,
        failure(
            "VALIDATION_ERROR",
            "Request body must be a JSON object, got array"
        )
    );
}

#[tokio::test]
async fn responder_answers_bytes_without_nats() {
    let responder = Responder::<echo>::new(State::default()).unwrap();
    let reply = responder.respond("test.echo", br#"{"text":"hi"}"#).await;
    assert_eq!(
        reply,
        Reply::Success(Bytes::from_static(
            br#"{"success":true,"data":{"text":"hi"}}"#
        ))
    );
    assert!(reply.headers().is_none());

    let reply = responder.respond("test.echo", b"{").await;
    let (code, _) = reply.error().unwrap();
    assert_eq!(code, "INVALID_JSON");
    let headers = reply.headers().unwrap();
    assert_eq!(
        headers.get(nats_rpc::ERROR_CODE_HEADER).unwrap().as_str(),
        "400"
    );
    assert_eq!(
        headers.get(nats_rpc::RPC_CODE_HEADER).unwrap().as_str(),
        "INVALID_JSON"
    );
    let envelope: Value = serde_json::from_slice(&reply.payload()).unwrap();
    assert_eq!(envelope["error"]["code"], "INVALID_JSON");

    let panicking = Responder::<boom>::new(State::default()).unwrap();
    assert_eq!(
        panicking.respond("test.panic", b"{}").await.error(),
        Some(("INTERNAL_ERROR", "Internal error"))
    );
}

#[tokio::test]
async fn typed_client_round_trip() {
    let f = Fixture::start().await;
    let client = Client::new(f.nats.clone());
    let request = Echo {
        text: "typed".into(),
        times: Some(3),
    };
    assert_eq!(client.call::<echo>(&request).await.unwrap(), request);
    match client
        .call::<tea>(&Echo {
            text: "mug".into(),
            times: None,
        })
        .await
    {
        Err(CallError::Remote(err)) => {
            assert_eq!(err.code, "TEAPOT");
            assert_eq!(err.message, "I am a teapot, not a mug");
        }
        other => panic!("expected a remote TEAPOT error, got {other:?}"),
    }
    let invalid = client
        .call::<echo>(&Echo {
            text: String::new(),
            times: None,
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Some("MISSING_FIELD"));
}

#[tokio::test]
async fn typed_client_reports_no_responders() {
    let f = Fixture::start().await;
    let mut other = NatsServer::start();
    let lonely = async_nats::connect(other.url()).await.unwrap();
    let err = Client::new(lonely)
        .call::<echo>(&Echo {
            text: "x".into(),
            times: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::NoResponders), "{err:?}");
    other.stop();
    drop(f);
}

#[tokio::test]
async fn exported_schemas_are_the_validated_ones() {
    let schemas = EndpointSchemas::of::<tea>();
    assert_eq!(schemas.subject, "test.tea");
    assert_eq!(schemas.name, "brew");
    assert_eq!(schemas.request["$schema"], nats_rpc::DIALECT);
    assert_eq!(schemas.request["properties"]["text"]["maxLength"], 10);
    assert_eq!(schemas.request["required"], json!(["text"]));
    assert_eq!(
        schemas.error["properties"]["error"]["properties"]["code"]["enum"],
        json!([
            "INVALID_JSON",
            "VALIDATION_ERROR",
            "MISSING_FIELD",
            "INTERNAL_ERROR",
            "OVERLOADED",
            "TIMEOUT",
            "TEAPOT"
        ])
    );
    // The published success and error schemas accept real replies and reject others.
    let response = jsonschema::validator_for(&schemas.response).unwrap();
    assert!(response.is_valid(&json!({"success": true, "data": {}})));
    assert!(!response.is_valid(&json!({"success": true, "data": {}, "extra": 1})));
    let error = jsonschema::validator_for(&schemas.error).unwrap();
    assert!(error.is_valid(&failure("TEAPOT", "x")));
    assert!(!error.is_valid(&failure("NOT_A_CODE", "x")));
}

#[tokio::test]
async fn invalid_configurations_are_refused_with_reasons() {
    let server = NatsServer::start();
    let nats = async_nats::connect(server.url()).await.unwrap();
    let refuse = |builder: ServiceBuilder<State>| {
        let nats = nats.clone();
        async move {
            builder
                .serve(nats, State::default())
                .await
                .expect_err("refused")
                .to_string()
        }
    };
    assert_eq!(
        refuse(Service::builder("bad name", "1.0.0").endpoint::<echo>()).await,
        "invalid service configuration: service name `bad name` must be non-empty and use only `A-Z a-z 0-9 _ -`"
    );
    assert_eq!(
        refuse(Service::builder("ok", "1.0").endpoint::<echo>()).await,
        "invalid service configuration: service version `1.0` must be semver, e.g. `1.2.3`"
    );
    assert_eq!(
        refuse(
            Service::builder("ok", "1.0.0")
                .endpoint::<echo>()
                .endpoint::<echo>()
        )
        .await,
        "invalid service configuration: endpoints `echo` and `echo` both serve `test.echo`"
    );
    assert_eq!(
        refuse(Service::builder("ok", "1.0.0")).await,
        "invalid service configuration: a service needs at least one endpoint"
    );
    assert_eq!(
        refuse(
            Service::builder("ok", "1.0.0")
                .endpoint::<echo>()
                .max_in_flight(0)
        )
        .await,
        format!(
            "invalid service configuration: max_in_flight is 0; it must be from 1 to {}",
            tokio::sync::Semaphore::MAX_PERMITS
        )
    );
    let huge = tokio::sync::Semaphore::MAX_PERMITS + 1;
    assert_eq!(
        refuse(
            Service::builder("ok", "1.0.0")
                .endpoint::<echo>()
                .max_in_flight(huge)
        )
        .await,
        format!(
            "invalid service configuration: max_in_flight is {huge}; it must be from 1 to {}",
            tokio::sync::Semaphore::MAX_PERMITS
        )
    );
}

/// `discover` finds every instance of one service (and only that service), with its metadata
/// and endpoints, as `$SRV.INFO` describes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_lists_every_instance_of_a_service_with_its_metadata() {
    let kv = Fixture::start_with(|builder| builder.metadata("store", "a")).await;
    let second = builder()
        .metadata("store", "b")
        .queue_group("other")
        .serve(kv.nats.clone(), kv.state.clone())
        .await
        .unwrap();
    let stranger = Service::builder("stranger", "0.0.1")
        .endpoint::<echo>()
        .queue_group("s")
        .serve(kv.nats.clone(), kv.state.clone())
        .await
        .unwrap();
    let mut found = nats_rpc::discover(&kv.nats, "tester", Duration::from_millis(500))
        .await
        .unwrap();
    found.sort_by(|a, b| a.metadata["store"].cmp(&b.metadata["store"]));
    assert_eq!(found.len(), 2, "{found:?}");
    let first = kv.service.as_ref().unwrap();
    assert_eq!(found[0].id, first.id());
    assert_eq!(found[1].id, second.id());
    assert_eq!(
        (found[0].name.as_str(), found[0].version.as_str()),
        ("tester", "1.2.3")
    );
    let echo_endpoint = |instance: &nats_rpc::Instance| {
        instance
            .endpoints
            .iter()
            .find(|endpoint| endpoint.subject == "test.echo")
            .map(|endpoint| (endpoint.name.clone(), endpoint.queue_group.clone()))
    };
    assert_eq!(echo_endpoint(&found[0]), Some(("echo".into(), "q".into())));
    assert_eq!(
        echo_endpoint(&found[1]),
        Some(("echo".into(), "other".into()))
    );
    assert!(
        nats_rpc::discover(&kv.nats, "nobody", Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    let _ = second.shutdown().await;
    let _ = stranger.shutdown().await;
}

/// Every `$SRV.PING|INFO|STATS` reply, on each of its three subjects, against the micro v1
/// rules of ADR-32 (`tests/micro_v1/*.json`: required fields, the name pattern, semver, string
/// metadata, integer counters, an RFC 3339 start) — natscli silently drops replies that break
/// them. Also after traffic, so STATS has errors and a last error to report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_replies_conform_to_the_micro_v1_schemas() {
    let f = Fixture::start_with(|builder| builder.metadata("k", "v")).await;
    f.raw("test.echo", br#"{"text":"hi"}"#).await;
    f.raw("test.echo", b"{").await;
    let service = f.service.as_ref().unwrap();
    for verb in ["PING", "INFO", "STATS"] {
        let schema: Value = serde_json::from_str(
            &std::fs::read_to_string(format!(
                "{}/tests/micro_v1/{}_response.json",
                env!("CARGO_MANIFEST_DIR"),
                verb.to_lowercase()
            ))
            .unwrap(),
        )
        .unwrap();
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap();
        for subject in [
            format!("$SRV.{verb}"),
            format!("$SRV.{verb}.tester"),
            format!("$SRV.{verb}.tester.{}", service.id()),
        ] {
            let reply: Value = f.json(&subject, b"").await;
            let errors: Vec<String> = validator
                .iter_errors(&reply)
                .map(|err| format!("{} at {}", err, err.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{subject}: {errors:?}\n{reply:#}");
        }
    }
    // The schemas are not vacuous: they turn away what natscli turns away.
    let info_schema: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/micro_v1/info_response.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let info = jsonschema::validator_for(&info_schema).unwrap();
    let mut reply = f.json("$SRV.INFO.tester", b"").await;
    assert!(info.is_valid(&reply));
    reply["endpoints"][0]["name"] = json!("rosey.db.kv.get");
    assert!(!info.is_valid(&reply), "a dotted endpoint name is refused");
    reply["endpoints"][0]["name"] = json!("echo");
    reply["metadata"] = json!({"n": 1});
    assert!(!info.is_valid(&reply), "metadata values must be strings");
    let stats = f.json("$SRV.STATS.tester", b"").await;
    let echo = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|endpoint| endpoint["name"] == "echo")
        .unwrap();
    assert_eq!(
        (echo["num_requests"].as_u64(), echo["num_errors"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        echo["last_error"],
        "INVALID_JSON: Invalid JSON: EOF while parsing an object at line 1 column 1"
    );
}

#[tokio::test]
async fn an_endpoint_name_micro_tools_would_drop_is_refused_at_serve() {
    let server = NatsServer::start();
    let nats = async_nats::connect(server.url()).await.unwrap();
    let err = Service::builder("tester", "1.2.3")
        .endpoint::<Plain<DOTTED>>()
        .serve(nats, State::default())
        .await
        .expect_err("refused");
    assert!(
        err.to_string()
            .contains("endpoint name `test.dotted` must be non-empty and use only"),
        "{err}"
    );
}

/// A hand-written `Endpoint` answering its request, with the subject and name `PLAIN[N]`, on
/// any request type: what `#[nats_rpc]` would refuse to generate.
struct Plain<const N: usize, R = Nothing>(std::marker::PhantomData<R>);

/// `(subject, name)`: a plain endpoint; a subject the server refuses; a name micro tools drop.
const PLAIN: [(&str, &str); 3] = [
    ("test.plain", "plain"),
    ("test.has space", "plain"),
    ("test.dotted", "test.dotted"),
];
const DOTTED: usize = 2;

impl<const N: usize, R> nats_rpc::Endpoint for Plain<N, R>
where
    R: JsonSchema + Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    const SUBJECT: &'static str = PLAIN[N].0;
    const NAME: &'static str = PLAIN[N].1;
    type State = State;
    type Request = R;
    type Response = R;
    type Error = nats_rpc::Error;

    fn call<'a>(
        _state: &'a State,
        request: R,
        _context: nats_rpc::Context<'a>,
    ) -> impl std::future::Future<Output = Result<R, nats_rpc::Error>> + Send + 'a {
        std::future::ready(Ok(request))
    }
}

/// A request type whose `JsonSchema` is broken (`"type": 5`).
#[derive(Debug, Serialize, Deserialize)]
struct BrokenSchema {}

impl JsonSchema for BrokenSchema {
    fn schema_name() -> Cow<'static, str> {
        "BrokenSchema".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": 5})
    }
}

#[tokio::test]
async fn a_request_schema_that_does_not_compile_is_refused_at_serve_with_its_cause() {
    let server = NatsServer::start();
    let nats = async_nats::connect(server.url()).await.unwrap();
    let err = Service::builder("tester", "1.2.3")
        .endpoint::<Plain<0, BrokenSchema>>()
        .serve(nats, State::default())
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            nats_rpc::ServeError::Schema {
                endpoint: "plain",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the request schema of endpoint `plain` does not compile"
    );
    let cause = std::error::Error::source(&err).expect("the compiler's message is the source");
    assert!(
        cause.to_string().starts_with("invalid request schema: "),
        "{cause}"
    );
}

/// `serve` failing after some endpoints subscribed (here the second subject is one the server
/// refuses) leaves nothing behind: the first endpoint answers no more, and the state is the
/// caller's alone again, so it can close what the state owns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_serve_stops_what_it_started_and_frees_the_state() {
    let server = NatsServer::start();
    let nats = async_nats::connect(server.url()).await.unwrap();
    let state = Arc::new(State::default());
    let err = Service::builder("tester", "1.2.3")
        .endpoint::<Plain<0>>()
        .endpoint::<Plain<1>>()
        .serve(nats.clone(), state.clone())
        .await
        .expect_err("the second subject is refused");
    assert!(matches!(err, nats_rpc::ServeError::Subscribe(_)), "{err:?}");
    assert_eq!(
        Arc::strong_count(&state),
        1,
        "a reader still holds the state"
    );
    nats.flush().await.unwrap();
    let asked = tokio::time::timeout(
        Duration::from_secs(5),
        nats.request("test.plain", Bytes::from_static(b"{}")),
    )
    .await
    .expect("answered or refused in time");
    assert!(
        matches!(&asked, Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders),
        "the first endpoint still answers: {asked:?}"
    );
}

/// A client with only a NATS connection gets every endpoint's three schemas from `$SRV.INFO`
/// (endpoint metadata, each a JSON text) and the AsyncAPI document from the subject the
/// service metadata names: exactly what `EndpointSchemas` and `asyncapi::document` publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_and_the_asyncapi_document_come_from_the_running_service() {
    let f = Fixture::start().await;
    let info = f.json("$SRV.INFO.tester", b"").await;
    let subject = info["metadata"][nats_rpc::ASYNCAPI_KEY].as_str().unwrap();
    assert_eq!(subject, "$SRV.ASYNCAPI.tester");
    let echo = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|endpoint| endpoint["name"] == "echo")
        .unwrap();
    let published = nats_rpc::EndpointSchemas::of::<echo>();
    for (key, schema) in nats_rpc::SCHEMA_KEYS.into_iter().zip([
        &published.request,
        &published.response,
        &published.error,
    ]) {
        let text = echo["metadata"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{key}"));
        assert_eq!(
            &serde_json::from_str::<Value>(text).unwrap(),
            schema,
            "{key}"
        );
    }
    assert_eq!(
        echo["metadata"]["errors"],
        "INVALID_JSON,VALIDATION_ERROR,MISSING_FIELD,INTERNAL_ERROR,OVERLOADED,TIMEOUT"
    );
    // A reply validates against the schema fetched in-band.
    let reply = f.json("test.echo", br#"{"text":"hi"}"#).await;
    let response: Value =
        serde_json::from_str(echo["metadata"]["response_schema"].as_str().unwrap()).unwrap();
    assert!(
        jsonschema::validator_for(&response)
            .unwrap()
            .is_valid(&reply),
        "{reply}"
    );

    let document = f.json(subject, b"").await;
    let service = f.service.as_ref().unwrap();
    let by_id = f.json(&format!("{subject}.{}", service.id()), b"").await;
    assert_eq!(document, by_id);
    assert_eq!(document["asyncapi"], "3.0.0");
    assert_eq!(document["info"]["title"], "tester");
    let mut operations: Vec<&String> = document["operations"].as_object().unwrap().keys().collect();
    operations.sort();
    assert_eq!(operations, ["boom", "brew", "echo", "room", "slow", "unit"]);
    assert_eq!(
        document["channels"]["room"]["address"],
        "test.room.{wildcard0}.where.{rest}"
    );
    assert_eq!(
        document["operations"]["echo"]["bindings"]["nats"]["queue"],
        "q"
    );
}

/// What a handler taking the request's context sees.
#[derive(Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
struct Seen {
    subject: String,
    auth: Option<String>,
    budget_ms: Option<u64>,
    remaining_ms: Option<u64>,
}

#[nats_rpc(subject = "test.context")]
async fn context(
    state: &State,
    _request: Nothing,
    context: nats_rpc::Context<'_>,
) -> Result<Seen, nats_rpc::Error> {
    state.calls.fetch_add(1, Ordering::SeqCst);
    Ok(Seen {
        subject: context.subject().as_str().to_owned(),
        auth: context.header("authorization").map(str::to_owned),
        budget_ms: context.deadline().map(|d| d.budget().as_millis() as u64),
        remaining_ms: context.deadline().map(|d| d.remaining().as_millis() as u64),
    })
}

/// Sends `body` to `subject` with `headers`, returns the reply body.
async fn with_headers(nats: &async_nats::Client, subject: &str, headers: &[(&str, &str)]) -> Value {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, *value);
    }
    let reply = nats
        .request_with_headers(subject.to_owned(), map, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_see_the_subject_headers_and_deadline_of_their_request() {
    let f = Fixture::start_with(|builder| builder.endpoint::<context>()).await;
    let seen = with_headers(
        &f.nats,
        "test.context",
        &[("Authorization", "Bearer t"), ("rpc-timeout-ms", "1500")],
    )
    .await;
    assert_eq!(seen["data"]["subject"], "test.context");
    assert_eq!(
        seen["data"]["auth"], "Bearer t",
        "headers match case-insensitively"
    );
    assert_eq!(seen["data"]["budget_ms"], 1500);
    let remaining = seen["data"]["remaining_ms"].as_u64().unwrap();
    assert!((1000..=1500).contains(&remaining), "{remaining}");
    // No header, no default: no deadline. A bad header is ignored.
    for headers in [
        vec![],
        vec![("Rpc-Timeout-Ms", "soon")],
        vec![("Rpc-Timeout-Ms", "0")],
    ] {
        let seen = with_headers(&f.nats, "test.context", &headers).await;
        assert_eq!(seen["data"]["budget_ms"], Value::Null, "{headers:?}");
    }
    // The typed client sends its own timeout.
    let client = nats_rpc::Client::new(f.nats.clone()).with_timeout(Duration::from_millis(2500));
    let seen = client.call::<context>(&Nothing {}).await.unwrap();
    assert_eq!(seen.budget_ms, Some(2500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_default_timeout_covers_requests_without_the_header() {
    let f = Fixture::start_with(|builder| {
        builder
            .endpoint::<context>()
            .request_timeout(Some(Duration::from_millis(800)))
    })
    .await;
    let seen = with_headers(&f.nats, "test.context", &[]).await;
    assert_eq!(seen["data"]["budget_ms"], 800);
    let seen = with_headers(&f.nats, "test.context", &[("Rpc-Timeout-Ms", "200")]).await;
    assert_eq!(seen["data"]["budget_ms"], 200, "the header wins");
}

/// A request whose deadline passed before its handler starts is not run: TIMEOUT, naming the
/// deadline, with status 504, counted in STATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_is_not_run() {
    let state = Arc::new(State::default());
    let responder = nats_rpc::Responder::<echo>::new(state.clone()).unwrap();
    let past = nats_rpc::Deadline::new(
        Instant::now() - Duration::from_millis(300),
        Duration::from_millis(250),
    );
    let reply = responder
        .respond_with("test.echo", br#"{"text":"hi"}"#, None, Some(past))
        .await;
    assert_eq!(
        reply.error(),
        Some((
            "TIMEOUT",
            "Request deadline of 250 ms passed before it was handled; nothing was done"
        ))
    );
    assert_eq!(
        reply
            .headers()
            .unwrap()
            .get("Nats-Service-Error-Code")
            .unwrap()
            .as_str(),
        "504"
    );
    assert_eq!(
        state.calls.load(Ordering::SeqCst),
        0,
        "the handler never ran"
    );
    let ahead = nats_rpc::Deadline::after(Duration::from_secs(5));
    let reply = responder
        .respond_with("test.echo", br#"{"text":"hi"}"#, None, Some(ahead))
        .await;
    assert_eq!(reply.error(), None);
    assert_eq!(state.calls.load(Ordering::SeqCst), 1);
}
