//! The rosey.db.kv wire contract (docs/NATS_SUBJECTS.md), row by row, over a real nats-server,
//! on both backends: every test body runs once on a SQLite file and once on a private
//! PostgreSQL cluster (`<test>::sqlite`, `<test>::postgres`; the list is at the end), and must
//! see the same replies byte for byte.
//!
//! Every test starts its own nats-server and its own service on a fresh database, and asserts
//! whole reply envelopes (`common::success` / `common::failure`); error replies are also checked
//! for the `Nats-Service-Error` (message), `Nats-Service-Error-Code` (status) and
//! `Rpc-Error-Code` (code) headers.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Backend, Harness, failure, status_of, success};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::{Value, json};

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

fn subject(op: &str) -> String {
    format!("rosey.db.kv.{op}")
}

/// Sets `key` and asserts the exact success reply `{"success": true, "data": {}}`.
async fn put(kv: &Harness, plugin: &str, key: &str, value: Value) {
    let reply = kv
        .call(
            "set",
            json!({"plugin_name": plugin, "key": key, "value": value}),
        )
        .await;
    assert_eq!(reply, success(json!({})), "set {plugin}/{key}");
}

/// Sets `key` with a TTL and asserts the exact success reply.
async fn put_ttl(kv: &Harness, plugin: &str, key: &str, value: Value, ttl: u64) {
    let reply = kv
        .call(
            "set",
            json!({"plugin_name": plugin, "key": key, "value": value, "ttl_seconds": ttl}),
        )
        .await;
    assert_eq!(reply, success(json!({})), "set {plugin}/{key} ttl {ttl}");
}

async fn get(kv: &Harness, plugin: &str, key: &str) -> Value {
    kv.call("get", json!({"plugin_name": plugin, "key": key}))
        .await
}

async fn delete(kv: &Harness, plugin: &str, key: &str) -> Value {
    kv.call("delete", json!({"plugin_name": plugin, "key": key}))
        .await
}

async fn list(kv: &Harness, request: Value) -> Value {
    kv.call("list", request).await
}

/// `{"success": true, "data": {"exists": true, "value": value}}`.
fn found(value: Value) -> Value {
    success(json!({"exists": true, "value": value}))
}

/// `{"success": true, "data": {"exists": false}}`.
fn absent() -> Value {
    success(json!({"exists": false}))
}

fn deleted(yes: bool) -> Value {
    success(json!({"deleted": yes}))
}

/// The exact list reply for `keys`.
fn listing<S: AsRef<str>>(keys: &[S], truncated: bool) -> Value {
    let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
    success(json!({"keys": keys, "count": keys.len(), "truncated": truncated}))
}

/// Sends `payload` to `op` and asserts the whole failure envelope plus both error headers.
async fn expect_failure(
    kv: &Harness,
    op: &str,
    payload: impl Into<Bytes>,
    code: &str,
    message: &str,
) {
    let payload: Bytes = payload.into();
    let shown = String::from_utf8_lossy(&payload[..payload.len().min(120)]).into_owned();
    let reply = kv.raw(&subject(op), payload).await;
    assert_eq!(reply.body, failure(code, message), "{op} {shown}");
    assert_eq!(
        reply.error_header.as_deref(),
        Some(message),
        "Nats-Service-Error header for {op} {shown}"
    );
    assert_eq!(
        reply.error_code_header.as_deref(),
        Some(code),
        "Rpc-Error-Code header for {op} {shown}"
    );
    assert_eq!(
        reply.status_header.as_deref(),
        Some(status_of(code)),
        "Nats-Service-Error-Code header (the status) for {op} {shown}"
    );
}

/// Same, with a JSON body.
async fn expect_failure_json(kv: &Harness, op: &str, body: Value, code: &str, message: &str) {
    expect_failure(kv, op, body.to_string(), code, message).await;
}

fn missing(name: &str) -> String {
    format!("Required field '{name}' is missing")
}

const PLUGIN_PATTERN_MESSAGE: &str =
    "Field 'plugin_name' must match the pattern ^[a-z0-9_-]{1,100}$";
const OPS: [&str; 4] = ["set", "get", "delete", "list"];

/// A request body that is valid for `op` apart from what `patch` overrides / removes.
fn valid_body(op: &str) -> Value {
    match op {
        "set" => json!({"plugin_name": "p", "key": "k", "value": 1}),
        "get" | "delete" => json!({"plugin_name": "p", "key": "k"}),
        "list" => json!({"plugin_name": "p"}),
        other => panic!("unknown op {other}"),
    }
}

