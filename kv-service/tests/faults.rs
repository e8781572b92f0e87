//! Faults with real processes: kill -9 under concurrent writers loses nothing that was
//! acknowledged, and a burst far past the in-flight bound gets a reply for every request.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{Running, ready};
use common::{Locker, Reply};
use serde_json::{Value, json};
use test_support::NatsServer;
use test_support::call;
use test_support::envelope;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_16_writers_loses_no_acknowledged_set() {
    let nats = NatsServer::start();
    let service = Running::start(&nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;

    let acknowledged: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let mut writers = Vec::new();
    for writer in 0..16 {
        let client = client.clone();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0_u64;
            // Keeps writing through the kill; only replies count.
            while Instant::now() < stop_at + Duration::from_millis(500) {
                let key = format!("w{writer}-{}", n % 50);
                let body = json!({"plugin_name": "crash", "key": key, "value": n});
                let reply = tokio::time::timeout(
                    Duration::from_millis(500),
                    client.request("rosey.db.kv.set", body.to_string().into()),
                )
                .await;
                if let Ok(Ok(reply)) = reply {
                    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
                    if reply == envelope::ok() {
                        acknowledged.lock().unwrap().push((key, n));
                    }
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep_until((stop_at).into()).await;
    let dir = service.kill9();
    for writer in writers {
        writer.await.unwrap();
    }

    // The last acknowledged value of every key must be there after a restart.
    let mut expected = std::collections::BTreeMap::new();
    let acknowledged = acknowledged.lock().unwrap().clone();
    for (key, n) in &acknowledged {
        let latest = expected.entry(key.clone()).or_insert(*n);
        *latest = (*latest).max(*n);
    }
    let _restarted = Running::start_in(&nats.url(), dir, &[]);
    ready(&client).await;
    let mut lost = Vec::new();
    for (key, n) in &expected {
        let reply = call(&client, "get", json!({"plugin_name": "crash", "key": key})).await;
        // A write sent before the kill but never acknowledged may also have landed, so the
        // stored value is the last acknowledged one or a later one.
        let stored = reply["data"]["value"].as_u64();
        if reply["data"]["exists"] != true || stored < Some(*n) {
            lost.push((key.clone(), *n, reply));
        }
    }
    println!(
        "kill -9: {} sets acknowledged over {} keys, {} lost",
        acknowledged.len(),
        expected.len(),
        lost.len()
    );
    assert!(
        acknowledged.len() > 100,
        "the writers got going: {}",
        acknowledged.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_5000_in_flight_gets_a_reply_for_every_request() {
    let nats = NatsServer::start();
    let service = Running::start(&nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;

    let started = Instant::now();
    let mut requests = Vec::with_capacity(5000);
    for i in 0..5000 {
        let client = client.clone();
        requests.push(tokio::spawn(async move {
            let body = json!({"plugin_name": "burst", "key": format!("k{i}"), "value": i});
            let reply = tokio::time::timeout(
                Duration::from_secs(10),
                client.request("rosey.db.kv.set", body.to_string().into()),
            )
            .await;
            match reply {
                Ok(Ok(reply)) => Reply::checked(&reply),
                Ok(Err(err)) => json!({"request failed": err.to_string()}),
                Err(_) => json!("timed out"),
            }
        }));
    }
    let (mut ok, mut overloaded, mut other) = (0, 0, Vec::new());
    for request in requests {
        let reply = request.await.unwrap();
        if reply == envelope::ok() {
            ok += 1;
        } else if reply["error"]["code"] == "OVERLOADED" {
            assert_eq!(
                reply["error"]["message"],
                "Service overloaded: 512 requests already in flight, retry later"
            );
            overloaded += 1;
        } else {
            other.push(reply);
        }
    }
    let peak_mib = service.peak_rss_kib() as f64 / 1024.0;
    println!(
        "burst of 5000: {ok} stored, {overloaded} OVERLOADED, {} other, in {:?}; peak RSS {peak_mib:.1} MiB",
        other.len(),
        started.elapsed()
    );
    assert!(
        other.is_empty(),
        "every request gets success or OVERLOADED: {:?}",
        &other[..other.len().min(5)]
    );
    assert_eq!(ok + overloaded, 5000);
    assert!(ok > 0);
    assert!(peak_mib < 96.0, "memory stays bounded: {peak_mib:.1} MiB");
    // What was acknowledged is there.
    let listing = call(
        &client,
        "list",
        json!({"plugin_name": "burst", "limit": 10000}),
    )
    .await;
    assert_eq!(listing["data"]["count"], ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_answers_internal_error_and_recovers_when_released() {
    let nats = NatsServer::start();
    let service = Running::start(&nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;
    let set = |key: &'static str| {
        let client = client.clone();
        async move {
            call(
                &client,
                "set",
                json!({"plugin_name": "p", "key": key, "value": key}),
            )
            .await
        }
    };
    assert_eq!(set("before").await, envelope::ok());

    // Another process takes the write lock and keeps it.
    let path = service.dir.path().join("kv.db");
    let locker = Locker::lock(&path).await;
    let started = Instant::now();
    assert_eq!(set("during").await, envelope::internal_error());
    println!(
        "locked write answered INTERNAL_ERROR after {:?}",
        started.elapsed()
    );
    // Reads keep working, and the failed write left no trace.
    assert_eq!(
        call(&client, "get", json!({"plugin_name": "p", "key": "before"})).await,
        envelope::found(json!("before"))
    );
    assert_eq!(
        call(&client, "get", json!({"plugin_name": "p", "key": "during"})).await,
        envelope::absent()
    );

    locker.release().await;
    assert_eq!(set("after").await, envelope::ok());
    assert_eq!(
        call(&client, "list", json!({"plugin_name": "p"})).await,
        envelope::success(json!({"keys": ["after", "before"], "count": 2, "truncated": false}))
    );
}

/// A set with `Rpc-Timeout-Ms: timeout_ms` (none if `None`), and when its reply came.
async fn timed_set(
    client: &async_nats::Client,
    key: &str,
    timeout_ms: Option<u64>,
) -> (Value, Duration) {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(ms) = timeout_ms {
        headers.insert("Rpc-Timeout-Ms", ms.to_string().as_str());
    }
    let body = json!({"plugin_name": "p", "key": key, "value": key}).to_string();
    let started = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request_with_headers("rosey.db.kv.set", headers, body.into()),
    )
    .await
    .expect("a reply")
    .unwrap();
    (Reply::checked(&reply), started.elapsed())
}

fn timeout_reply(ms: u64) -> Value {
    envelope::failure(
        "TIMEOUT",
        &format!("Request deadline of {ms} ms passed before it was handled; nothing was done"),
    )
}

/// Writes queued behind a stuck commit: one whose deadline passes while it waits is never
/// applied and answers TIMEOUT; one whose commit already started is reported committed, late
/// as it is. The header sets the deadline, or the service's default (`REQUEST_TIMEOUT_MS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_not_committed_by_its_deadline_is_dropped_and_a_committed_one_is_success() {
    let nats = NatsServer::start();
    let service = Running::start_in(
        &nats.url(),
        tempfile::tempdir().unwrap(),
        &[("REQUEST_TIMEOUT_MS", "400")],
    );
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;
    let path = service.dir.path().join("kv.db");

    // The writer is stuck on the lock (up to its 2 s busy timeout) with `first`.
    let locker = Locker::lock(&path).await;
    let first = tokio::spawn({
        let client = client.clone();
        async move { timed_set(&client, "first", None).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (queued, with_header) = tokio::join!(
        timed_set(&client, "queued", Some(300)),
        timed_set(&client, "defaulted", None),
    );
    println!(
        "behind a stuck commit: {:?} after {:?}; {:?} after {:?}",
        queued.0, queued.1, with_header.0, with_header.1
    );
    assert_eq!(queued.0, timeout_reply(300));
    assert_eq!(with_header.0, timeout_reply(400), "the service default");
    let (first, _) = first.await.unwrap();
    assert_eq!(
        first["error"]["code"], "INTERNAL_ERROR",
        "the lock outlived the busy timeout"
    );
    locker.release().await;
    for key in ["queued", "defaulted"] {
        assert_eq!(
            call(&client, "get", json!({"plugin_name": "p", "key": key})).await,
            envelope::absent(),
            "{key}: nothing was done"
        );
    }

    // Taken by the writer in time, committed after its deadline: success, and there.
    let locker = Locker::lock(&path).await;
    let late = tokio::spawn({
        let client = client.clone();
        async move { timed_set(&client, "late", Some(300)).await }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    locker.release().await;
    let (reply, took) = late.await.unwrap();
    println!("committed after its 300 ms deadline: {reply} after {took:?}");
    assert_eq!(reply, envelope::ok());
    assert!(took > Duration::from_millis(300), "{took:?}");
    assert_eq!(
        call(&client, "get", json!({"plugin_name": "p", "key": "late"})).await,
        envelope::found(json!("late"))
    );

    // STATS count them as errors.
    let stats = client
        .request("$SRV.STATS.kv-service", "".into())
        .await
        .unwrap();
    let stats: Value = serde_json::from_slice(&stats.payload).unwrap();
    let set = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|endpoint| endpoint["name"] == "set")
        .unwrap()
        .clone();
    assert_eq!(set["num_errors"], 3, "{set}");
}
