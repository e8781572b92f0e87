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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zz_probe() {
    let kv = Harness::start().await;
    let bodies: Vec<(&str, &[u8])> = vec![
        ("set", b"" as &[u8]),
        ("set", b"\xff\xfe"),
        ("set", b"{\"plugin_name\":\"p\",\"key\":\"k\",\"value\":1e400}"),
        ("set", b"[]"), ("set", b"5"), ("set", b"\"s\""), ("set", b"null"), ("set", b"true"),
        ("set", br#"{"plugin_name":"p","key":123,"value":1}"#),
        ("set", br#"{"plugin_name":5,"key":"k","value":1}"#),
        ("set", br#"{"plugin_name":"p","key":"k","value":1,"ttl_seconds":"5"}"#),
        ("set", br#"{"plugin_name":"p","key":"k","value":1,"ttl_seconds":true}"#),
        ("set", br#"{"plugin_name":"p","key":"k","value":1,"ttl_seconds":1.5}"#),
        ("set", br#"{"plugin_name":"p","key":"k","value":1,"ttl_seconds":1.0}"#),
        ("set", br#"{"plugin_name":"p","key":"k","value":1,"ttl_seconds":0}"#),
        ("set", br#"{"plugin_name":"p","key":"k","value":1,"ttl_seconds":-1}"#),
        ("set", br#"{"plugin_name":"p","key":"k","value":1,"ttl_seconds":2147483648}"#),
        ("set", br#"{"plugin_name":"p","key":"k","value":1,"ttl_seconds":99999999999999999999}"#),
        ("list", br#"{"plugin_name":"p","limit":0}"#),
        ("list", br#"{"plugin_name":"p","limit":10001}"#),
        ("list", br#"{"plugin_name":"p","limit":"5"}"#),
        ("list", br#"{"plugin_name":"p","limit":null}"#),
        ("list", br#"{"plugin_name":"p","prefix":5}"#),
        ("list", br#"{"plugin_name":"p","prefix":null}"#),
        ("set", br#"{"plugin_name":"P","key":"k","value":1}"#),
        ("set", br#"{"plugin_name":"p\n","key":"k","value":1}"#),
        ("set", br#"{"plugin_name":"p","key":"k\n","value":1}"#),
        ("get", br#"{"plugin_name":"p","key":["k"]}"#),
        ("set", br#"{"plugin_name":"p","key":"k","value":1,"ttl_seconds":null}"#),
    ];
    for (op, body) in bodies {
        let r = kv.raw(&format!("rosey.db.kv.{op}"), bytes::Bytes::copy_from_slice(body)).await;
        println!("{op} {:?} => {} | {:?} {:?}", String::from_utf8_lossy(body), r.body, r.error_header, r.error_code_header);
    }
    let long = "a".repeat(256);
    let r = kv.call("set", json!({"plugin_name":"p","key":long,"value":1})).await;
    println!("{r}");
    let r = kv.call("set", json!({"plugin_name":"a".repeat(101),"key":"k","value":1})).await;
    println!("{r}");
    let r = kv.call("set", json!({"plugin_name":"p","key":"k","value":"x".repeat(65535)})).await;
    println!("{r}");
    let r = kv.call("set", json!({"plugin_name":"p","key":"😀".repeat(256),"value":1})).await;
    println!("{r}");
}
