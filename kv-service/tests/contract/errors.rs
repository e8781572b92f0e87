//! Error codes: INVALID_JSON, non-object bodies, MISSING_FIELD, VALIDATION_ERROR, VALUE_TOO_LARGE,
//! INTERNAL_ERROR, and which one wins when several rules fail.

use super::*;

pub(super) async fn empty_body_is_invalid_json_on_every_op(backend: Backend) {
    let kv = Harness::start(backend).await;
    for op in OPS {
        expect_failure(
            &kv,
            op,
            Bytes::new(),
            "INVALID_JSON",
            "Invalid JSON: EOF while parsing a value at line 1 column 0",
        )
        .await;
    }
}

pub(super) async fn malformed_json_is_invalid_json(backend: Backend) {
    let kv = Harness::start(backend).await;
    let bodies: [&str; 9] = [
        "{",
        "not json",
        "{'plugin_name': 'p'}",
        r#"{"plugin_name": "p", "key": "k",}"#,
        r#"{"plugin_name": "p"} trailing"#,
        r#"{"plugin_name": "p", "key": "k", "value": }"#,
        r#"{"plugin_name": "p", "key": "k", "value": undefined}"#,
        "   ",
        "{\"plugin_name\": \"p\", \"key\": \"k\", \"value\": NaN}",
    ];
    for op in OPS {
        for body in bodies {
            let reply = kv.raw(&subject(op), body).await;
            assert_eq!(reply.body["success"], json!(false), "{op} {body}");
            assert_eq!(
                reply.body["error"]["code"],
                json!("INVALID_JSON"),
                "{op} {body}"
            );
            let message = reply.body["error"]["message"].as_str().expect("message");
            assert!(
                message.starts_with("Invalid JSON: "),
                "{op} {body}: {message}"
            );
            assert!(
                message.len() > "Invalid JSON: ".len(),
                "carries parser detail"
            );
            // Exactly the two envelope members, exactly two error members.
            assert_eq!(reply.body, failure("INVALID_JSON", message));
            assert_eq!(reply.error_header.as_deref(), Some(message));
            assert_eq!(reply.error_code_header.as_deref(), Some("INVALID_JSON"));
            assert_eq!(reply.status_header.as_deref(), Some("400"));
        }
    }
    // One pinned in full.
    expect_failure(
        &kv,
        "set",
        "{",
        "INVALID_JSON",
        "Invalid JSON: EOF while parsing an object at line 1 column 1",
    )
    .await;
}

pub(super) async fn invalid_utf8_is_invalid_json(backend: Backend) {
    let kv = Harness::start(backend).await;
    for op in OPS {
        expect_failure(
            &kv,
            op,
            Bytes::from_static(b"\xff\xfe"),
            "INVALID_JSON",
            "Invalid JSON: body is not valid UTF-8 (invalid byte at offset 0)",
        )
        .await;
    }
    // A bad byte inside an otherwise fine JSON string.
    let mut body = br#"{"plugin_name":"p","key":"k"#.to_vec();
    body.push(0xC3); // truncated two-byte sequence
    body.extend_from_slice(br#"","value":1}"#);
    expect_failure(
        &kv,
        "set",
        body,
        "INVALID_JSON",
        "Invalid JSON: body is not valid UTF-8 (invalid byte at offset 27)",
    )
    .await;
    // Nothing was stored.
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing::<&str>(&[], false)
    );
}

