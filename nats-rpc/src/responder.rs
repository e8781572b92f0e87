//! One endpoint's request path without NATS: payload bytes in, exactly one reply out
//! (decoding, validation, the handler with its panics caught, the envelope), and the reply with
//! the headers an error reply carries. The service runs every request through a [`Responder`];
//! tests and fuzz targets drive one directly.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::FutureExt;

use crate::endpoint::{Context, Deadline, Endpoint};
use crate::envelope;
use crate::error::{ErrorCode, INTERNAL_MESSAGE, RpcError, codes};
use crate::micro;
use crate::validate::{RequestValidator, SchemaError};

/// One endpoint's request path without NATS: payload bytes in, exactly one reply out. Decoding,
/// validation, the handler (a panic in it becomes `INTERNAL_ERROR`) and the envelope all happen
/// here; the service runs every request through one, and tests or fuzz targets can drive it
/// directly.
pub struct Responder<E: Endpoint> {
    state: Arc<E::State>,
    validator: RequestValidator,
}

impl<E: Endpoint> std::fmt::Debug for Responder<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("endpoint", &E::NAME)
            .field("subject", &E::SUBJECT)
            .finish_non_exhaustive()
    }
}

impl<E: Endpoint> Responder<E> {
    /// Compiles `E`'s request schema and binds the state.
    pub fn new(state: impl Into<Arc<E::State>>) -> Result<Self, SchemaError> {
        Ok(Responder::with(
            state.into(),
            RequestValidator::new::<E::Request>()?,
        ))
    }

    /// Binds `state` and an already compiled `validator` (of `E::Request`'s schema).
    pub(crate) fn with(state: Arc<E::State>, validator: RequestValidator) -> Self {
        Responder { state, validator }
    }

    /// Answers one request that arrived on `subject` (which `E::SUBJECT` must match), without
    /// headers or deadline.
    pub async fn respond(&self, subject: &str, payload: &[u8]) -> Reply {
        self.respond_with(subject, payload, None, None).await
    }

    /// Answers one request with its headers and deadline. A request whose deadline has passed
    /// is not run: it gets `TIMEOUT`.
    pub async fn respond_with(
        &self,
        subject: &str,
        payload: &[u8],
        headers: Option<&HeaderMap>,
        deadline: Option<Deadline>,
    ) -> Reply {
        match expired(deadline) {
            Some(reply) => reply,
            None => self.run(subject, payload, headers, deadline).await,
        }
    }

    /// Runs the request (its deadline already checked), turning a panic into
    /// `INTERNAL_ERROR`.
    pub(crate) async fn run(
        &self,
        subject: &str,
        payload: &[u8],
        headers: Option<&HeaderMap>,
        deadline: Option<Deadline>,
    ) -> Reply {
        AssertUnwindSafe(self.process(subject, payload, headers, deadline))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let text = panic
                    .downcast_ref::<&str>()
                    .copied()
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("(non-string panic payload)");
                tracing::error!(endpoint = E::NAME, panic = text, "handler panicked");
                Reply::internal()
            })
    }

    async fn process(
        &self,
        subject: &str,
        payload: &[u8],
        headers: Option<&HeaderMap>,
        deadline: Option<Deadline>,
    ) -> Reply {
        let request = match self.validator.decode::<E::Request>(payload) {
            Ok(request) => request,
            Err(rejection) => return Reply::failure(&rejection.code, rejection.message),
        };
        let subject = crate::endpoint::Subject::new(subject, E::SUBJECT);
        let context = Context::new(subject, headers, deadline);
        match E::call(&self.state, request, context).await {
            Ok(response) => match envelope::success(&response) {
                Ok(bytes) => Reply::Success(bytes),
                Err(err) => {
                    tracing::error!(endpoint = E::NAME, %err, "response does not serialize");
                    Reply::internal()
                }
            },
            Err(err) => {
                let code = err.code();
                if code == codes::INTERNAL_ERROR.code {
                    tracing::error!(endpoint = E::NAME, error = %err, "handler failed");
                } else {
                    tracing::debug!(endpoint = E::NAME, error = %err, "handler refused");
                }
                Reply::Failure {
                    code: code.to_owned(),
                    status: err.status(),
                    message: err.message().into_owned(),
                }
            }
        }
    }
}

/// The `TIMEOUT` reply for a request whose deadline has passed.
pub(crate) fn expired(deadline: Option<Deadline>) -> Option<Reply> {
    let deadline = deadline.filter(Deadline::passed)?;
    let err = deadline.error();
    Some(Reply::failure(&codes::TIMEOUT, err.message().into_owned()))
}

/// The one reply to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A rendered success envelope.
    Success(Bytes),
    /// An error reply: the envelope is rendered by [`Reply::payload`].
    Failure {
        /// e.g. `MISSING_FIELD`.
        code: String,
        /// The code's status, e.g. 400: the `Nats-Service-Error-Code` header.
        status: u16,
        /// The client-facing message.
        message: String,
    },
}

impl Reply {
    pub(crate) fn failure(code: &ErrorCode, message: impl Into<String>) -> Self {
        Reply::Failure {
            code: code.code.to_owned(),
            status: code.status,
            message: message.into(),
        }
    }

    fn internal() -> Self {
        Reply::failure(&codes::INTERNAL_ERROR, INTERNAL_MESSAGE)
    }

    /// The envelope sent as the reply's payload.
    pub fn payload(&self) -> Bytes {
        match self {
            Reply::Success(bytes) => bytes.clone(),
            Reply::Failure { code, message, .. } => envelope::failure(code, message),
        }
    }

    /// The NATS micro error headers an error reply carries.
    pub fn headers(&self) -> Option<HeaderMap> {
        match self {
            Reply::Success(_) => None,
            Reply::Failure {
                code,
                status,
                message,
            } => Some(error_headers(code, *status, message)),
        }
    }

    /// `(code, status)` of an error reply.
    pub(crate) fn code(&self) -> Option<(&str, u16)> {
        match self {
            Reply::Success(_) => None,
            Reply::Failure { code, status, .. } => Some((code, *status)),
        }
    }

    /// `(code, message)` of an error reply.
    pub fn error(&self) -> Option<(&str, &str)> {
        match self {
            Reply::Success(_) => None,
            Reply::Failure { code, message, .. } => Some((code, message)),
        }
    }
}

/// The NATS micro error headers (ADR-32: the message, and the status as a number) and the
/// string code under [`micro::RPC_CODE_HEADER`]. Header values cannot hold line breaks.
fn error_headers(code: &str, status: u16, message: &str) -> HeaderMap {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let mut headers = HeaderMap::new();
    headers.insert(micro::ERROR_HEADER, clean(message).as_str());
    headers.insert(micro::ERROR_CODE_HEADER, status.to_string().as_str());
    headers.insert(micro::RPC_CODE_HEADER, clean(code).as_str());
    headers
}
