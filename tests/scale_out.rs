//! Several kv-service processes on one PostgreSQL database, in one queue group: every write
//! acknowledged by any instance is what every later request to any instance sees, and expiry is
//! one clock's (the database's) however far the instances' own clocks disagree.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, instance, request, wait_for_instances};
use serde_json::json;
use test_support::NatsServer;
use test_support::Postgres;
use test_support::call;
use test_support::envelope::{absent, found, ok};

/// 3 instances, 16 clients writing for 3 s with a read-back of each write right after its
/// acknowledgement (NATS sends it to any of the three); then every acknowledged write read
/// back through the queue group with its exact value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_16_clients_every_acknowledged_write_is_read_back_exactly() {
    let postgres = Postgres::start();
    let nats = NatsServer::start();
    let _instances: Vec<_> = (0..3)
        .map(|_| instance(&nats.url(), &postgres.url(), &[]))
        .collect();
    let kv = client(&nats.url()).await;
    wait_for_instances(&kv, 3).await;

    let acknowledged: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let stale: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_secs(3);
    let mut clients = Vec::new();
    for client in 0..16 {
        let kv = kv.clone();
        let (acknowledged, stale) = (acknowledged.clone(), stale.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0_u64;
            while Instant::now() < stop_at {
                let key = format!("c{client}-{}", n % 40);
                let body = json!({"plugin_name": "scale", "key": key, "value": {"n": n, "pad": "x".repeat(64)}});
                if call(&kv, "set", body).await == ok() {
                    acknowledged.lock().unwrap().insert(key.clone(), n);
                    let read = call(&kv, "get", json!({"plugin_name": "scale", "key": key})).await;
                    if read["data"]["value"]["n"] != n {
                        stale.lock().unwrap().push(format!("{key}: wrote {n}, read {read}"));
                    }
                }
                n += 1;
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    let stale = stale.lock().unwrap().clone();
    assert!(
        stale.is_empty(),
        "reads after an acknowledged write missed it: {stale:?}"
    );

    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 16 * 40,
        "every client covered its keys: {}",
        acknowledged.len()
    );
    let mut wrong = Vec::new();
    for (key, n) in &acknowledged {
        let reply = call(&kv, "get", json!({"plugin_name": "scale", "key": key})).await;
        if reply != found(json!({"n": n, "pad": "x".repeat(64)})) {
            wrong.push((key.clone(), *n, reply));
        }
    }
    assert!(
        wrong.is_empty(),
        "acknowledged writes not read back exactly: {wrong:?}"
    );
    let listing = call(&kv, "list", json!({"plugin_name": "scale", "limit": 10000})).await;
    assert_eq!(listing["data"]["count"], acknowledged.len());

    // The three shared the work.
    let instances = nats_rpc::discover(&kv, "kv-service", Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(instances.len(), 3);
    let stats = stats_by_instance(&kv).await;
    println!(
        "requests per instance: {stats:?}; {} keys acknowledged",
        acknowledged.len()
    );
    assert_eq!(stats.len(), 3);
    assert!(stats.values().all(|&requests| requests > 100), "{stats:?}");
}

/// `id -> requests served` from `$SRV.STATS.kv-service`.
async fn stats_by_instance(client: &async_nats::Client) -> BTreeMap<String, u64> {
    use futures_util::StreamExt;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply("$SRV.STATS.kv-service", inbox, "".into())
        .await
        .unwrap();
    let mut stats = BTreeMap::new();
    while let Ok(Some(reply)) =
        tokio::time::timeout(Duration::from_millis(500), replies.next()).await
    {
        let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        let served: u64 = body["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|endpoint| endpoint["num_requests"].as_u64().unwrap())
            .sum();
        stats.insert(body["id"].as_str().unwrap().to_owned(), served);
    }
    stats
}

/// Deterministic cross-instance reads: instance A on one NATS server, instance B on another,
/// one database. Whatever A acknowledges, B's very next get, list and delete see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_instance_acknowledges_the_other_sees_at_once() {
    let postgres = Postgres::start();
    let (nats_a, nats_b) = (NatsServer::start(), NatsServer::start());
    let _a = instance(&nats_a.url(), &postgres.url(), &[]);
    let _b = instance(&nats_b.url(), &postgres.url(), &[]);
    let (a, b) = (client(&nats_a.url()).await, client(&nats_b.url()).await);
    wait_for_instances(&a, 1).await;
    wait_for_instances(&b, 1).await;
    for i in 0..200 {
        let key = format!("k{i:03}");
        let set = json!({"plugin_name": "p", "key": key, "value": i, "ttl_seconds": 3600});
        assert_eq!(call(&a, "set", set).await, ok());
        assert_eq!(
            call(&b, "get", json!({"plugin_name": "p", "key": key})).await,
            found(json!(i))
        );
        let listed = call(&b, "list", json!({"plugin_name": "p", "prefix": key})).await;
        assert_eq!(listed["data"]["keys"], json!([key]));
        if i % 2 == 0 {
            let deleted = call(&b, "delete", json!({"plugin_name": "p", "key": key})).await;
            assert_eq!(deleted["data"]["deleted"], true);
            assert_eq!(
                call(&a, "get", json!({"plugin_name": "p", "key": key})).await,
                absent()
            );
        }
    }
    let listing = call(&a, "list", json!({"plugin_name": "p"})).await;
    assert_eq!(listing["data"]["count"], 100);
}

/// Instance A's clock runs an hour fast and B's an hour slow: a key set through A with a 2 s
/// TTL is live for both, then expired for both, 2 s after it was written by the database's
/// clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_with_skewed_clocks_agree_on_expiry() {
    let postgres = Postgres::start();
    let (nats_a, nats_b) = (NatsServer::start(), NatsServer::start());
    let _a = instance(
        &nats_a.url(),
        &postgres.url(),
        &[("KV_CLOCK_OFFSET_MS", "3600000")],
    );
    let _b = instance(
        &nats_b.url(),
        &postgres.url(),
        &[("KV_CLOCK_OFFSET_MS", "-3600000")],
    );
    let (a, b) = (client(&nats_a.url()).await, client(&nats_b.url()).await);
    wait_for_instances(&a, 1).await;
    wait_for_instances(&b, 1).await;
    let written = Instant::now();
    let set = json!({"plugin_name": "p", "key": "k", "value": "v", "ttl_seconds": 2});
    assert_eq!(call(&a, "set", set).await, ok());
    let get = json!({"plugin_name": "p", "key": "k"});
    for kv in [&a, &b] {
        assert_eq!(call(kv, "get", get.clone()).await, found(json!("v")));
    }
    tokio::time::sleep_until((written + Duration::from_millis(2100)).into()).await;
    for kv in [&a, &b] {
        assert_eq!(call(kv, "get", get.clone()).await, absent());
        let listed = call(kv, "list", json!({"plugin_name": "p"})).await;
        assert_eq!(listed["data"]["count"], 0);
    }
    // Nor is there anything to delete.
    let outcome = request(&b, "delete", get, Duration::from_secs(5)).await;
    assert_eq!(outcome.body()["data"]["deleted"], false);
}