pub(super) async fn non_object_bodies_are_validation_errors(backend: Backend) {
    let kv = Harness::start(backend).await;
    let cases = [
        ("[]", "array"),
        (r#"[{"plugin_name":"p","key":"k","value":1}]"#, "array"),
        ("5", "number"),
        ("-1.5", "number"),
        (r#""s""#, "string"),
        ("null", "null"),
        ("true", "boolean"),
        ("false", "boolean"),
    ];
    for op in OPS {
        for (body, kind) in cases {
            expect_failure(
                &kv,
                op,
                body,
                "VALIDATION_ERROR",
                &format!("Request body must be a JSON object, got {kind}"),
            )
            .await;
        }
    }
}

pub(super) async fn missing_plugin_name_absent_null_or_empty_on_every_op(backend: Backend) {
    let kv = Harness::start(backend).await;
    for op in OPS {
        let base = valid_body(op);
        for body in [
            without(base.clone(), "plugin_name"),
            with(base.clone(), "plugin_name", Value::Null),
            with(base.clone(), "plugin_name", json!("")),
        ] {
            expect_failure_json(&kv, op, body, "MISSING_FIELD", &missing("plugin_name")).await;
        }
    }
}

pub(super) async fn missing_key_absent_null_or_empty_on_set_get_delete(backend: Backend) {
    let kv = Harness::start(backend).await;
    for op in ["set", "get", "delete"] {
        let base = valid_body(op);
        for body in [
            without(base.clone(), "key"),
            with(base.clone(), "key", Value::Null),
            with(base.clone(), "key", json!("")),
        ] {
            expect_failure_json(&kv, op, body, "MISSING_FIELD", &missing("key")).await;
        }
    }
}

pub(super) async fn missing_value_only_when_absent(backend: Backend) {
    let kv = Harness::start(backend).await;
    expect_failure_json(
        &kv,
        "set",
        json!({"plugin_name": "p", "key": "k"}),
        "MISSING_FIELD",
        &missing("value"),
    )
    .await;
    assert_eq!(get(&kv, "p", "k").await, absent());
    // null and "" are values, not missing.
    put(&kv, "p", "null", Value::Null).await;
    put(&kv, "p", "empty", json!("")).await;
    assert_eq!(get(&kv, "p", "null").await, found(Value::Null));
    assert_eq!(get(&kv, "p", "empty").await, found(json!("")));
}

pub(super) async fn missing_field_wins_over_validation_error(backend: Backend) {
    let kv = Harness::start(backend).await;
    let cases = [
        // bad plugin_name pattern + missing key → MISSING_FIELD key
        ("set", json!({"plugin_name": "Bad Name", "value": 1}), "key"),
        ("get", json!({"plugin_name": "Bad Name"}), "key"),
        (
            "delete",
            json!({"plugin_name": "Bad Name", "key": null}),
            "key",
        ),
        // wrong-typed plugin_name + empty key
        (
            "set",
            json!({"plugin_name": 5, "key": "", "value": 1}),
            "key",
        ),
        // wrong-typed key + missing value
        ("set", json!({"plugin_name": "p", "key": 123}), "value"),
        // bad ttl + missing value
        (
            "set",
            json!({"plugin_name": "p", "key": "k", "ttl_seconds": 0}),
            "value",
        ),
        // bad limit/prefix + missing plugin_name
        ("list", json!({"limit": 0, "prefix": 5}), "plugin_name"),
        // 256-char key + missing value
        (
            "set",
            json!({"plugin_name": "p", "key": "k".repeat(256)}),
            "value",
        ),
    ];
    for (op, body, field) in cases {
        expect_failure_json(&kv, op, body, "MISSING_FIELD", &missing(field)).await;
    }
}

pub(super) async fn missing_fields_are_reported_plugin_name_then_key_then_value(backend: Backend) {
    let kv = Harness::start(backend).await;
    let cases = [
        ("set", json!({}), "plugin_name"),
        ("set", json!({"value": 1}), "plugin_name"),
        ("set", json!({"key": "k"}), "plugin_name"),
        (
            "set",
            json!({"plugin_name": null, "key": null, "value": 1}),
            "plugin_name",
        ),
        ("set", json!({"plugin_name": "p"}), "key"),
        ("set", json!({"plugin_name": "p", "key": ""}), "key"),
        ("set", json!({"plugin_name": "p", "key": "k"}), "value"),
        ("get", json!({}), "plugin_name"),
        ("delete", json!({"key": ""}), "plugin_name"),
        ("list", json!({}), "plugin_name"),
    ];
    for (op, body, field) in cases {
        expect_failure_json(&kv, op, body, "MISSING_FIELD", &missing(field)).await;
    }
}

pub(super) async fn validation_error_wins_over_value_too_large(backend: Backend) {
    let kv = Harness::start(backend).await;
    let huge = "x".repeat(70_000);
    let cases = [
        (
            json!({"plugin_name": "p", "key": "k", "value": huge, "ttl_seconds": 0}),
            "Field 'ttl_seconds' must be >= 1",
        ),
        (
            json!({"plugin_name": "UPPER", "key": "k", "value": huge}),
            PLUGIN_PATTERN_MESSAGE,
        ),
        (
            json!({"plugin_name": "p", "key": "k".repeat(256), "value": huge}),
            "Field 'key' must be at most 255 characters long",
        ),
        (
            json!({"plugin_name": "p", "key": 1, "value": huge}),
            "Field 'key' must be of type string",
        ),
    ];
    for (body, message) in cases {
        expect_failure_json(&kv, "set", body, "VALIDATION_ERROR", message).await;
    }
    // Huge value + missing key → MISSING_FIELD beats both.
    expect_failure_json(
        &kv,
        "set",
        json!({"plugin_name": "p", "value": huge}),
        "MISSING_FIELD",
        &missing("key"),
    )
    .await;
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing::<&str>(&[], false)
    );
}

pub(super) async fn invalid_json_and_non_object_come_first(backend: Backend) {
    let kv = Harness::start(backend).await;
    // Syntax error anywhere beats every field rule.
    for op in OPS {
        let reply = kv
            .raw(
                &subject(op),
                r#"{"plugin_name": 5, "key": "", "ttl_seconds": 0, "limit": 0,"#,
            )
            .await;
        let message = reply.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.starts_with("Invalid JSON: "), "{op}: {message}");
        assert_eq!(reply.body, failure("INVALID_JSON", &message), "{op}");
        assert_eq!(reply.error_code_header.as_deref(), Some("INVALID_JSON"));
        assert_eq!(reply.status_header.as_deref(), Some("400"));
    }
    // Invalid UTF-8 inside an otherwise rule-breaking object is still INVALID_JSON.
    let mut body = br#"{"plugin_name":"BAD","key":""#.to_vec();
    body.push(0xFF);
    body.extend_from_slice(br#""}"#);
    expect_failure(
        &kv,
        "get",
        body,
        "INVALID_JSON",
        "Invalid JSON: body is not valid UTF-8 (invalid byte at offset 28)",
    )
    .await;
    // A non-object body beats MISSING_FIELD.
    expect_failure(
        &kv,
        "set",
        "[]",
        "VALIDATION_ERROR",
        "Request body must be a JSON object, got array",
    )
    .await;
}

pub(super) async fn wrong_types_for_key_and_plugin_name(backend: Backend) {
    let kv = Harness::start(backend).await;
    for op in OPS {
        let base = valid_body(op);
        for bad in [json!(5), json!(true), json!(["p"]), json!({"p": 1})] {
            expect_failure_json(
                &kv,
                op,
                with(base.clone(), "plugin_name", bad),
                "VALIDATION_ERROR",
                "Field 'plugin_name' must be of type string",
            )
            .await;
        }
        if op != "list" {
            for bad in [
                json!(123),
                json!(1.5),
                json!(false),
                json!(["k"]),
                json!({}),
            ] {
                expect_failure_json(
                    &kv,
                    op,
                    with(base.clone(), "key", bad),
                    "VALIDATION_ERROR",
                    "Field 'key' must be of type string",
                )
                .await;
            }
        }
    }
    // Nothing was stored under a stringified key.
    assert_eq!(get(&kv, "p", "123").await, absent());
}

pub(super) async fn ttl_seconds_wrong_types_and_out_of_range(backend: Backend) {
    let kv = Harness::start(backend).await;
    let type_message = "Field 'ttl_seconds' must be of type integer or null";
    let cases: [(&str, &str); 9] = [
        ("\"5\"", type_message),
        ("true", type_message),
        ("1.5", type_message),
        ("[1]", type_message),
        ("{}", type_message),
        ("0", "Field 'ttl_seconds' must be >= 1"),
        ("-1", "Field 'ttl_seconds' must be >= 1"),
        ("2147483648", "Field 'ttl_seconds' must be <= 2147483647"),
        (
            "99999999999999999999",
            "Field 'ttl_seconds' must be <= 2147483647",
        ),
    ];
    for (ttl, message) in cases {
        let body = format!(r#"{{"plugin_name":"p","key":"k","value":1,"ttl_seconds":{ttl}}}"#);
        expect_failure(&kv, "set", body, "VALIDATION_ERROR", message).await;
    }
    assert_eq!(get(&kv, "p", "k").await, absent());
    // Bounds that are accepted.
    put_ttl(&kv, "p", "one", json!(1), 1).await;
    put_ttl(&kv, "p", "max", json!(2), 2_147_483_647).await;
    assert_eq!(get(&kv, "p", "max").await, found(json!(2)));
}

/// `1.0` passes the schema's `integer` type (JSON Schema counts it as an integer) but not the
/// `u32` field, so it is rejected after validation. The code is right; the contract also asks that
/// a VALIDATION_ERROR message "names the field and the rule", like every other field error
/// ("Field '<name>' ...").
pub(super) async fn integral_floats_for_ttl_and_limit_are_rejected_naming_the_field(
    backend: Backend,
) {
    // JSON Schema counts `1.0` as an integer; the contract's integers do not.
    let kv = Harness::start(backend).await;
    let cases = [
        (
            "set",
            r#"{"plugin_name":"p","key":"k","value":1,"ttl_seconds":1.0}"#,
            "Field 'ttl_seconds' must be of type integer or null",
        ),
        (
            "set",
            r#"{"plugin_name":"p","key":"k","value":1,"ttl_seconds":1e1}"#,
            "Field 'ttl_seconds' must be of type integer or null",
        ),
        (
            "list",
            r#"{"plugin_name":"p","limit":5.0}"#,
            "Field 'limit' must be of type integer or null",
        ),
    ];
    for (op, body, message) in cases {
        let reply = kv.raw(&subject(op), body).await;
        assert_eq!(
            reply.body,
            failure("VALIDATION_ERROR", message),
            "{op} {body}"
        );
        assert_eq!(reply.error_header.as_deref(), Some(message));
        assert_eq!(reply.error_code_header.as_deref(), Some("VALIDATION_ERROR"));
        assert_eq!(reply.status_header.as_deref(), Some("400"));
    }
    assert_eq!(get(&kv, "p", "k").await, absent());
}

/// `-0` is the integer zero (JSON has no separate negative zero integer, and JSON Schema counts
/// it an integer), so it fails the range rule like `0`. `-0.0` breaks two rules (written as a
/// fraction, and below 1): exactly one is reported, which one is not part of the contract.
pub(super) async fn minus_zero_is_zero_for_ttl_and_limit(backend: Backend) {
    let kv = Harness::start(backend).await;
    let ttl_type = "Field 'ttl_seconds' must be of type integer or null";
    let limit_type = "Field 'limit' must be of type integer or null";
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "set",
            r#"{"plugin_name":"p","key":"k","value":1,"ttl_seconds":-0}"#,
            &["Field 'ttl_seconds' must be >= 1"],
        ),
        (
            "set",
            r#"{"plugin_name":"p","key":"k","value":1,"ttl_seconds":-0.0}"#,
            &["Field 'ttl_seconds' must be >= 1", ttl_type],
        ),
        (
            "list",
            r#"{"plugin_name":"p","limit":-0}"#,
            &["Field 'limit' must be >= 1"],
        ),
        (
            "list",
            r#"{"plugin_name":"p","limit":-0.0}"#,
            &["Field 'limit' must be >= 1", limit_type],
        ),
    ];
    for (op, body, allowed) in cases {
        let reply = kv.raw(&subject(op), body).await;
        assert_eq!(
            reply.body["error"]["code"], "VALIDATION_ERROR",
            "{op} {body}"
        );
        let message = reply.body["error"]["message"].as_str().unwrap();
        assert!(allowed.contains(&message), "{op} {body}: {message}");
    }
    assert_eq!(get(&kv, "p", "k").await, absent());
}

