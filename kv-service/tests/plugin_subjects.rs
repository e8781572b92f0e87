//! Per-plugin subjects (`--plugin-subjects`): `rosey.db.kv.<plugin_name>.<op>` takes the plugin
//! from the subject, so NATS permissions alone confine a plugin to its own keys. First the
//! semantics in process, then a real nats-server with per-user publish permissions and the real
//! binary: plugin A cannot read, list or delete plugin B's keys.

mod common;

use std::time::Duration;

use common::process::{Running, ready};
use common::{Backend, Harness};
use serde_json::{Value, json};
use test_support::NatsServer;
use test_support::envelope::{absent, failure, success};

async fn plugin_harness() -> Harness {
    Harness::start_with(Backend::Sqlite, |config| config.plugin_subjects = true).await
}

#[tokio::test]
async fn the_subject_names_the_plugin_and_shares_its_namespace() {
    let h = plugin_harness().await;
    let set = h
        .raw("rosey.db.kv.chat.set", r#"{"key":"greeting","value":"hi"}"#)
        .await;
    assert_eq!(set.body, success(json!({})));
    // The same namespace as `plugin_name: chat` on the contract's fixed subjects.
    assert_eq!(
        h.call("get", json!({"plugin_name": "chat", "key": "greeting"}))
            .await,
        success(json!({"exists": true, "value": "hi"}))
    );
    assert_eq!(
        h.raw("rosey.db.kv.chat.get", r#"{"key":"greeting"}"#)
            .await
            .body,
        success(json!({"exists": true, "value": "hi"}))
    );
    // Another plugin's subject sees nothing of it.
    assert_eq!(
        h.raw("rosey.db.kv.games.get", r#"{"key":"greeting"}"#)
            .await
            .body,
        success(json!({"exists": false}))
    );
    assert_eq!(
        h.raw("rosey.db.kv.chat.list", r#"{"prefix":"gr"}"#)
            .await
            .body,
        success(json!({"keys": ["greeting"], "count": 1, "truncated": false}))
    );
    assert_eq!(
        h.raw("rosey.db.kv.games.list", "{}").await.body,
        success(json!({"keys": [], "count": 0, "truncated": false}))
    );
    assert_eq!(
        h.raw("rosey.db.kv.games.delete", r#"{"key":"greeting"}"#)
            .await
            .body,
        success(json!({"deleted": false}))
    );
    assert_eq!(
        h.raw("rosey.db.kv.chat.delete", r#"{"key":"greeting"}"#)
            .await
            .body,
        success(json!({"deleted": true}))
    );
}

#[tokio::test]
async fn a_payload_plugin_name_must_match_the_subject() {
    let h = plugin_harness().await;
    let matching = h
        .raw(
            "rosey.db.kv.chat.set",
            r#"{"plugin_name":"chat","key":"k","value":1}"#,
        )
        .await;
    assert_eq!(matching.body, success(json!({})));
    for op in ["set", "get", "delete", "list"] {
        let reply = h
            .raw(
                &format!("rosey.db.kv.chat.{op}"),
                r#"{"plugin_name":"games","key":"k","value":1}"#,
            )
            .await;
        assert_eq!(
            reply.body,
            failure(
                "VALIDATION_ERROR",
                "Field 'plugin_name' must be 'chat', the plugin named by the subject"
            ),
            "{op}"
        );
        assert_eq!(reply.error_code_header.as_deref(), Some("VALIDATION_ERROR"));
        assert_eq!(reply.status_header.as_deref(), Some("400"));
    }
    // The key is untouched by the refused requests.
    assert_eq!(
        h.raw("rosey.db.kv.chat.get", r#"{"key":"k"}"#).await.body,
        success(json!({"exists": true, "value": 1}))
    );
}

#[tokio::test]
async fn field_rules_still_apply_and_bad_subject_tokens_are_refused() {
    let h = plugin_harness().await;
    let cases: &[(&str, &str, Value)] = &[
        (
            "rosey.db.kv.chat.get",
            "{}",
            failure("MISSING_FIELD", "Required field 'key' is missing"),
        ),
        (
            "rosey.db.kv.chat.set",
            r#"{"key":"k"}"#,
            failure("MISSING_FIELD", "Required field 'value' is missing"),
        ),
        (
            "rosey.db.kv.chat.set",
            r#"{"key":123,"value":1}"#,
            failure("VALIDATION_ERROR", "Field 'key' must be of type string"),
        ),
        (
            "rosey.db.kv.chat.list",
            "[]",
            failure(
                "VALIDATION_ERROR",
                "Request body must be a JSON object, got array",
            ),
        ),
        (
            "rosey.db.kv.Chat.get",
            r#"{"key":"k"}"#,
            failure(
                "VALIDATION_ERROR",
                "The subject's plugin token must match ^[a-z0-9_-]{1,100}$ \
                 (rosey.db.kv.<plugin_name>.<op>)",
            ),
        ),
        // `plugin_name` is optional here: absent or null is the subject's plugin; given, it
        // is a string matching the pattern (so `""` is not "missing" but malformed).
        (
            "rosey.db.kv.chat.get",
            r#"{"plugin_name":null,"key":"nope"}"#,
            absent(),
        ),
        (
            "rosey.db.kv.chat.get",
            r#"{"plugin_name":"","key":"k"}"#,
            failure(
                "VALIDATION_ERROR",
                "Field 'plugin_name' must match the pattern ^[a-z0-9_-]{1,100}$",
            ),
        ),
        (
            "rosey.db.kv.chat.get",
            r#"{"plugin_name":5,"key":"k"}"#,
            failure(
                "VALIDATION_ERROR",
                "Field 'plugin_name' must be of type string or null",
            ),
        ),
        (
            "rosey.db.kv.chat.set",
            &format!(r#"{{"key":"big","value":"{}"}}"#, "x".repeat(65_535)),
            failure(
                "VALUE_TOO_LARGE",
                "Value size (65537 bytes) exceeds 64KB limit (65536 bytes)",
            ),
        ),
    ];
    for (subject, body, expected) in cases {
        assert_eq!(
            &h.raw(subject, body.to_string()).await.body,
            expected,
            "{subject} {body:.60}"
        );
    }
}

#[tokio::test]
async fn without_the_option_only_the_fixed_subjects_are_served() {
    let h = Harness::start(Backend::Sqlite).await;
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        h.client
            .request("rosey.db.kv.chat.get", r#"{"key":"k"}"#.into()),
    )
    .await
    .expect("an answer from the server");
    let err = reply.expect_err("nobody serves per-plugin subjects by default");
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders);
}

/// A plugin's request on a subject its NATS user may not publish to: refused by the server, so
/// no reply ever comes (async-nats reports the violation as an error event).
async fn denied(client: &async_nats::Client, subject: &str, body: &str) {
    let outcome = tokio::time::timeout(
        Duration::from_millis(1500),
        client.request(subject.to_owned(), body.to_owned().into()),
    )
    .await;
    assert!(
        !matches!(outcome, Ok(Ok(_))),
        "{subject} must be refused by the server, got a reply"
    );
}

async fn request(client: &async_nats::Client, subject: &str, body: &str) -> Value {
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject.to_owned(), body.to_owned().into()),
    )
    .await
    .expect("a reply within 5 s")
    .expect("request");
    serde_json::from_slice(&reply.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_permissions_confine_each_plugin_to_its_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        r#"
authorization {
  users = [
    { user: kv, password: kv-secret }
    { user: alpha, password: alpha-secret,
      permissions: { publish: ["rosey.db.kv.alpha.>"], subscribe: ["_INBOX.>"] } }
    { user: beta, password: beta-secret,
      permissions: { publish: ["rosey.db.kv.beta.>"], subscribe: ["_INBOX.>"] } }
  ]
}
"#,
    )
    .unwrap();
    let nats = NatsServer::start_with_config(&config);
    let _service = Running::start_in(
        &nats.url(),
        tempfile::tempdir().unwrap(),
        &[
            ("NATS_USER", "kv"),
            ("NATS_PASSWORD", "kv-secret"),
            ("PLUGIN_SUBJECTS", "true"),
        ],
    );
    let connect = |user: &'static str, password: &'static str| {
        let url = nats.url();
        async move {
            async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
                .connect(url)
                .await
                .expect("plugin connects")
        }
    };
    let operator = connect("kv", "kv-secret").await;
    ready(&operator).await;
    let alpha = connect("alpha", "alpha-secret").await;
    let beta = connect("beta", "beta-secret").await;

    assert_eq!(
        request(
            &beta,
            "rosey.db.kv.beta.set",
            r#"{"key":"token","value":"beta's secret"}"#
        )
        .await,
        success(json!({}))
    );
    assert_eq!(
        request(
            &alpha,
            "rosey.db.kv.alpha.set",
            r#"{"key":"token","value":"mine"}"#
        )
        .await,
        success(json!({}))
    );

    // Alpha cannot reach beta's keys: not on beta's subjects, not on the fixed subjects with
    // beta's name in the payload, and not by naming beta on its own subjects.
    for op in ["get", "list", "delete", "set"] {
        denied(
            &alpha,
            &format!("rosey.db.kv.beta.{op}"),
            r#"{"key":"token","value":"overwritten"}"#,
        )
        .await;
        denied(
            &alpha,
            &format!("rosey.db.kv.{op}"),
            r#"{"plugin_name":"beta","key":"token","value":"overwritten"}"#,
        )
        .await;
        assert_eq!(
            request(
                &alpha,
                &format!("rosey.db.kv.alpha.{op}"),
                r#"{"plugin_name":"beta","key":"token","value":"overwritten"}"#
            )
            .await,
            failure(
                "VALIDATION_ERROR",
                "Field 'plugin_name' must be 'alpha', the plugin named by the subject"
            ),
            "{op}"
        );
    }
    // Alpha's own subjects show only alpha's keys.
    assert_eq!(
        request(&alpha, "rosey.db.kv.alpha.list", "{}").await,
        success(json!({"keys": ["token"], "count": 1, "truncated": false}))
    );
    assert_eq!(
        request(&alpha, "rosey.db.kv.alpha.get", r#"{"key":"token"}"#).await,
        success(json!({"exists": true, "value": "mine"}))
    );
    // Beta's key is exactly as beta left it.
    assert_eq!(
        request(&beta, "rosey.db.kv.beta.get", r#"{"key":"token"}"#).await,
        success(json!({"exists": true, "value": "beta's secret"}))
    );
    // The contract's fixed subjects keep working for a client allowed to use them.
    assert_eq!(
        test_support::call(
            &operator,
            "get",
            json!({"plugin_name": "beta", "key": "token"})
        )
        .await,
        success(json!({"exists": true, "value": "beta's secret"}))
    );
}