fn with(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

fn without(mut body: Value, field: &str) -> Value {
    body.as_object_mut().expect("object").remove(field);
    body
}

/// The text of `data.value` in a raw get reply, exactly as the service sent it.
fn raw_value_text(reply: &[u8]) -> String {
    let envelope: BTreeMap<String, Box<RawValue>> =
        serde_json::from_slice(reply).expect("reply is a JSON object");
    let data: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(envelope["data"].get()).expect("data is a JSON object");
    data["value"].get().to_owned()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
}

/// `(created_at, updated_at, expires_at)` of a row, read straight from the database.
async fn row_times(kv: &Harness, plugin: &str, key: &str) -> Option<(i64, i64, Option<i64>)> {
    assert!(
        !plugin.contains('\'') && !key.contains('\''),
        "plain names only"
    );
    let rows = kv
        .sql(
            &format!(
                "SELECT created_at, updated_at, expires_at FROM kv \
                 WHERE plugin_name = '{plugin}' AND key = '{key}'"
            ),
            &format!(
                "SELECT created_at, updated_at, expires_at FROM kv \
                 WHERE plugin_name = '{plugin}' AND key = convert_to('{key}', 'UTF8')"
            ),
        )
        .await;
    let row = rows.first()?;
    let fields: Vec<&str> = row.split('|').collect();
    let int = |text: &str| text.parse::<i64>().expect("an integer column");
    Some((
        int(fields[0]),
        int(fields[1]),
        Some(fields[2]).filter(|text| !text.is_empty()).map(int),
    ))
}

// ------------------------------------------------------------------------------------------
// Round trips: every JSON type keeps its type
// ------------------------------------------------------------------------------------------

async fn set_then_get_round_trips(backend: Backend) {
    let kv = Harness::start(backend).await;
    let set = kv
        .call(
            "set",
            json!({"plugin_name": "p", "key": "k", "value": {"theme": "dark"}}),
        )
        .await;
    assert_eq!(set, success(json!({})));
    let get = kv
        .call("get", json!({"plugin_name": "p", "key": "k"}))
        .await;
    assert_eq!(
        get,
        success(json!({"exists": true, "value": {"theme": "dark"}}))
    );
}

async fn object_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    let values = [
        json!({}),
        json!({"a": 1, "b": "two", "c": [3], "d": null, "e": false}),
        json!({"unicode ключ 🔑": "значение", "": "empty member name"}),
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("obj{i}");
        put(&kv, "p", &key, value.clone()).await;
        assert_eq!(get(&kv, "p", &key).await, found(value.clone()));
    }
}

async fn array_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    let values = [
        json!([]),
        json!([1, "two", 3.5, true, false, null, {"k": "v"}, [[]]]),
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("arr{i}");
        put(&kv, "p", &key, value.clone()).await;
        assert_eq!(get(&kv, "p", &key).await, found(value.clone()));
    }
}

async fn string_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    let values = [
        "",
        "hello",
        "with \"quotes\" and \\ backslash",
        "tabs\tand\nnewlines\r\n",
        "émoji 😀 and CJK 中文",
        "null",
        "123",
        "\u{0}\u{1f}",
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("s{i}");
        put(&kv, "p", &key, json!(value)).await;
        assert_eq!(
            get(&kv, "p", &key).await,
            found(json!(value)),
            "string {value:?}"
        );
    }
}

async fn integer_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    let values = [
        json!(0),
        json!(42),
        json!(-7),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("i{i}");
        put(&kv, "p", &key, value.clone()).await;
        let reply = get(&kv, "p", &key).await;
        assert_eq!(reply, found(value.clone()));
        assert!(reply["data"]["value"].is_i64() || reply["data"]["value"].is_u64());
    }
}

async fn float_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    let values = [
        json!(3.25),
        json!(-0.5),
        json!(1e-7),
        json!(6.02e23),
        json!(0.1),
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("f{i}");
        put(&kv, "p", &key, value.clone()).await;
        let reply = get(&kv, "p", &key).await;
        assert_eq!(reply, found(value.clone()));
        assert!(reply["data"]["value"].is_f64(), "{value} stays a float");
    }
}

async fn boolean_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    put(&kv, "p", "t", json!(true)).await;
    put(&kv, "p", "f", json!(false)).await;
    assert_eq!(get(&kv, "p", "t").await, found(json!(true)));
    assert_eq!(get(&kv, "p", "f").await, found(json!(false)));
}

async fn null_value_is_stored_and_returned(backend: Backend) {
    let kv = Harness::start(backend).await;
    put(&kv, "p", "n", Value::Null).await;
    let reply = get(&kv, "p", "n").await;
    // `"value": null` present, exists true: not the same as a missing key.
    assert_eq!(reply, success(json!({"exists": true, "value": null})));
    assert!(reply["data"].as_object().unwrap().contains_key("value"));
    let raw = kv
        .raw_payload(
            &subject("get"),
            json!({"plugin_name": "p", "key": "n"}).to_string(),
        )
        .await;
    assert_eq!(raw_value_text(&raw), "null");
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["n"], false)
    );
}

async fn nested_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    let value = json!({
        "level1": {
            "level2": {
                "level3": [1, {"level4": [null, true, "deep", {"level5": {"x": -1.5}}]}]
            }
        },
        "list": [[1, 2], [3, [4, [5, []]]]]
    });
    put(&kv, "p", "nested", value.clone()).await;
    assert_eq!(get(&kv, "p", "nested").await, found(value));
}