/// Duplicate members: a request field given twice is refused; an unknown member is ignored
/// however often it appears; a `value` is stored as sent, repeated names included (it comes
/// back byte for byte; most JSON parsers then keep the last).
pub(super) async fn duplicate_members_the_rule_at_the_top_and_inside_value(backend: Backend) {
    let kv = Harness::start(backend).await;
    let known = r#"{"plugin_name":"p","key":"k","key":"j","value":1}"#;
    let reply = kv.raw(&subject("set"), known).await;
    assert_eq!(reply.body["success"], false, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], "VALIDATION_ERROR");
    let message = reply.body["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Invalid request: duplicate field `key` at line 1 column"),
        "{message}"
    );
    assert_eq!(get(&kv, "p", "k").await, absent());
    assert_eq!(get(&kv, "p", "j").await, absent());

    let unknown = r#"{"plugin_name":"p","key":"k","x":1,"x":2,"value":1}"#;
    assert_eq!(
        kv.raw(&subject("set"), unknown).await.body,
        success(json!({}))
    );
    assert_eq!(get(&kv, "p", "k").await, found(json!(1)));

    let inside = r#"{"plugin_name":"p","key":"dup","value":{"a":1,"a":2}}"#;
    assert_eq!(
        kv.raw(&subject("set"), inside).await.body,
        success(json!({}))
    );
    let raw = kv
        .raw_payload(
            &subject("get"),
            json!({"plugin_name": "p", "key": "dup"}).to_string(),
        )
        .await;
    assert_eq!(raw_value_text(&raw), r#"{"a":1,"a":2}"#);
}

