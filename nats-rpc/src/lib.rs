//! Declarative RPC over NATS: a typed async fn plus one attribute is the whole endpoint.
//!
//! ```no_run
//! use nats_rpc::{Error, Service, nats_rpc};
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! struct Greeter { greeting: String }
//!
//! #[derive(Deserialize, Serialize, JsonSchema)]
//! struct Hello {
//!     #[schemars(length(min = 1, max = 50))]
//!     name: String,
//! }
//!
//! #[derive(Deserialize, Serialize, JsonSchema)]
//! struct Greeting { text: String }
//!
//! #[nats_rpc(subject = "demo.hello")]
//! async fn hello(state: &Greeter, request: Hello) -> Result<Greeting, Error> {
//!     Ok(Greeting { text: format!("{}, {}!", state.greeting, request.name) })
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let nats = nats_rpc::connect_options().connect("nats://127.0.0.1:4222").await?;
//!     let service = Service::builder("greeter", "1.0.0")
//!         .endpoint::<hello>()
//!         .serve(nats.clone(), Greeter { greeting: "Hello".into() })
//!         .await?;
//!
//!     // Any NATS client can call it; this one is typed.
//!     let reply = nats_rpc::Client::new(nats).call::<hello>(&Hello { name: "Ada".into() }).await?;
//!     assert_eq!(reply.text, "Hello, Ada!");
//!
//!     service.run_until(async { tokio::signal::ctrl_c().await.unwrap() }).await?;
//!     Ok(())
//! }
//! ```
//!
//! `$ nats req demo.hello '{"name":"Ada"}'` answers `{"success":true,"data":{"text":"Hello, Ada!"}}`;
//! `'{}'` answers `{"success":false,"error":{"code":"MISSING_FIELD","message":"Required field 'name' is missing"}}`.
//!
//! # What every request goes through
//!
//! 1. UTF-8 and JSON parsing → `INVALID_JSON` (`Invalid JSON: <parser detail>`).
//! 2. The body must be an object → `VALIDATION_ERROR`.
//! 3. Required fields absent, `null` or `""` (where the field's schema rejects those) →
//!    `MISSING_FIELD` (`Required field '<name>' is missing`), in declaration order.
//! 4. The request type's JSON Schema (derived by schemars, compiled once at registration) →
//!    `VALIDATION_ERROR` naming the field and the rule.
//! 5. Deserialization into the request type, then the handler. Its `Err` becomes an error reply
//!    through [`RpcError`]; a panic becomes `INTERNAL_ERROR` (the panic text is logged, never
//!    sent) and the service keeps serving.
//!
//! Replies are one envelope, `{"success":true,"data":…}` or
//! `{"success":false,"error":{"code":…,"message":…}}`; error replies also carry the NATS micro
//! headers `Nats-Service-Error` (message) and `Nats-Service-Error-Code` (the code's status, a
//! number: 400, 413, 500, 503, …, see [`ErrorCode::status`]), and `Rpc-Error-Code` (the code). Requests run
//! concurrently up to [`ServiceBuilder::max_in_flight`]; past it the reply is `OVERLOADED`
//! straight away, also when requests are cheap and the backlog builds up in front of them: a
//! backlog is shed, not left to overflow the subscription buffer. Every service answers `$SRV.PING|INFO|STATS` (NATS micro, ADR-32) and joins
//! queue group `q` so instances share the load. [`Service::shutdown`] drains. The schemas a
//! client needs (request, success reply, error reply) come from [`EndpointSchemas::of`].

pub mod asyncapi;
mod client;
pub mod compat;
mod document;
mod endpoint;
pub mod envelope;
mod error;
mod micro;
mod responder;
mod schema;
mod service;
mod stats;
pub mod telemetry;
mod validate;