async fn values_nest_up_to_125_levels_so_every_reply_stays_readable(backend: Backend) {
    let kv = Harness::start(backend).await;
    let deep = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
    let body = |levels: usize| {
        format!(
            r#"{{"plugin_name":"p","key":"deep","value":{}}}"#,
            deep(levels)
        )
    };
    assert_eq!(
        kv.raw("rosey.db.kv.set", body(125)).await.body,
        success(json!({}))
    );
    // The get reply nests two levels more (data, value): 127, which serde_json still reads.
    let reply = kv
        .raw_payload("rosey.db.kv.get", r#"{"plugin_name":"p","key":"deep"}"#)
        .await;
    let parsed: Value = serde_json::from_slice(&reply).expect("a default serde_json reads it");
    let mut inner = &parsed["data"]["value"];
    for _ in 0..125 {
        inner = &inner[0];
    }
    assert_eq!(inner, &json!(1));
    // One level more could be stored but not read back by such clients: refused up front.
    expect_failure(
        &kv,
        "set",
        body(126),
        "VALIDATION_ERROR",
        "Field 'value' must be nested at most 125 levels deep",
    )
    .await;
    // A request nested past 128 levels is not parsed at all.
    let reply = kv.raw("rosey.db.kv.set", body(128)).await.body;
    assert_eq!(reply["error"]["code"], "INVALID_JSON", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid JSON: recursion limit exceeded"),
        "{reply}"
    );
    assert_eq!(
        kv.raw("rosey.db.kv.get", r#"{"plugin_name":"p","key":"deep"}"#)
            .await
            .body["data"]["exists"],
        json!(true),
        "the refused sets left the stored value alone"
    );
}

async fn big_integers_and_decimal_text_are_preserved_exactly(backend: Backend) {
    let kv = Harness::start(backend).await;
    let numbers = [
        "12345678901234567890",
        "123456789012345678901234567890",
        "-98765432109876543210",
        "0.1000000000000000055511151231257827",
        "1.50",
        "1E+2",
        "-0.0",
        "3.141592653589793238462643383279",
    ];
    for (i, number) in numbers.iter().enumerate() {
        let key = format!("n{i}");
        let body = format!(r#"{{"plugin_name":"p","key":"{key}","value":{number}}}"#);
        let reply = kv.raw(&subject("set"), body).await;
        assert_eq!(reply.body, success(json!({})), "set {number}");
        let raw = kv
            .raw_payload(
                &subject("get"),
                json!({"plugin_name": "p", "key": key}).to_string(),
            )
            .await;
        let text = String::from_utf8(raw.to_vec()).expect("UTF-8 reply");
        assert!(
            text.contains(number),
            "reply {text} must contain {number} verbatim"
        );
        assert_eq!(raw_value_text(&raw), *number, "value text of {number}");
    }
    // And the big integer still compares equal as a JSON number.
    let reply = get(&kv, "p", "n0").await;
    assert_eq!(reply, found(json!(12345678901234567890_u64)));
}

async fn whitespace_is_compacted_but_string_contents_are_kept(backend: Backend) {
    let kv = Harness::start(backend).await;
    // Whitespace between tokens goes; whitespace, escaped quotes and escaped backslashes inside
    // strings stay exactly as sent.
    let sent = "{ \"a\" :  [ 1 ,\n 2 ]\t, \"s\" : \"  x \\\" y  \", \"b\" : \"ends with \\\\\", \"c\" : \" } \" }";
    let expected = r#"{"a":[1,2],"s":"  x \" y  ","b":"ends with \\","c":" } "}"#;
    let body = format!(r#"{{"plugin_name":"p","key":"ws","value":{sent}}}"#);
    assert_eq!(kv.raw(&subject("set"), body).await.body, success(json!({})));
    let raw = kv
        .raw_payload(
            &subject("get"),
            json!({"plugin_name": "p", "key": "ws"}).to_string(),
        )
        .await;
    assert_eq!(raw_value_text(&raw), expected);
    assert_eq!(
        get(&kv, "p", "ws").await,
        found(json!({"a": [1, 2], "s": "  x \" y  ", "b": "ends with \\", "c": " } "}))
    );
}

// ------------------------------------------------------------------------------------------
// TTL
// ------------------------------------------------------------------------------------------

async fn ttl_key_is_visible_then_invisible_to_get_list_and_delete(backend: Backend) {
    let kv = Harness::start(backend).await;
    put(&kv, "p", "keep", json!("forever")).await;
    put_ttl(&kv, "p", "temp", json!({"v": 1}), 1).await;
    let replied = Instant::now();
    assert_eq!(get(&kv, "p", "temp").await, found(json!({"v": 1})));
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["keep", "temp"], false)
    );

    sleep_until(replied + Duration::from_millis(1100)).await;
    assert_eq!(get(&kv, "p", "temp").await, absent());
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["keep"], false)
    );
    assert_eq!(delete(&kv, "p", "temp").await, deleted(false));
    // Not purged (purge interval is 300 s): the row is still in the file, just invisible.
    assert!(row_times(&kv, "p", "temp").await.is_some());
    assert_eq!(get(&kv, "p", "keep").await, found(json!("forever")));
}

async fn ttl_has_millisecond_precision(backend: Backend) {
    let kv = Harness::start(backend).await;
    let wall_before = now_ms();
    let sent = Instant::now();
    put_ttl(&kv, "p", "k", json!("v"), 1).await;
    let replied = Instant::now();
    let wall_after = now_ms();

    // Stored expiry is exactly 1000 ms after the write, in milliseconds (not whole seconds).
    let (created, updated, expires) = row_times(&kv, "p", "k").await.expect("row exists");
    let expires = expires.expect("expires_at set");
    assert_eq!(created, updated);
    assert_eq!(expires - updated, 1000, "ttl 1 s = 1000 ms");
    assert!(
        (wall_before + 1000..=wall_after + 1000).contains(&expires),
        "expires_at {expires} within [{}, {}]",
        wall_before + 1000,
        wall_after + 1000
    );

    // Still live at ~800 ms…
    sleep_until(sent + Duration::from_millis(800)).await;
    let live = get(&kv, "p", "k").await;
    let live_at = sent.elapsed();
    assert_eq!(live, found(json!("v")), "live at {live_at:?}");
    // …gone by ~1100 ms.
    sleep_until(replied + Duration::from_millis(1100)).await;
    assert_eq!(
        get(&kv, "p", "k").await,
        absent(),
        "gone at {:?}",
        sent.elapsed()
    );
    println!("ttl precision: live at {live_at:?}, gone at ~1100 ms");
}