pub(super) async fn list_limit_wrong_types_and_out_of_range(backend: Backend) {
    let kv = Harness::start(backend).await;
    let type_message = "Field 'limit' must be of type integer or null";
    let cases: [(Value, &str); 8] = [
        (json!(0), "Field 'limit' must be >= 1"),
        (json!(-5), "Field 'limit' must be >= 1"),
        (json!(10001), "Field 'limit' must be <= 10000"),
        (json!(4294967296_u64), "Field 'limit' must be <= 10000"),
        (json!("5"), type_message),
        (json!(2.5), type_message),
        (json!(true), type_message),
        (json!([5]), type_message),
    ];
    for (limit, message) in cases {
        expect_failure_json(
            &kv,
            "list",
            json!({"plugin_name": "p", "limit": limit}),
            "VALIDATION_ERROR",
            message,
        )
        .await;
    }
}

pub(super) async fn list_limit_bounds_1_and_10000_are_accepted(backend: Backend) {
    let kv = Harness::start(backend).await;
    put(&kv, "p", "a", json!(1)).await;
    put(&kv, "p", "b", json!(2)).await;
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": 10000})).await,
        listing(&["a", "b"], false)
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": 1})).await,
        listing(&["a"], true)
    );
}

pub(super) async fn list_prefix_wrong_types(backend: Backend) {
    let kv = Harness::start(backend).await;
    for bad in [json!(5), json!(true), json!(["a"]), json!({"a": 1})] {
        expect_failure_json(
            &kv,
            "list",
            json!({"plugin_name": "p", "prefix": bad}),
            "VALIDATION_ERROR",
            "Field 'prefix' must be of type string or null",
        )
        .await;
    }
}

