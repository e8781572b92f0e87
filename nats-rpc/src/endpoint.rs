//! The contract between the `#[nats_rpc]` attribute and the runtime: one trait that names an
//! endpoint's subject and types and calls its handler. The attribute implements it; everything
//! else is generic over it.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;

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

    /// Runs the handler. `context` tells the subject the request arrived on, its headers and
    /// its deadline (handlers that take a third parameter receive it, or its subject).
    fn call<'a>(
        state: &'a Self::State,
        request: Self::Request,
        context: Context<'a>,
    ) -> impl Future<Output = Result<Self::Response, Self::Error>> + Send + 'a;
}

/// The request header carrying the caller's timeout, relative, in whole milliseconds (e.g.
/// `Rpc-Timeout-Ms: 2000`): the service fixes the deadline when the message arrives, so the
/// two clocks need not agree. Matched case-insensitively.
pub const TIMEOUT_HEADER: &str = "Rpc-Timeout-Ms";
/// Longest timeout a request may ask for (a larger header is capped).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// When a request stops being worth an answer: fixed on arrival, from its [`TIMEOUT_HEADER`]
/// or the service's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    /// `budget` from `arrived`.
    pub fn new(arrived: Instant, budget: Duration) -> Self {
        Deadline {
            at: arrived + budget,
            budget,
        }
    }

    /// `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Deadline::new(Instant::now(), budget)
    }

    /// The instant it passes.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// The timeout it was made from.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The `TIMEOUT` error for it: nothing was done.
    pub fn error(&self) -> crate::Error {
        crate::Error::new(
            crate::codes::TIMEOUT,
            format!(
                "Request deadline of {} ms passed before it was handled; nothing was done",
                self.budget.as_millis()
            ),
        )
    }

    /// The deadline a request asks for in `headers` ([`TIMEOUT_HEADER`], capped at
    /// [`MAX_TIMEOUT`]), else `default`; `None` without either. A header that is not a whole
    /// number of milliseconds >= 1 is ignored.
    pub(crate) fn of_request(
        arrived: Instant,
        headers: Option<&HeaderMap>,
        default: Option<Duration>,
    ) -> Option<Deadline> {
        let asked = headers.and_then(|headers| {
            headers
                .iter()
                .find(|(name, _)| AsRef::<str>::as_ref(name).eq_ignore_ascii_case(TIMEOUT_HEADER))
                .and_then(|(_, values)| values.first())
                .and_then(|value| value.as_str().trim().parse::<u64>().ok())
                .filter(|&millis| millis > 0)
                .map(|millis| Duration::from_millis(millis).min(MAX_TIMEOUT))
        });
        asked
            .or(default)
            .map(|budget| Deadline::new(arrived, budget))
    }
}

/// What a handler may know of its request beyond the body: the subject it arrived on, its
/// headers (auth, tracing) and its deadline. A handler takes it as its third parameter,
/// `context: nats_rpc::Context<'_>`.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    subject: Subject<'a>,
    headers: Option<&'a HeaderMap>,
    deadline: Option<Deadline>,
}

impl<'a> Context<'a> {
    pub fn new(
        subject: Subject<'a>,
        headers: Option<&'a HeaderMap>,
        deadline: Option<Deadline>,
    ) -> Self {
        Context {
            subject,
            headers,
            deadline,
        }
    }

    /// The subject the request arrived on (what wildcards matched).
    pub fn subject(&self) -> Subject<'a> {
        self.subject
    }

    /// The request's headers, if it had any.
    pub fn headers(&self) -> Option<&'a HeaderMap> {
        self.headers
    }

    /// The first value of header `name` (matched case-insensitively, as NATS leaves header case
    /// to applications).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        let (_, values) = self
            .headers?
            .iter()
            .find(|(key, _)| AsRef::<str>::as_ref(key).eq_ignore_ascii_case(name))?;
        values.first().map(|value| value.as_str())
    }

    /// The request's deadline, if it has one (its header, or the service default).
    pub fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }
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
