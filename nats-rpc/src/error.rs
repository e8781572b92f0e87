//! Error codes: the framework's own, the trait a handler's error type implements to map itself
//! onto a code and a client-safe message, and the catalogue that publishes the codes.

use std::borrow::Cow;
use std::fmt;

/// One error code an endpoint can reply with, and what it means. Catalogues of these feed the
/// service description (`$SRV.INFO`), the error-reply schema and the docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    /// The `error.code` string, e.g. `VALUE_TOO_LARGE`.
    pub code: &'static str,
    /// The HTTP-like status sent as the `Nats-Service-Error-Code` header (ADR-32 wants a
    /// number there): 400 for a bad request, 413 too large, 500 internal, 503 overloaded, …
    pub status: u16,
    /// When a client gets it.
    pub description: &'static str,
}

impl ErrorCode {
    /// Declares a code with its status and description.
    pub const fn new(code: &'static str, status: u16, description: &'static str) -> Self {
        ErrorCode {
            code,
            status,
            description,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// The codes the framework itself replies with, before or around any handler.
pub mod codes {
    use super::ErrorCode;

    /// The body is not UTF-8 JSON (an empty body included).
    pub const INVALID_JSON: ErrorCode = ErrorCode::new(
        "INVALID_JSON",
        400,
        "the body is not UTF-8 JSON (an empty body included); the message carries the parser detail",
    );
    /// A required field is absent, `null` or the empty string (where the schema rejects those).
    pub const MISSING_FIELD: ErrorCode = ErrorCode::new(
        "MISSING_FIELD",
        400,
        "a required field is absent, null or an empty string; the message names the field",
    );
    /// The body is not a JSON object, or a field breaks a rule of the request schema.
    pub const VALIDATION_ERROR: ErrorCode = ErrorCode::new(
        "VALIDATION_ERROR",
        400,
        "the body is not a JSON object, or a field has the wrong type, is out of range or does \
         not match its pattern; the message names the field and the rule",
    );
    /// Storage failure, handler panic, anything unexpected; details are logged, never sent.
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode::new(
        "INTERNAL_ERROR",
        500,
        "the service failed (storage failure, bug); the message is generic and the details \
         are in the service log",
    );
    /// Too many requests in flight; nothing was done, retry later.
    pub const OVERLOADED: ErrorCode = ErrorCode::new(
        "OVERLOADED",
        503,
        "the service has too many requests in flight; nothing was done, retry after a short pause",
    );

    /// The request's deadline passed before it was handled; nothing was done.
    pub const TIMEOUT: ErrorCode = ErrorCode::new(
        "TIMEOUT",
        504,
        "the request's deadline (its Rpc-Timeout-Ms header, or the service's default) passed \
         before it was handled; nothing was done, and the message names the deadline",
    );

    /// Every framework code, in the order their checks run.
    pub const ALL: &[ErrorCode] = &[
        INVALID_JSON,
        VALIDATION_ERROR,
        MISSING_FIELD,
        INTERNAL_ERROR,
        OVERLOADED,
        TIMEOUT,
    ];
}

/// The error type of a `#[nats_rpc]` handler: how a domain error reaches the client.
///
/// `code` and `message` go into the error envelope; `Display` is the full detail and goes only to
/// the log (for an `INTERNAL_ERROR`, say, the message stays generic while the log shows the
/// storage error). `CATALOGUE` lists the codes this type can produce, so clients can be told
/// before they ever see one.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a nats-rpc error type",
    label = "the error type of a `#[nats_rpc]` handler must implement `nats_rpc::RpcError`",
    note = "implement `nats_rpc::RpcError` (code, message, CATALOGUE) for it, or use \
            `nats_rpc::Error`"
)]
pub trait RpcError: fmt::Display + Send + 'static {
    /// Every code [`RpcError::code`] can return, with its meaning.
    const CATALOGUE: &'static [ErrorCode];

    /// The `error.code` member, one of [`RpcError::CATALOGUE`].
    fn code(&self) -> &str;

    /// The `error.message` member: safe to show to any client.
    fn message(&self) -> Cow<'_, str>;

    /// The status of [`RpcError::code`] (the `Nats-Service-Error-Code` header): by default
    /// looked up in [`RpcError::CATALOGUE`] and the framework's codes, 500 for a code in
    /// neither.
    fn status(&self) -> u16 {
        status_of(self.code(), Self::CATALOGUE)
    }
}

/// The status of `code` in `catalogue` or among the framework's codes; 500 if in neither.
pub fn status_of(code: &str, catalogue: &[ErrorCode]) -> u16 {
    catalogue
        .iter()
        .chain(codes::ALL)
        .find(|known| known.code == code)
        .map_or(codes::INTERNAL_ERROR.status, |known| known.status)
}

/// A ready-made error type for handlers that need nothing more than a code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    code: ErrorCode,
    message: Cow<'static, str>,
}

impl Error {
    /// An error with one of the framework's codes (or your own) and a client-safe message.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            code,
            message: message.into(),
        }
    }

    /// `INTERNAL_ERROR` with a generic message; log the details yourself before returning it.
    pub fn internal() -> Self {
        Error::new(codes::INTERNAL_ERROR, INTERNAL_MESSAGE)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.code, self.message)
    }
}

impl std::error::Error for Error {}

impl RpcError for Error {
    const CATALOGUE: &'static [ErrorCode] = &[];

    fn code(&self) -> &str {
        self.code.code
    }

    fn status(&self) -> u16 {
        self.code.status
    }

    fn message(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.message)
    }
}

/// The only text a client ever sees for an unexpected failure.
pub const INTERNAL_MESSAGE: &str = "Internal error";

/// Every code endpoints with error type `E` can reply with: the framework's, then the domain's.
pub fn catalogue<E: RpcError>() -> Vec<ErrorCode> {
    let mut all = codes::ALL.to_vec();
    for code in E::CATALOGUE {
        if !all.iter().any(|known| known.code == code.code) {
            all.push(*code);
        }
    }
    all
}