pub(super) async fn plugin_name_pattern_rejections(backend: Backend) {
    let kv = Harness::start(backend).await;
    let bad = [
        "Plugin".to_owned(),
        "UPPER".to_owned(),
        "my plugin".to_owned(),
        " p".to_owned(),
        "p\n".to_owned(),
        "p.q".to_owned(),
        "p/q".to_owned(),
        "plügin".to_owned(),
        "a".repeat(101),
    ];
    for op in OPS {
        for name in &bad {
            expect_failure_json(
                &kv,
                op,
                with(valid_body(op), "plugin_name", json!(name)),
                "VALIDATION_ERROR",
                PLUGIN_PATTERN_MESSAGE,
            )
            .await;
        }
    }
}

pub(super) async fn plugin_name_pattern_acceptances(backend: Backend) {
    let kv = Harness::start(backend).await;
    let hundred = "a".repeat(100);
    for name in [hundred.as_str(), "a-b_c9", "0", "-", "_", "abc-123_xyz"] {
        put(&kv, name, "k", json!(name)).await;
        assert_eq!(
            get(&kv, name, "k").await,
            found(json!(name)),
            "plugin {name}"
        );
        assert_eq!(
            list(&kv, json!({"plugin_name": name})).await,
            listing(&["k"], false),
            "plugin {name}"
        );
        assert_eq!(delete(&kv, name, "k").await, deleted(true), "plugin {name}");
    }
}