async fn reset_without_ttl_clears_the_expiry(backend: Backend) {
    let kv = Harness::start(backend).await;
    put_ttl(&kv, "p", "k", json!("old"), 1).await;
    put(&kv, "p", "k", json!("new")).await;
    let replied = Instant::now();
    let (_, _, expires) = row_times(&kv, "p", "k").await.expect("row");
    assert_eq!(expires, None, "set without ttl clears expires_at");
    // `"ttl_seconds": null` also means never.
    put_ttl(&kv, "p", "n", json!(1), 1).await;
    let reply = kv
        .call(
            "set",
            json!({"plugin_name": "p", "key": "n", "value": 2, "ttl_seconds": null}),
        )
        .await;
    assert_eq!(reply, success(json!({})));

    sleep_until(replied + Duration::from_millis(1150)).await;
    assert_eq!(get(&kv, "p", "k").await, found(json!("new")));
    assert_eq!(get(&kv, "p", "n").await, found(json!(2)));
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["k", "n"], false)
    );
}

async fn reset_with_a_new_ttl_replaces_the_old_one(backend: Backend) {
    let kv = Harness::start(backend).await;
    // Longer replaces shorter…
    put_ttl(&kv, "p", "longer", json!(1), 1).await;
    put_ttl(&kv, "p", "longer", json!(2), 30).await;
    // …and shorter replaces longer.
    put_ttl(&kv, "p", "shorter", json!(1), 3600).await;
    put_ttl(&kv, "p", "shorter", json!(2), 1).await;
    let replied = Instant::now();
    let (_, updated, expires) = row_times(&kv, "p", "longer").await.expect("row");
    assert_eq!(expires, Some(updated + 30_000));

    sleep_until(replied + Duration::from_millis(1150)).await;
    assert_eq!(get(&kv, "p", "longer").await, found(json!(2)));
    assert_eq!(get(&kv, "p", "shorter").await, absent());
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["longer"], false)
    );
}

async fn ttl_maximum_2147483647_is_accepted(backend: Backend) {
    let kv = Harness::start(backend).await;
    put_ttl(&kv, "p", "k", json!("long"), 2_147_483_647).await;
    assert_eq!(get(&kv, "p", "k").await, found(json!("long")));
    let (_, updated, expires) = row_times(&kv, "p", "k").await.expect("row");
    assert_eq!(expires, Some(updated + 2_147_483_647_000));
}

async fn list_truncated_counts_only_live_keys(backend: Backend) {
    let kv = Harness::start(backend).await;
    for key in ["a", "b", "c"] {
        put(&kv, "p", key, json!(key)).await;
    }
    put_ttl(&kv, "p", "d", json!("d"), 1).await;
    let replied = Instant::now();
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": 3})).await,
        listing(&["a", "b", "c"], true)
    );
    sleep_until(replied + Duration::from_millis(1100)).await;
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": 3})).await,
        listing(&["a", "b", "c"], false)
    );
}

// ------------------------------------------------------------------------------------------
// Upsert and timestamps
// ------------------------------------------------------------------------------------------

async fn upsert_replaces_value_keeps_created_at_and_moves_updated_at(backend: Backend) {
    let kv = Harness::start(backend).await;
    put(&kv, "p", "k", json!({"version": 1})).await;
    let (created1, updated1, expires1) = row_times(&kv, "p", "k").await.expect("row");
    assert_eq!(created1, updated1);
    assert_eq!(expires1, None);

    tokio::time::sleep(Duration::from_millis(30)).await;
    put(&kv, "p", "k", json!(["version", 2])).await;
    assert_eq!(get(&kv, "p", "k").await, found(json!(["version", 2])));
    let (created2, updated2, _) = row_times(&kv, "p", "k").await.expect("row");
    assert_eq!(created2, created1, "created_at survives an upsert");
    assert!(
        updated2 >= updated1 + 30,
        "updated_at moves: {updated1} -> {updated2}"
    );

    // Still one key, not two.
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["k"], false)
    );
}

// ------------------------------------------------------------------------------------------
// Isolation
// ------------------------------------------------------------------------------------------

async fn plugins_are_isolated_for_get_list_and_delete(backend: Backend) {
    let kv = Harness::start(backend).await;
    put(&kv, "alpha", "shared", json!("alpha's")).await;
    put(&kv, "alpha", "only-alpha", json!(1)).await;
    put(&kv, "beta", "shared", json!("beta's")).await;

    // get
    assert_eq!(get(&kv, "alpha", "shared").await, found(json!("alpha's")));
    assert_eq!(get(&kv, "beta", "shared").await, found(json!("beta's")));
    assert_eq!(get(&kv, "beta", "only-alpha").await, absent());
    assert_eq!(get(&kv, "gamma", "shared").await, absent());
    // list
    assert_eq!(
        list(&kv, json!({"plugin_name": "alpha"})).await,
        listing(&["only-alpha", "shared"], false)
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "beta"})).await,
        listing(&["shared"], false)
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "gamma"})).await,
        listing::<&str>(&[], false)
    );
    // delete
    assert_eq!(delete(&kv, "beta", "only-alpha").await, deleted(false));
    assert_eq!(get(&kv, "alpha", "only-alpha").await, found(json!(1)));
    assert_eq!(delete(&kv, "beta", "shared").await, deleted(true));
    assert_eq!(get(&kv, "beta", "shared").await, absent());
    assert_eq!(get(&kv, "alpha", "shared").await, found(json!("alpha's")));
    // A plugin whose name is a prefix of another's sees nothing of it.
    put(&kv, "alph", "x", json!(0)).await;
    assert_eq!(
        list(&kv, json!({"plugin_name": "alph"})).await,
        listing(&["x"], false)
    );
}

