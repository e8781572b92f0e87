//! The rosey.db.kv wire contract (docs/NATS_SUBJECTS.md), row by row, over a real nats-server,
//! on both backends: every test body runs once on a SQLite file and once on a private
//! PostgreSQL cluster (`<test>::sqlite`, `<test>::postgres`; the list is at the end), and must
//! see the same replies byte for byte. The tests are grouped by the contract's sections:
//! `requests.rs` (requests and results: values, lists, keys), `errors.rs` (every error code and
//! which one wins), `storage.rs` (expiry, upsert, isolation, concurrency, persistence) and
//! `envelope.rs` (the headers of a reply); the helpers they share are here.
//!
//! Every test starts its own nats-server and its own service on a fresh database, and asserts
//! whole reply envelopes (`test_support::envelope`); error replies are also checked
//! for the `Nats-Service-Error` (message), `Nats-Service-Error-Code` (status) and
//! `Rpc-Error-Code` (code) headers.

#[path = "../common/mod.rs"]
mod common;

// The contract's sections (docs/NATS_SUBJECTS.md), one module each.
mod envelope;
mod errors;
mod requests;
mod storage;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Backend, Harness, Reply};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use test_support::envelope::{absent, deleted, failure, found, status_of, success};

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

/// The exact list reply for `keys`.
fn listing<S: AsRef<str>>(keys: &[S], truncated: bool) -> Value {
    let keys: Vec<&str> = keys.iter().map(AsRef::as_ref).collect();
    success(json!({"keys": keys, "count": keys.len(), "truncated": truncated}))
}

/// Sends `payload` to `op` and asserts the whole failure envelope and the error headers
/// (`Reply::checked`: the message, the code and the code's status).
async fn expect_failure(
    kv: &Harness,
    op: &str,
    payload: impl Into<Bytes>,
    code: &str,
    message: &str,
) {
    let payload: Bytes = payload.into();
    let shown = String::from_utf8_lossy(&payload[..payload.len().min(120)]).into_owned();
    let reply = Reply::checked(&kv.request(&subject(op), payload).await);
    assert_eq!(reply, failure(code, message), "{op} {shown}");
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
                "SELECT created_at, updated_at, expires_at FROM kv_rows \
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

/// `<test>::sqlite` and `<test>::postgres` for each test body named (`<module>::<test>`): the same assertions on a
/// fresh store of each kind. A body left out of the list is dead code, which the build refuses.
macro_rules! on_every_backend {
    ($($module:ident :: $test:ident),* $(,)?) => {$(
        mod $test {
            use super::Backend;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$module::$test(Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$module::$test(Backend::Postgres).await;
            }
        }
    )*};
}

on_every_backend! {
    errors::integral_floats_for_ttl_and_limit_are_rejected_naming_the_field,
    errors::minus_zero_is_zero_for_ttl_and_limit,
    errors::duplicate_members_the_rule_at_the_top_and_inside_value,
    requests::set_then_get_round_trips,
    requests::object_values_round_trip,
    requests::array_values_round_trip,
    requests::string_values_round_trip,
    requests::integer_values_round_trip,
    requests::float_values_round_trip,
    requests::boolean_values_round_trip,
    requests::null_value_is_stored_and_returned,
    requests::nested_values_round_trip,
    requests::values_nest_up_to_125_levels_so_every_reply_stays_readable,
    requests::big_integers_and_decimal_text_are_preserved_exactly,
    requests::whitespace_is_compacted_but_string_contents_are_kept,
    storage::ttl_key_is_visible_then_invisible_to_get_list_and_delete,
    storage::ttl_has_millisecond_precision,
    storage::reset_without_ttl_clears_the_expiry,
    storage::reset_with_a_new_ttl_replaces_the_old_one,
    storage::ttl_maximum_2147483647_is_accepted,
    storage::list_truncated_counts_only_live_keys,
    storage::upsert_replaces_value_keeps_created_at_and_moves_updated_at,
    storage::plugins_are_isolated_for_get_list_and_delete,
    requests::list_returns_keys_in_ascending_utf8_byte_order,
    requests::list_limit_and_truncated,
    requests::list_default_limit_is_1000,
    requests::list_prefix_treats_percent_and_underscore_literally,
    requests::list_prefix_is_case_sensitive,
    requests::list_with_empty_absent_or_null_prefix_lists_everything,
    requests::list_prefix_with_unicode,
    requests::list_prefix_at_the_top_code_points,
    requests::unicode_keys_set_get_list,
    requests::key_of_255_characters_is_accepted_and_256_rejected,
    requests::key_length_counts_characters_not_bytes,
    errors::empty_body_is_invalid_json_on_every_op,
    errors::malformed_json_is_invalid_json,
    errors::invalid_utf8_is_invalid_json,
    errors::non_object_bodies_are_validation_errors,
    errors::missing_plugin_name_absent_null_or_empty_on_every_op,
    errors::missing_key_absent_null_or_empty_on_set_get_delete,
    errors::missing_value_only_when_absent,
    errors::missing_field_wins_over_validation_error,
    errors::missing_fields_are_reported_plugin_name_then_key_then_value,
    errors::validation_error_wins_over_value_too_large,
    errors::invalid_json_and_non_object_come_first,
    errors::wrong_types_for_key_and_plugin_name,
    errors::ttl_seconds_wrong_types_and_out_of_range,
    errors::list_limit_wrong_types_and_out_of_range,
    errors::list_limit_bounds_1_and_10000_are_accepted,
    errors::list_prefix_wrong_types,
    errors::plugin_name_pattern_rejections,
    errors::plugin_name_pattern_acceptances,
    errors::value_size_limit_is_65536_bytes_of_compact_json,
    errors::value_size_is_measured_on_the_compact_encoding,
    errors::value_size_counts_bytes_not_characters,
    requests::unknown_fields_are_ignored_on_all_ops,
    requests::delete_returns_true_then_false,
    requests::delete_of_a_missing_key_is_false,
    envelope::error_replies_carry_the_service_error_headers,
    envelope::success_replies_carry_no_error_headers,
    storage::five_hundred_concurrent_sets_all_land,
    storage::data_persists_across_a_service_restart,
    errors::corrupted_stored_value_is_a_generic_internal_error,
}