pub(super) async fn value_size_limit_is_65536_bytes_of_compact_json(backend: Backend) {
    let kv = Harness::start(backend).await;
    let fits = "x".repeat(65_534); // "…" = 65536 bytes
    put(&kv, "p", "fits", json!(fits)).await;
    assert_eq!(get(&kv, "p", "fits").await, found(json!(fits)));

    let over = "x".repeat(65_535); // 65537 bytes
    expect_failure_json(
        &kv,
        "set",
        json!({"plugin_name": "p", "key": "over", "value": over}),
        "VALUE_TOO_LARGE",
        "Value size (65537 bytes) exceeds 64KB limit (65536 bytes)",
    )
    .await;
    assert_eq!(get(&kv, "p", "over").await, absent());
    // A rejected upsert leaves the old value alone.
    expect_failure_json(
        &kv,
        "set",
        json!({"plugin_name": "p", "key": "fits", "value": over}),
        "VALUE_TOO_LARGE",
        "Value size (65537 bytes) exceeds 64KB limit (65536 bytes)",
    )
    .await;
    assert_eq!(get(&kv, "p", "fits").await, found(json!(fits)));
}

pub(super) async fn value_size_is_measured_on_the_compact_encoding(backend: Backend) {
    let kv = Harness::start(backend).await;
    // 20,001 compact bytes sent as ~150 KB of whitespace-padded JSON: accepted.
    let padded = format!("[{}]", vec!["1"; 10_000].join("    ,\n\t     "));
    assert!(padded.len() > 100_000);
    let body = format!(r#"{{"plugin_name":"p","key":"padded","value":{padded}}}"#);
    assert_eq!(kv.raw(&subject("set"), body).await.body, success(json!({})));
    assert_eq!(get(&kv, "p", "padded").await, found(json!(vec![1; 10_000])));

    // Boundary with whitespace: compact `["x…"]` of exactly 65536 bytes fits…
    let body = format!(
        r#"{{"plugin_name":"p","key":"edge","value":[   "{}"   ]}}"#,
        "x".repeat(65_532)
    );
    assert_eq!(kv.raw(&subject("set"), body).await.body, success(json!({})));
    // …and 65537 compact bytes do not, whatever the padding.
    let body = format!(
        r#"{{"plugin_name":"p","key":"edge2","value":[ "{}" ]}}"#,
        "x".repeat(65_533)
    );
    expect_failure(
        &kv,
        "set",
        body,
        "VALUE_TOO_LARGE",
        "Value size (65537 bytes) exceeds 64KB limit (65536 bytes)",
    )
    .await;
}

pub(super) async fn value_size_counts_bytes_not_characters(backend: Backend) {
    let kv = Harness::start(backend).await;
    let fits = "é".repeat(32_767); // 65534 bytes + 2 quotes = 65536
    put(&kv, "p", "fits", json!(fits)).await;
    assert_eq!(get(&kv, "p", "fits").await, found(json!(fits)));
    let over = "é".repeat(32_768); // 65538 bytes
    expect_failure_json(
        &kv,
        "set",
        json!({"plugin_name": "p", "key": "over", "value": over}),
        "VALUE_TOO_LARGE",
        "Value size (65538 bytes) exceeds 64KB limit (65536 bytes)",
    )
    .await;
}

pub(super) async fn corrupted_stored_value_is_a_generic_internal_error(backend: Backend) {
    // The in-memory mirror only ever holds what the service wrote; a row corrupted behind its
    // back is read from the database, so run without the mirror (PostgreSQL has none).
    let kv = Harness::start_with(backend, |config| config.mirror_mb = 0).await;
    put(&kv, "p", "fine", json!(1)).await;
    // Write a row the service could never have written: its value is not JSON.
    kv.sql(
        "INSERT INTO kv (id, value, expires_at, created_at, updated_at) \
         VALUES (CAST('p' || char(0) || 'corrupt' AS BLOB), '{not json: secret detail', NULL, 0, 0)",
        "INSERT INTO kv (plugin_name, key, value, expires_at, created_at, updated_at) \
         VALUES ('p', convert_to('corrupt', 'UTF8'), '{not json: secret detail', NULL, 0, 0)",
    )
    .await;

    expect_failure_json(
        &kv,
        "get",
        json!({"plugin_name": "p", "key": "corrupt"}),
        "INTERNAL_ERROR",
        "Internal error",
    )
    .await;
    // The service keeps serving everything else.
    assert_eq!(get(&kv, "p", "fine").await, found(json!(1)));
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["corrupt", "fine"], false)
    );
    assert_eq!(delete(&kv, "p", "corrupt").await, deleted(true));
}
