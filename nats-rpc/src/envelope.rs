//! The one reply envelope: `{"success":true,"data":…}` or
//! `{"success":false,"error":{"code":…,"message":…}}`, nothing else in it. Rendering for the
//! service and parsing for the client live side by side so they cannot drift apart.

use std::cell::RefCell;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Renders a success envelope around `data`.
///
/// Into a buffer kept per thread, copied out once at its final size: a fresh `Vec` per reply
/// would re-copy it at each doubling and, handed to `Bytes` with capacity to spare, cost a
/// second allocation.
pub(crate) fn success<T: Serialize + ?Sized>(data: &T) -> Result<Bytes, serde_json::Error> {
    const HEAD: &[u8] = br#"{"success":true,"data":"#;
    /// Past this the buffer is not kept (one huge reply should not pin its size).
    const KEPT: usize = 64 * 1024;
    thread_local! {
        static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    let render = |buf: &mut Vec<u8>| -> Result<Bytes, serde_json::Error> {
        buf.clear();
        buf.extend_from_slice(HEAD);
        serde_json::to_writer(&mut *buf, data)?;
        buf.push(b'}');
        Ok(Bytes::copy_from_slice(buf))
    };
    BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            let rendered = render(&mut buf);
            if buf.capacity() > KEPT {
                *buf = Vec::new();
            }
            rendered
        }
        // `data`'s own serialization renders an envelope: it gets a buffer of its own.
        Err(_) => render(&mut Vec::new()),
    })
}

/// Renders an error envelope.
pub(crate) fn failure(code: &str, message: &str) -> Bytes {
    #[derive(Serialize)]
    struct Envelope<'a> {
        success: bool,
        error: Body<'a>,
    }
    #[derive(Serialize)]
    struct Body<'a> {
        code: &'a str,
        message: &'a str,
    }
    let envelope = Envelope {
        success: false,
        error: Body { code, message },
    };
    // A struct of two strings always serializes.
    Bytes::from(serde_json::to_vec(&envelope).expect("an error envelope serializes"))
}

/// The `error` member of a failure envelope, as a client receives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RemoteError {
    /// e.g. `MISSING_FIELD`.
    pub code: String,
    /// Human-readable text, e.g. `Required field 'key' is missing`.
    pub message: String,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for RemoteError {}

/// Parses a reply envelope: `Ok(Ok(data))` for success, `Ok(Err(error))` for a failure, `Err`
/// when the bytes are not an envelope of that shape.
pub fn parse<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<Result<T, RemoteError>, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw<'a> {
        success: bool,
        // `data` may be `null` (a unit response); only its absence means "no data".
        #[serde(borrow, default, deserialize_with = "present")]
        data: Option<&'a RawValue>,
        #[serde(default)]
        error: Option<RemoteError>,
    }
    fn present<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<&'de RawValue>, D::Error> {
        <&RawValue>::deserialize(deserializer).map(Some)
    }
    let raw: Raw<'_> = serde_json::from_slice(bytes)?;
    match (raw.success, raw.data, raw.error) {
        (true, Some(data), None) => serde_json::from_str(data.get()).map(Ok),
        (false, None, Some(error)) => Ok(Err(error)),
        _ => Err(serde::de::Error::custom(
            "not a reply envelope: expected `success: true` with `data` or `success: false` \
             with `error`",
        )),
    }
}
