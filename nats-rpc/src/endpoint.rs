//! The contract between the `#[nats_rpc]` attribute and the runtime: one trait that names an
//! endpoint's subject and types and calls its handler. The attribute implements it; everything
//! else is generic over it.

use std::future::Future;

use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RpcError;

/// An RPC endpoint: a subject, typed request/response/error, and the handler that serves it.
///
/// Implemented by `#[nats_rpc]` on a type named like the handler fn; you rarely write it by hand.
pub trait Endpoint: 'static {
    /// The NATS subject the endpoint serves, e.g. `rosey.db.kv.set`.
    const SUBJECT: &'static str;
    /// The endpoint's name in the NATS micro description (defaults to the fn's name).
    const NAME: &'static str;
    /// The shared service state the handler borrows.
    type State: Send + Sync + 'static;
    /// The request, validated against its JSON Schema before it is deserialized.
    type Request: RequestType;
    /// The `data` of a success reply.
    type Response: ResponseType;
    /// The domain error, mapped to an error reply.
    type Error: RpcError;

    /// Runs the handler.
    fn call<'a>(
        state: &'a Self::State,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Response, Self::Error>> + Send + 'a;
}

/// What a request type needs: deserializable, with a JSON Schema to validate against. (When a
/// bound is missing, rustc reports the missing `Deserialize` / `JsonSchema` itself, on the
/// handler's request type.)
pub trait RequestType: DeserializeOwned + JsonSchema + Send + 'static {}

impl<T: DeserializeOwned + JsonSchema + Send + 'static> RequestType for T {}

/// What a response type needs: serializable, with a JSON Schema to publish.
pub trait ResponseType: Serialize + JsonSchema + Send + 'static {}

impl<T: Serialize + JsonSchema + Send + 'static> ResponseType for T {}