pub use client::{CallError, Client, DEFAULT_TIMEOUT};
pub use endpoint::{
    Context, Deadline, Endpoint, MAX_TIMEOUT, RequestType, ResponseType, Subject, TIMEOUT_HEADER,
};
pub use envelope::RemoteError;
pub use error::{Error, ErrorCode, INTERNAL_MESSAGE, RpcError, catalogue, codes, status_of};
pub use micro::{
    ASYNCAPI_KEY, ERROR_CODE_HEADER, ERROR_HEADER, ERRORS_KEY, EndpointInfo, Instance,
    InstanceEndpoint, RPC_CODE_HEADER, SCHEMA_KEYS, ServiceInfo, asyncapi_subject, discover,
};
pub use responder::{Reply, Responder};
pub use schema::{DIALECT, EndpointSchemas, schema_of};
pub use service::{
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_MAX_IN_FLIGHT, DEFAULT_QUEUE_GROUP, DrainTimeout,
    SUBSCRIPTION_CAPACITY, ServeError, Service, ServiceBuilder, connect_options,
};
pub use stats::{LATENCY_WINDOW, Latency, StatsSnapshot};
pub use validate::SchemaError;

/// Turns an `async fn` into a NATS endpoint.
///
/// ```ignore
/// #[nats_rpc(subject = "rosey.db.kv.get")]
/// pub async fn get(store: &Store, request: GetRequest) -> Result<GetReply, KvError> { /* … */ }
/// ```
///
/// # Arguments
///
/// | argument | required | meaning |
/// |---|---|---|
/// | `subject = "a.b.c"` | yes | the NATS subject served; dot-separated tokens, no whitespace, `*` / `>` only as whole tokens and `>` only last |
/// | `name = "get"` | no | the endpoint's name in `$SRV.INFO` / `STATS` (`[A-Za-z0-9_-]+`); defaults to the fn's name |
///
/// # The handler
///
/// `async fn name(state: &State, request: Request) -> Result<Response, Error>` where `State:
/// Send + Sync + 'static` is the service state, `Request: Deserialize + JsonSchema`, `Response:
/// Serialize + JsonSchema`, and `Error:` [`RpcError`]. Each mistake is a compile error on your own
/// token saying what to write instead.
///
/// A handler may take a third parameter, `subject: nats_rpc::Subject<'_>`: the subject the
/// request arrived on. On a wildcard subject it says what the wildcards matched:
///
/// ```ignore
/// #[nats_rpc(subject = "rosey.db.kv.*.get")]
/// pub async fn scoped_get(store: &Store, request: ScopedGetRequest, subject: Subject<'_>)
///     -> Result<GetReply, ScopedError>
/// {
///     let plugin = subject.wildcard(0); // "chat" for `rosey.db.kv.chat.get`
///     // …
/// }
/// ```
///
/// Or it may take `context: nats_rpc::Context<'_>` instead: the subject, the request's headers
/// (auth, tracing; matched case-insensitively) and its [`Deadline`], fixed on arrival from its
/// `Rpc-Timeout-Ms` header ([`TIMEOUT_HEADER`]) or the service's
/// [`ServiceBuilder::request_timeout`]. A request whose deadline passed before its handler
/// starts is not run and gets `TIMEOUT`; a handler can stop early at the deadline
/// (`context.deadline().map(|d| d.remaining())`). [`Client`] sends its own timeout.
///
/// # Expansion
///
/// The fn stays exactly as written (call it directly in unit tests). Beside it comes a type of
/// the same name (types and fns live in different namespaces) implementing [`Endpoint`] by
/// calling the fn:
///
/// ```ignore
/// pub struct get {}
/// impl ::nats_rpc::Endpoint for get {
///     const SUBJECT: &'static str = "rosey.db.kv.get";
///     const NAME: &'static str = "get";
///     type State = Store;
///     type Request = GetRequest;
///     type Response = GetReply;
///     type Error = KvError;
///     fn call<'a>(state: &'a Store, request: GetRequest, context: Context<'a>)
///         -> impl Future<Output = Result<GetReply, KvError>> + Send + 'a
///     {
///         let _ = context; // passed on (or its subject) when the fn takes it
///         get(state, request)
///     }
/// }
/// ```
///
/// Nothing is registered globally: add it to a service with
/// `Service::builder(..).endpoint::<get>()`, call it with `Client::call::<get>(..)`, export its
/// schemas with `EndpointSchemas::of::<get>()`. The macro does no I/O and uses absolute paths
/// only, so it works under `#![no_implicit_prelude]`.
#[doc(inline)]
pub use nats_rpc_macros::nats_rpc;
