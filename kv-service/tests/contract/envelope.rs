//! The envelope: the NATS micro headers an error reply carries, and a success reply does not.

use super::*;

pub(super) async fn error_replies_carry_the_service_error_headers(backend: Backend) {
    let kv = Harness::start(backend).await;
    let cases: [(&str, Bytes, &str, &str); 4] = [
        (
            "get",
            Bytes::new(),
            "INVALID_JSON",
            "Invalid JSON: EOF while parsing a value at line 1 column 0",
        ),
        (
            "delete",
            Bytes::from(r#"{"plugin_name":"p"}"#),
            "MISSING_FIELD",
            "Required field 'key' is missing",
        ),
        (
            "list",
            Bytes::from(r#"{"plugin_name":"p","limit":0}"#),
            "VALIDATION_ERROR",
            "Field 'limit' must be >= 1",
        ),
        (
            "set",
            Bytes::from(format!(
                r#"{{"plugin_name":"p","key":"k","value":"{}"}}"#,
                "x".repeat(65_535)
            )),
            "VALUE_TOO_LARGE",
            "Value size (65537 bytes) exceeds 64KB limit (65536 bytes)",
        ),
    ];
    for (op, payload, code, message) in cases {
        let reply = kv.raw(&subject(op), payload).await;
        assert_eq!(reply.body, failure(code, message));
        assert_eq!(reply.error_header.as_deref(), Some(message), "{code}");
        assert_eq!(reply.error_code_header.as_deref(), Some(code), "{code}");
        assert_eq!(
            reply.status_header.as_deref(),
            Some(status_of(code)),
            "{code}"
        );
        assert_eq!(
            reply.error_header.as_deref(),
            reply.body["error"]["message"].as_str()
        );
        assert_eq!(
            reply.error_code_header.as_deref(),
            reply.body["error"]["code"].as_str()
        );
    }
}

pub(super) async fn success_replies_carry_no_error_headers(backend: Backend) {
    let kv = Harness::start(backend).await;
    let cases = [
        (
            "set",
            json!({"plugin_name": "p", "key": "k", "value": 1}),
            success(json!({})),
        ),
        (
            "get",
            json!({"plugin_name": "p", "key": "k"}),
            found(json!(1)),
        ),
        (
            "get",
            json!({"plugin_name": "p", "key": "missing"}),
            absent(),
        ),
        ("list", json!({"plugin_name": "p"}), listing(&["k"], false)),
        (
            "delete",
            json!({"plugin_name": "p", "key": "k"}),
            deleted(true),
        ),
        (
            "delete",
            json!({"plugin_name": "p", "key": "k"}),
            deleted(false),
        ),
    ];
    for (op, body, expected) in cases {
        let reply = kv.raw(&subject(op), body.to_string()).await;
        assert_eq!(reply.body, expected, "{op} {body}");
        assert_eq!(reply.error_header, None, "{op}: no Nats-Service-Error");
        assert_eq!(reply.error_code_header, None, "{op}: no Rpc-Error-Code");
        assert_eq!(
            reply.status_header, None,
            "{op}: no Nats-Service-Error-Code"
        );
    }
}
