//! The rosey.db.kv wire contract (../shared/CONTRACT.md), row by row, over a real nats-server
//! and a real SQLite file.

mod common;

use common::{Harness, failure, success};
use serde_json::json;

#[tokio::test]
async fn set_then_get_round_trips() {
    let kv = Harness::start().await;
    let set = kv
        .call("set", json!({"plugin_name": "p", "key": "k", "value": {"theme": "dark"}}))
        .await;
    assert_eq!(set, success(json!({})));
    let get = kv.call("get", json!({"plugin_name": "p", "key": "k"})).await;
    assert_eq!(get, success(json!({"exists": true, "value": {"theme": "dark"}})));
}
