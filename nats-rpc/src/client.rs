//! The typed client: call an endpoint by its type with a typed request, get the typed response
//! or a typed error carrying the service's code and message.

use std::time::Duration;

use async_nats::client::{Request, RequestErrorKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::endpoint::Endpoint;
use crate::envelope::{self, RemoteError};

/// Default time to wait for a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls endpoints over a NATS connection.
#[derive(Debug, Clone)]
pub struct Client {
    nats: async_nats::Client,
    timeout: Duration,
}

/// Why a call did not produce a response.
#[derive(Debug)]
#[non_exhaustive]
pub enum CallError {
    /// The service answered with an error envelope.
    Remote(RemoteError),
    /// Nobody serves the subject.
    NoResponders,
    /// No reply within the timeout.
    TimedOut,
    /// The request could not be sent.
    Transport(async_nats::RequestError),
    /// The request did not serialize.
    Encode(serde_json::Error),
    /// The reply was not a valid envelope of the expected response type.
    Decode(serde_json::Error),
    /// The subject to call has a `*` or `>` token: a pattern (an endpoint's, as
    /// [`Client::call`] uses it, or one given to [`Client::call_on`]), not a subject a request
    /// can be sent to; give `call_on` a subject it matches.
    Pattern(String),
}

impl CallError {
    /// The service's error code, for [`CallError::Remote`].
    pub fn code(&self) -> Option<&str> {
        match self {
            CallError::Remote(err) => Some(&err.code),
            _ => None,
        }
    }
}

/// The message says what failed; the cause is [`std::error::Error::source`] (the remote error
/// is part of the message too: it is what the service said).
impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Remote(err) => write!(f, "service replied {err}"),
            CallError::NoResponders => f.write_str("no service is listening on the subject"),
            CallError::TimedOut => f.write_str("no reply before the timeout"),
            CallError::Transport(_) => f.write_str("the request could not be sent"),
            CallError::Encode(_) => f.write_str("the request does not serialize"),
            CallError::Decode(_) => f.write_str("the reply is not a valid envelope"),
            CallError::Pattern(subject) => write!(
                f,
                "`{subject}` is a pattern, not a subject to send to: give `Client::call_on` a \
                 subject it matches"
            ),
        }
    }
}

impl std::error::Error for CallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Remote(_)
            | CallError::NoResponders
            | CallError::TimedOut
            | CallError::Pattern(_) => None,
            CallError::Transport(err) => Some(err),
            CallError::Encode(err) | CallError::Decode(err) => Some(err),
        }
    }
}

impl Client {
    /// Wraps a connection; replies are awaited for [`DEFAULT_TIMEOUT`].
    pub fn new(nats: async_nats::Client) -> Self {
        Client {
            nats,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets how long a call waits for its reply; the request tells the service (its
    /// `Rpc-Timeout-Ms` header), which does not start it once that time has passed.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The underlying connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// Calls endpoint `E` (the type `#[nats_rpc]` generates) on its subject. An endpoint on a
    /// wildcard subject is called with [`Client::call_on`]; here it is [`CallError::Pattern`].
    pub async fn call<E>(&self, request: &E::Request) -> Result<E::Response, CallError>
    where
        E: Endpoint,
        E::Request: Serialize,
        E::Response: DeserializeOwned,
    {
        self.call_on::<E>(E::SUBJECT, request).await
    }

    /// Calls endpoint `E` on `subject`: for an endpoint on a wildcard subject, a concrete
    /// subject it matches (`rosey.db.kv.chat.get` for `rosey.db.kv.*.get`).
    pub async fn call_on<E>(
        &self,
        subject: &str,
        request: &E::Request,
    ) -> Result<E::Response, CallError>
    where
        E: Endpoint,
        E::Request: Serialize,
        E::Response: DeserializeOwned,
    {
        if subject.split('.').any(|token| token == "*" || token == ">") {
            return Err(CallError::Pattern(subject.to_owned()));
        }
        let payload = serde_json::to_vec(request).map_err(CallError::Encode)?;
        // The service stops working on the request when this client stops waiting.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            crate::endpoint::TIMEOUT_HEADER,
            self.timeout.as_millis().max(1).to_string().as_str(),
        );
        crate::telemetry::outgoing_traceparent(&mut headers);
        let reply = self
            .nats
            .send_request(
                subject.to_owned(),
                Request::new()
                    .payload(payload.into())
                    .headers(headers)
                    .timeout(Some(self.timeout)),
            )
            .await
            .map_err(|err| match err.kind() {
                RequestErrorKind::NoResponders => CallError::NoResponders,
                RequestErrorKind::TimedOut => CallError::TimedOut,
                _ => CallError::Transport(err),
            })?;
        envelope::parse::<E::Response>(&reply.payload)
            .map_err(CallError::Decode)?
            .map_err(CallError::Remote)
    }
}
