//! The reply envelopes the tests expect, built once: `{"success": true, "data": ...}`
//! or `{"success": false, "error": {"code", "message"}}`, and the status each error code
//! declares (what the `Nats-Service-Error-Code` header carries).

use serde_json::{Value, json};

/// `{"success": true, "data": data}`.
pub fn success(data: Value) -> Value {
    json!({"success": true, "data": data})
}

/// `{"success": false, "error": {"code": code, "message": message}}`.
pub fn failure(code: &str, message: &str) -> Value {
    json!({"success": false, "error": {"code": code, "message": message}})
}

/// A set's reply: `{"success": true, "data": {}}`.
pub fn ok() -> Value {
    success(json!({}))
}

/// A get's reply for a key that holds `value`.
pub fn found(value: Value) -> Value {
    success(json!({"exists": true, "value": value}))
}

/// A get's reply for a key that does not exist.
pub fn absent() -> Value {
    success(json!({"exists": false}))
}

/// A delete's reply: whether the key existed.
pub fn deleted(yes: bool) -> Value {
    success(json!({"deleted": yes}))
}

/// `INTERNAL_ERROR`, whose message never says more than this.
pub fn internal_error() -> Value {
    failure("INTERNAL_ERROR", "Internal error")
}

/// The status each code declares, as the `Nats-Service-Error-Code` header carries it.
///
/// # Panics
/// For a code kv-service does not have.
pub fn status_of(code: &str) -> &'static str {
    match code {
        "INVALID_JSON" | "MISSING_FIELD" | "VALIDATION_ERROR" => "400",
        "VALUE_TOO_LARGE" => "413",
        "INTERNAL_ERROR" => "500",
        "OVERLOADED" => "503",
        "TIMEOUT" => "504",
        other => panic!("no status known for {other}"),
    }
}
