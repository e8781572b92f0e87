//! Hostile bytes over a real nats-server: whatever arrives on whichever subject, the service
//! answers exactly one reply, that reply is a valid envelope with a code from the published
//! catalogue, and the service keeps serving.

mod common;

use std::time::Duration;

use common::{Backend, Harness};
use futures_util::StreamExt;
use proptest::prelude::*;
use serde_json::{Value, json};
use test_support::envelope;

/// The contract's subjects and the per-plugin ones (served with `plugin_subjects`), including a
/// plugin token that is not a valid plugin name.
const SUBJECTS: [&str; 9] = [
    "rosey.db.kv.set",
    "rosey.db.kv.get",
    "rosey.db.kv.delete",
    "rosey.db.kv.list",
    "rosey.db.kv.p.set",
    "rosey.db.kv.p.get",
    "rosey.db.kv.p.delete",
    "rosey.db.kv.p.list",
    "rosey.db.kv.Not-A-Plugin.get",
];

const CODES: [&str; 6] = [
    "INVALID_JSON",
    "VALIDATION_ERROR",
    "MISSING_FIELD",
    "VALUE_TOO_LARGE",
    "INTERNAL_ERROR",
    "OVERLOADED",
];

/// kv-service with the per-plugin subjects served too.
async fn start() -> Harness {
    Harness::start_with(Backend::Sqlite, |config| config.plugin_subjects = true).await
}

/// Checks one reply is a valid envelope: exactly `success` + `data`, or `success: false` +
/// `error` with exactly a catalogue `code` and a string `message`.
fn assert_envelope(reply: &[u8], sent: &[u8]) {
    let value: Value = serde_json::from_slice(reply)
        .unwrap_or_else(|err| panic!("reply is not JSON ({err}) for {:?}", preview(sent)));
    let object = value.as_object().expect("the reply is an object");
    assert_eq!(object.len(), 2, "exactly two members: {value}");
    match object.get("success") {
        Some(Value::Bool(true)) => assert!(object.contains_key("data"), "{value}"),
        Some(Value::Bool(false)) => {
            let error = object["error"].as_object().expect("error is an object");
            assert_eq!(error.len(), 2, "{value}");
            let code = error["code"].as_str().expect("code is a string");
            assert!(CODES.contains(&code), "unknown code {code}");
            assert!(error["message"].is_string());
            assert!(
                error["message"].as_str().unwrap().len() < 600,
                "messages stay short: {value}"
            );
        }
        other => panic!("success must be a boolean, got {other:?}"),
    }
}

fn preview(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).into_owned()
}

/// Sends every payload to every subject through one reply inbox and checks exactly one reply
/// comes back per request (waiting `linger` for a second one).
async fn exactly_one_valid_reply_each(kv: &Harness, payloads: &[Vec<u8>], linger: Duration) {
    let inbox = kv.client.new_inbox();
    let mut replies = kv.client.subscribe(inbox.clone()).await.unwrap();
    kv.client.flush().await.unwrap();
    for payload in payloads {
        for subject in SUBJECTS {
            kv.client
                .publish_with_reply(subject, inbox.clone(), payload.clone().into())
                .await
                .unwrap();
            let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
                .await
                .unwrap_or_else(|_| panic!("no reply on {subject} for {:?}", preview(payload)))
                .expect("inbox open");
            assert_envelope(&reply.payload, payload);
        }
    }
    // No second reply to anything.
    let extra = tokio::time::timeout(linger, replies.next()).await;
    assert!(extra.is_err(), "a request got more than one reply");
    // And the service still serves.
    assert_eq!(
        kv.call(
            "set",
            json!({"plugin_name": "p", "key": "alive", "value": 1})
        )
        .await,
        envelope::ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_picked_hostile_payloads() {
    let kv = start().await;
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_value = format!(
        r#"{{"plugin_name":"p","key":"k","value":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let big_number = format!(
        r#"{{"plugin_name":"p","key":"k","value":1{}}}"#,
        "0".repeat(5000)
    );
    let megabyte = format!(
        r#"{{"plugin_name":"p","key":"k","value":1,"pad":"{}"}}"#,
        "x".repeat(1_000_000)
    );
    let payloads: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"   ".to_vec(),
        b"\xff\xfe\xfd".to_vec(),
        b"{\"plugin_name\":\"p\",\"key\":\"\xc0\xaf\",\"value\":1}".to_vec(),
        b"\xef\xbb\xbf{}".to_vec(),
        b"{}{}".to_vec(),
        b"{} trailing".to_vec(),
        b"{\"plugin_name\":\"p\",\"key\":\"k\",\"value\":\"\\ud800\"}".to_vec(),
        b"{\"plugin_name\":\"p\",\"key\":\"a\x00b\",\"value\":1}".to_vec(),
        b"{\"plugin_name\":\"p\",\"plugin_name\":\"q\",\"key\":\"k\",\"value\":1}".to_vec(),
        b"{\"plugin_name\":\"p\",\"key\":\"k\",\"value\":1e999999}".to_vec(),
        b"{\"plugin_name\":\"p\",\"key\":\"k\",\"value\":-0,\"ttl_seconds\":1e2}".to_vec(),
        b"{\"plugin_name\":\"p\",\"key\":\"k\",\"limit\":18446744073709551616}".to_vec(),
        br##"{"plugin_name":{"$ref":"#"},"key":[],"value":{}}"##.to_vec(),
        deep_array.into_bytes(),
        deep_value.into_bytes(),
        big_number.into_bytes(),
        megabyte.into_bytes(),
        b"null".to_vec(),
        b"[{\"plugin_name\":\"p\"}]".to_vec(),
    ];
    exactly_one_valid_reply_each(&kv, &payloads, Duration::from_millis(300)).await;
}

/// JSON-shaped requests: objects with the real field names and arbitrary values.
fn request_like() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    });
    let field = prop_oneof![
        Just("plugin_name".to_owned()),
        Just("key".to_owned()),
        Just("value".to_owned()),
        Just("ttl_seconds".to_owned()),
        Just("prefix".to_owned()),
        Just("limit".to_owned()),
        ".{0,6}",
    ];
    prop::collection::vec((field, value), 0..6).prop_map(|fields| {
        let object: serde_json::Map<String, Value> = fields.into_iter().collect();
        serde_json::to_vec(&Value::Object(object)).unwrap()
    })
}

fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        request_like(),
        // Valid requests with one byte flipped.
        (request_like(), any::<prop::sample::Index>(), any::<u8>()).prop_map(
            |(mut bytes, at, byte)| {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                bytes
            }
        ),
    ]
}

#[test]
fn any_bytes_on_any_subject_get_exactly_one_valid_envelope() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let kv = runtime.block_on(start());
    let config = ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(payloads in prop::collection::vec(hostile_bytes(), 1..8))| {
        runtime.block_on(exactly_one_valid_reply_each(&kv, &payloads, Duration::from_millis(30)));
    });
}