// ------------------------------------------------------------------------------------------
// list
// ------------------------------------------------------------------------------------------

async fn list_returns_keys_in_ascending_utf8_byte_order(backend: Backend) {
    let kv = Harness::start(backend).await;
    for key in [
        "z", "é", "a", "~", "B", "aa", "😀", "中", "A", "0", "a b", "ÿ",
    ] {
        put(&kv, "p", key, json!(key)).await;
    }
    let expected = [
        "0", "A", "B", "a", "a b", "aa", "z", "~", "é", "ÿ", "中", "😀",
    ];
    // The literal above is byte order (no locale collation, no case folding).
    let mut by_bytes = expected.to_vec();
    by_bytes.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    assert_eq!(by_bytes, expected);
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&expected, false)
    );
}

async fn list_limit_and_truncated(backend: Backend) {
    let kv = Harness::start(backend).await;
    let keys = ["k1", "k2", "k3", "k4", "k5"];
    for key in keys {
        put(&kv, "p", key, json!(key)).await;
    }
    let cases: [(u32, &[&str], bool); 5] = [
        (1, &keys[..1], true),
        (2, &keys[..2], true),
        (4, &keys[..4], true),
        (5, &keys[..], false), // limit equal to count → not truncated
        (6, &keys[..], false),
    ];
    for (limit, expected, truncated) in cases {
        assert_eq!(
            list(&kv, json!({"plugin_name": "p", "limit": limit})).await,
            listing(expected, truncated),
            "limit {limit}"
        );
    }
    // With a prefix, truncated counts only matching keys.
    put(&kv, "p", "other", json!(0)).await;
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "prefix": "k", "limit": 5})).await,
        listing(&keys, false)
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "prefix": "o", "limit": 1})).await,
        listing(&["other"], false)
    );
}

async fn list_default_limit_is_1000(backend: Backend) {
    let kv = Harness::start(backend).await;
    let keys: Vec<String> = (0..1001).map(|i| format!("key-{i:04}")).collect();
    let replies: Vec<Value> = futures_util::stream::iter(keys.iter())
        .map(|key| kv.call("set", json!({"plugin_name": "p", "key": key, "value": key})))
        .buffer_unordered(128)
        .collect()
        .await;
    assert_eq!(replies.len(), 1001);
    for reply in &replies {
        assert_eq!(*reply, success(json!({})));
    }
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&keys[..1000], true)
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": 1001})).await,
        listing(&keys, false)
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": 10000})).await,
        listing(&keys, false)
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": 1000})).await,
        listing(&keys[..1000], true)
    );
}

async fn list_prefix_treats_percent_and_underscore_literally(backend: Backend) {
    let kv = Harness::start(backend).await;
    for key in ["a%b", "axb", "a_c", "abc", "a\\d", "zzz"] {
        put(&kv, "p", key, json!(key)).await;
    }
    let cases: [(&str, &[&str]); 6] = [
        ("a%", &["a%b"]),
        ("a_", &["a_c"]),
        ("%", &[]),
        ("_", &[]),
        ("a\\", &["a\\d"]),
        ("a", &["a%b", "a\\d", "a_c", "abc", "axb"]),
    ];
    for (prefix, expected) in cases {
        assert_eq!(
            list(&kv, json!({"plugin_name": "p", "prefix": prefix})).await,
            listing(expected, false),
            "prefix {prefix:?}"
        );
    }
}

async fn list_prefix_is_case_sensitive(backend: Backend) {
    let kv = Harness::start(backend).await;
    for key in ["Apple", "apple", "APPLE", "apricot", "Banana"] {
        put(&kv, "p", key, json!(key)).await;
    }
    let cases: [(&str, &[&str]); 4] = [
        ("ap", &["apple", "apricot"]),
        ("A", &["APPLE", "Apple"]),
        ("Ap", &["Apple"]),
        ("b", &[]),
    ];
    for (prefix, expected) in cases {
        assert_eq!(
            list(&kv, json!({"plugin_name": "p", "prefix": prefix})).await,
            listing(expected, false),
            "prefix {prefix:?}"
        );
    }
}

async fn list_with_empty_absent_or_null_prefix_lists_everything(backend: Backend) {
    let kv = Harness::start(backend).await;
    for key in ["b", "a", "c"] {
        put(&kv, "p", key, json!(key)).await;
    }
    let all = listing(&["a", "b", "c"], false);
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "prefix": ""})).await,
        all
    );
    assert_eq!(list(&kv, json!({"plugin_name": "p"})).await, all);
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "prefix": null})).await,
        all
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": null})).await,
        all
    );
    // A plugin with no keys.
    assert_eq!(
        list(&kv, json!({"plugin_name": "empty"})).await,
        listing::<&str>(&[], false)
    );
}

