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

    /// Runs the handler. `subject` is the subject the request arrived on (handlers that take a
    /// third parameter receive it; it matters for endpoints on wildcard subjects).
    fn call<'a>(
        state: &'a Self::State,
        request: Self::Request,
        subject: Subject<'a>,
    ) -> impl Future<Output = Result<Self::Response, Self::Error>> + Send + 'a;
}

/// The subject a request arrived on, matched against the endpoint's subject pattern.
///
/// A handler receives it by taking a third parameter, `subject: nats_rpc::Subject<'_>`. It is
/// how an endpoint on a wildcard subject learns what the wildcards matched: for
/// `#[nats_rpc(subject = "rosey.db.kv.*.get")]` and a request on `rosey.db.kv.chat.get`,
/// `subject.wildcard(0)` is `Some("chat")`. Publish permissions on the NATS server decide who may
/// send on which subject, so a token taken from here is one the server vouched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    subject: &'a str,
    pattern: &'static str,
}

impl<'a> Subject<'a> {
    /// A request on `subject` for an endpoint serving `pattern` (the server only delivers
    /// subjects the pattern matches).
    pub fn new(subject: &'a str, pattern: &'static str) -> Self {
        Subject { subject, pattern }
    }

    /// The whole subject, e.g. `rosey.db.kv.chat.get`.
    pub fn as_str(&self) -> &'a str {
        self.subject
    }

    /// The endpoint's subject pattern, e.g. `rosey.db.kv.*.get`.
    pub fn pattern(&self) -> &'static str {
        self.pattern
    }

    /// What the pattern's wildcards matched, in order: one token for each `*`, and everything
    /// left (dots included) for a final `>`.
    pub fn wildcards(&self) -> impl Iterator<Item = &'a str> + 'a {
        let pattern = self.pattern;
        let mut rest = Some(self.subject);
        pattern.split('.').filter_map(move |wanted| {
            let current = rest?;
            if wanted == ">" {
                rest = None;
                return Some(current);
            }
            let (token, tail) = match current.split_once('.') {
                Some((token, tail)) => (token, Some(tail)),
                None => (current, None),
            };
            rest = tail;
            (wanted == "*").then_some(token)
        })
    }

    /// The `index`th wildcard match (see [`Subject::wildcards`]).
    pub fn wildcard(&self, index: usize) -> Option<&'a str> {
        self.wildcards().nth(index)
    }
}

impl std::fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.subject)
    }
}

/// What a request type needs: deserializable, with a JSON Schema to validate against. (When a
/// bound is missing, rustc reports the missing `Deserialize` / `JsonSchema` itself, on the
/// handler's request type.)
pub trait RequestType: DeserializeOwned + JsonSchema + Send + 'static {}

impl<T: DeserializeOwned + JsonSchema + Send + 'static> RequestType for T {}

/// What a response type needs: serializable, with a JSON Schema to publish.
pub trait ResponseType: Serialize + JsonSchema + Send + 'static {}

impl<T: Serialize + JsonSchema + Send + 'static> ResponseType for T {}

#[cfg(test)]
mod tests {
    use super::Subject;

    #[test]
    fn wildcards_yield_what_each_matched() {
        let subject = Subject::new("rosey.db.kv.chat.get", "rosey.db.kv.*.get");
        assert_eq!(subject.wildcards().collect::<Vec<_>>(), ["chat"]);
        assert_eq!(subject.wildcard(0), Some("chat"));
        assert_eq!(subject.wildcard(1), None);

        let subject = Subject::new("a.x.b.y.z.w", "a.*.b.>");
        assert_eq!(subject.wildcards().collect::<Vec<_>>(), ["x", "y.z.w"]);

        let subject = Subject::new("a.b", "a.b");
        assert_eq!(subject.wildcards().count(), 0);
        assert_eq!(subject.to_string(), "a.b");
    }
}