async fn list_prefix_with_unicode(backend: Backend) {
    let kv = Harness::start(backend).await;
    for key in [
        "日本語",
        "日本",
        "日曜日",
        "中文",
        "日",
        "😀a",
        "😀b",
        "😁",
        "é1",
        "e1",
    ] {
        put(&kv, "p", key, json!(key)).await;
    }
    let cases: [(&str, &[&str]); 5] = [
        ("日本", &["日本", "日本語"]),
        ("日", &["日", "日曜日", "日本", "日本語"]), // 曜 U+66DC < 本 U+672C
        ("😀", &["😀a", "😀b"]),
        ("é", &["é1"]),
        ("e", &["e1"]),
    ];
    for (prefix, expected) in cases {
        assert_eq!(
            list(&kv, json!({"plugin_name": "p", "prefix": prefix})).await,
            listing(expected, false),
            "prefix {prefix:?}"
        );
    }
}

async fn list_prefix_at_the_top_code_points(backend: Backend) {
    let kv = Harness::start(backend).await;
    let top = "\u{10FFFF}";
    let keys = [
        top.to_string(),
        format!("{top}x"),
        format!("{top}{top}"),
        "\u{10FFFE}".to_owned(),
        "\u{D7FF}a".to_owned(),
        "\u{E000}".to_owned(),
        format!("a{top}"),
        "b".to_owned(),
    ];
    for key in &keys {
        put(&kv, "p", key, json!(1)).await;
    }
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            top.to_owned(),
            vec![keys[0].clone(), keys[1].clone(), keys[2].clone()],
        ),
        (format!("{top}{top}"), vec![keys[2].clone()]),
        ("\u{D7FF}".to_owned(), vec![keys[4].clone()]),
        (format!("a{top}"), vec![keys[6].clone()]),
        ("a".to_owned(), vec![keys[6].clone()]),
    ];
    for (prefix, expected) in cases {
        assert_eq!(
            list(&kv, json!({"plugin_name": "p", "prefix": prefix})).await,
            listing(&expected, false),
            "prefix {prefix:?}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Unicode keys and key length
// ------------------------------------------------------------------------------------------

async fn unicode_keys_set_get_list(backend: Backend) {
    let kv = Harness::start(backend).await;
    let keys = ["🔑🎉", "键值存储", "キー", "clé-ü", "ключ", "👨‍👩‍👧"];
    for (i, key) in keys.iter().enumerate() {
        put(&kv, "p", key, json!({"i": i})).await;
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            get(&kv, "p", key).await,
            found(json!({"i": i})),
            "key {key}"
        );
    }
    let mut sorted = keys.to_vec();
    sorted.sort();
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&sorted, false)
    );
    assert_eq!(delete(&kv, "p", "键值存储").await, deleted(true));
    assert_eq!(get(&kv, "p", "键值存储").await, absent());
}

async fn key_of_255_characters_is_accepted_and_256_rejected(backend: Backend) {
    let kv = Harness::start(backend).await;
    let ok = "k".repeat(255);
    put(&kv, "p", &ok, json!("max")).await;
    assert_eq!(get(&kv, "p", &ok).await, found(json!("max")));
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&[&ok], false)
    );

    let long = "k".repeat(256);
    let message = "Field 'key' must be at most 255 characters long";
    for op in ["set", "get", "delete"] {
        let body = with(valid_body(op), "key", json!(long));
        expect_failure_json(&kv, op, body, "VALIDATION_ERROR", message).await;
    }
    assert_eq!(delete(&kv, "p", &ok).await, deleted(true));
}

async fn key_length_counts_characters_not_bytes(backend: Backend) {
    let kv = Harness::start(backend).await;
    let emoji = "😀".repeat(255); // 1020 bytes, 255 characters
    put(&kv, "p", &emoji, json!("emoji")).await;
    assert_eq!(get(&kv, "p", &emoji).await, found(json!("emoji")));
    let accented = "é".repeat(255); // 510 bytes
    put(&kv, "p", &accented, json!("accented")).await;
    assert_eq!(get(&kv, "p", &accented).await, found(json!("accented")));

    let message = "Field 'key' must be at most 255 characters long";
    for long in ["😀".repeat(256), "é".repeat(256)] {
        let body = json!({"plugin_name": "p", "key": long, "value": 1});
        expect_failure_json(&kv, "set", body, "VALIDATION_ERROR", message).await;
    }
}

// ------------------------------------------------------------------------------------------
// INVALID_JSON
// ------------------------------------------------------------------------------------------

async fn empty_body_is_invalid_json_on_every_op(backend: Backend) {
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

async fn malformed_json_is_invalid_json(backend: Backend) {
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

async fn invalid_utf8_is_invalid_json(backend: Backend) {
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

// ------------------------------------------------------------------------------------------
// Non-object bodies
// ------------------------------------------------------------------------------------------

async fn non_object_bodies_are_validation_errors(backend: Backend) {
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

// ------------------------------------------------------------------------------------------
// MISSING_FIELD
// ------------------------------------------------------------------------------------------

async fn missing_plugin_name_absent_null_or_empty_on_every_op(backend: Backend) {
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

async fn missing_key_absent_null_or_empty_on_set_get_delete(backend: Backend) {
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

async fn missing_value_only_when_absent(backend: Backend) {
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

// ------------------------------------------------------------------------------------------
// Precedence
// ------------------------------------------------------------------------------------------

async fn missing_field_wins_over_validation_error(backend: Backend) {
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

async fn missing_fields_are_reported_plugin_name_then_key_then_value(backend: Backend) {
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

async fn validation_error_wins_over_value_too_large(backend: Backend) {
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

async fn invalid_json_and_non_object_come_first(backend: Backend) {
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

// ------------------------------------------------------------------------------------------
// VALIDATION_ERROR: wrong types and ranges
// ------------------------------------------------------------------------------------------

async fn wrong_types_for_key_and_plugin_name(backend: Backend) {
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

async fn ttl_seconds_wrong_types_and_out_of_range(backend: Backend) {
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
async fn integral_floats_for_ttl_and_limit_are_rejected_naming_the_field(backend: Backend) {
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
async fn minus_zero_is_zero_for_ttl_and_limit(backend: Backend) {
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
async fn duplicate_members_the_rule_at_the_top_and_inside_value(backend: Backend) {
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

async fn list_limit_wrong_types_and_out_of_range(backend: Backend) {
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

async fn list_limit_bounds_1_and_10000_are_accepted(backend: Backend) {
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

async fn list_prefix_wrong_types(backend: Backend) {
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

// ------------------------------------------------------------------------------------------
// plugin_name pattern
// ------------------------------------------------------------------------------------------

async fn plugin_name_pattern_rejections(backend: Backend) {
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

async fn plugin_name_pattern_acceptances(backend: Backend) {
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

// ------------------------------------------------------------------------------------------
// VALUE_TOO_LARGE
// ------------------------------------------------------------------------------------------

async fn value_size_limit_is_65536_bytes_of_compact_json(backend: Backend) {
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

async fn value_size_is_measured_on_the_compact_encoding(backend: Backend) {
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

async fn value_size_counts_bytes_not_characters(backend: Backend) {
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

// ------------------------------------------------------------------------------------------
// Unknown fields
// ------------------------------------------------------------------------------------------

async fn unknown_fields_are_ignored_on_all_ops(backend: Backend) {
    let kv = Harness::start(backend).await;
    let extra = json!({"nested": [1, 2]});
    let reply = kv
        .call(
            "set",
            json!({"plugin_name": "p", "key": "k", "value": 7, "future": extra, "ttl": "x", "success": false}),
        )
        .await;
    assert_eq!(reply, success(json!({})));
    let reply = kv
        .call(
            "get",
            json!({"plugin_name": "p", "key": "k", "future": null, "value": 9}),
        )
        .await;
    assert_eq!(reply, found(json!(7)));
    let reply = kv
        .call(
            "list",
            json!({"plugin_name": "p", "future": true, "offset": 5}),
        )
        .await;
    assert_eq!(reply, listing(&["k"], false));
    let reply = kv
        .call(
            "delete",
            json!({"plugin_name": "p", "key": "k", "future": 1.5, "force": "yes"}),
        )
        .await;
    assert_eq!(reply, deleted(true));
    assert_eq!(get(&kv, "p", "k").await, absent());
}

// ------------------------------------------------------------------------------------------
// delete
// ------------------------------------------------------------------------------------------

async fn delete_returns_true_then_false(backend: Backend) {
    let kv = Harness::start(backend).await;
    put(&kv, "p", "k", json!("v")).await;
    put(&kv, "p", "other", json!("o")).await;
    assert_eq!(delete(&kv, "p", "k").await, deleted(true));
    assert_eq!(delete(&kv, "p", "k").await, deleted(false));
    assert_eq!(get(&kv, "p", "k").await, absent());
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["other"], false)
    );
    assert!(row_times(&kv, "p", "k").await.is_none(), "row really gone");
    // Set again after delete works and is a fresh row.
    put(&kv, "p", "k", json!("again")).await;
    assert_eq!(get(&kv, "p", "k").await, found(json!("again")));
}

async fn delete_of_a_missing_key_is_false(backend: Backend) {
    let kv = Harness::start(backend).await;
    assert_eq!(delete(&kv, "p", "never-set").await, deleted(false));
    assert_eq!(delete(&kv, "nobody", "x").await, deleted(false));
    put(&kv, "p", "k", json!(null)).await;
    assert_eq!(
        delete(&kv, "p", "K").await,
        deleted(false),
        "keys are case-sensitive"
    );
    assert_eq!(
        delete(&kv, "p", "k").await,
        deleted(true),
        "a null value is a live key"
    );
}

// ------------------------------------------------------------------------------------------
// Headers
// ------------------------------------------------------------------------------------------

async fn error_replies_carry_the_service_error_headers(backend: Backend) {
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

async fn success_replies_carry_no_error_headers(backend: Backend) {
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

// ------------------------------------------------------------------------------------------
// INTERNAL_ERROR
// ------------------------------------------------------------------------------------------

async fn corrupted_stored_value_is_a_generic_internal_error(backend: Backend) {
    // The in-memory mirror only ever holds what the service wrote; a row corrupted behind its
    // back is read from the database, so run without the mirror (PostgreSQL has none).
    let kv = Harness::start_with(backend, |config| config.mirror_mb = 0).await;
    put(&kv, "p", "fine", json!(1)).await;
    // Write a row the service could never have written: its value is not JSON.
    kv.sql(
        "INSERT INTO kv (plugin_name, key, value, expires_at, created_at, updated_at) \
         VALUES ('p', 'corrupt', '{not json: secret detail', NULL, 0, 0)",
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

// ------------------------------------------------------------------------------------------
// Concurrency, persistence, latency
// ------------------------------------------------------------------------------------------

async fn five_hundred_concurrent_sets_all_land(backend: Backend) {
    let kv = Harness::start(backend).await;
    let keys: Vec<String> = (0..500).map(|i| format!("c{i:03}")).collect();
    let started = Instant::now();
    let replies = futures_util::future::join_all(keys.iter().enumerate().map(|(i, key)| {
        kv.call(
            "set",
            json!({"plugin_name": "conc", "key": key, "value": {"i": i}}),
        )
    }))
    .await;
    println!("500 concurrent sets took {:?}", started.elapsed());
    assert_eq!(replies.len(), 500);
    for (key, reply) in keys.iter().zip(&replies) {
        assert_eq!(*reply, success(json!({})), "set {key}");
    }
    assert_eq!(
        list(&kv, json!({"plugin_name": "conc", "limit": 1000})).await,
        listing(&keys, false)
    );
    for i in [0_usize, 1, 99, 250, 377, 498, 499] {
        assert_eq!(get(&kv, "conc", &keys[i]).await, found(json!({"i": i})));
    }
}

async fn data_persists_across_a_service_restart(backend: Backend) {
    let mut kv = Harness::start(backend).await;
    put(&kv, "p", "a", json!({"kept": true})).await;
    put(&kv, "p", "big", json!(12345678901234567890_u64)).await;
    put(&kv, "p", "gone", json!(0)).await;
    put_ttl(&kv, "p", "ttl", json!("later"), 3600).await;
    put(&kv, "q", "other", json!(null)).await;
    assert_eq!(delete(&kv, "p", "gone").await, deleted(true));
    let before = row_times(&kv, "p", "ttl").await.expect("row");

    assert_eq!(
        kv.restart_service().await,
        Ok(()),
        "first run stops cleanly"
    );

    assert_eq!(get(&kv, "p", "a").await, found(json!({"kept": true})));
    assert_eq!(
        get(&kv, "p", "big").await,
        found(json!(12345678901234567890_u64))
    );
    assert_eq!(get(&kv, "p", "gone").await, absent());
    assert_eq!(get(&kv, "p", "ttl").await, found(json!("later")));
    assert_eq!(get(&kv, "q", "other").await, found(Value::Null));
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["a", "big", "ttl"], false)
    );
    assert_eq!(
        row_times(&kv, "p", "ttl").await,
        Some(before),
        "timestamps and expiry kept"
    );
    // And it still writes.
    put(&kv, "p", "after", json!(1)).await;
    assert_eq!(get(&kv, "p", "after").await, found(json!(1)));
}

// ------------------------------------------------------------------------------------------
// Every test above, on both backends
// ------------------------------------------------------------------------------------------

/// `<test>::sqlite` and `<test>::postgres` for each test body named: the same assertions on a
/// fresh store of each kind. A body left out of the list is dead code, which the build refuses.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            use super::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test(Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$test(Backend::Postgres).await;
            }
        }
    )*};
}

on_every_backend! {
    integral_floats_for_ttl_and_limit_are_rejected_naming_the_field,
    minus_zero_is_zero_for_ttl_and_limit,
    duplicate_members_the_rule_at_the_top_and_inside_value,
    set_then_get_round_trips,
    object_values_round_trip,
    array_values_round_trip,
    string_values_round_trip,
    integer_values_round_trip,
    float_values_round_trip,
    boolean_values_round_trip,
    null_value_is_stored_and_returned,
    nested_values_round_trip,
    values_nest_up_to_125_levels_so_every_reply_stays_readable,
    big_integers_and_decimal_text_are_preserved_exactly,
    whitespace_is_compacted_but_string_contents_are_kept,
    ttl_key_is_visible_then_invisible_to_get_list_and_delete,
    ttl_has_millisecond_precision,
    reset_without_ttl_clears_the_expiry,
    reset_with_a_new_ttl_replaces_the_old_one,
    ttl_maximum_2147483647_is_accepted,
    list_truncated_counts_only_live_keys,
    upsert_replaces_value_keeps_created_at_and_moves_updated_at,
    plugins_are_isolated_for_get_list_and_delete,
    list_returns_keys_in_ascending_utf8_byte_order,
    list_limit_and_truncated,
    list_default_limit_is_1000,
    list_prefix_treats_percent_and_underscore_literally,
    list_prefix_is_case_sensitive,
    list_with_empty_absent_or_null_prefix_lists_everything,
    list_prefix_with_unicode,
    list_prefix_at_the_top_code_points,
    unicode_keys_set_get_list,
    key_of_255_characters_is_accepted_and_256_rejected,
    key_length_counts_characters_not_bytes,
    empty_body_is_invalid_json_on_every_op,
    malformed_json_is_invalid_json,
    invalid_utf8_is_invalid_json,
    non_object_bodies_are_validation_errors,
    missing_plugin_name_absent_null_or_empty_on_every_op,
    missing_key_absent_null_or_empty_on_set_get_delete,
    missing_value_only_when_absent,
    missing_field_wins_over_validation_error,
    missing_fields_are_reported_plugin_name_then_key_then_value,
    validation_error_wins_over_value_too_large,
    invalid_json_and_non_object_come_first,
    wrong_types_for_key_and_plugin_name,
    ttl_seconds_wrong_types_and_out_of_range,
    list_limit_wrong_types_and_out_of_range,
    list_limit_bounds_1_and_10000_are_accepted,
    list_prefix_wrong_types,
    plugin_name_pattern_rejections,
    plugin_name_pattern_acceptances,
    value_size_limit_is_65536_bytes_of_compact_json,
    value_size_is_measured_on_the_compact_encoding,
    value_size_counts_bytes_not_characters,
    unknown_fields_are_ignored_on_all_ops,
    delete_returns_true_then_false,
    delete_of_a_missing_key_is_false,
    error_replies_carry_the_service_error_headers,
    success_replies_carry_no_error_headers,
    five_hundred_concurrent_sets_all_land,
    data_persists_across_a_service_restart,
    corrupted_stored_value_is_a_generic_internal_error,
}
