//! `--metrics-addr`: Prometheus text on /metrics and the health probe on /healthz, scraped with
//! a real HTTP client from a kv-service process, after traffic, under a locked database and
//! with NATS gone. When `promtool` is installed (`.ci/run` installs it; REQUIRE_PROMTOOL=1 makes
//! its absence a failure), the scrape must also pass `promtool check metrics`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::Locker;
use common::process::{Running, ready};
use serde_json::{Value, json};
use test_support::NatsServer;
use test_support::call;
use test_support::envelope;

/// One sample of the exposition text: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split(',')
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once('=').expect("label=value");
                            (key.to_owned(), value.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
            };
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

/// The value of the series `name{labels}` (exactly those labels), if present.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|sample| sample.name == name && sample.labels == want)
        .map(|sample| sample.value)
}

struct Ops {
    base: String,
    http: reqwest::Client,
}

impl Ops {
    fn new(port: u16) -> Ops {
        Ops {
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|err| panic!("GET {}{path}: {err:?}", self.base));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    async fn health(&self) -> (u16, Value) {
        let (status, body) = self.get("/healthz").await;
        (
            status,
            serde_json::from_str(&body).expect("JSON health body"),
        )
    }

    async fn scrape(&self) -> (String, Vec<Sample>) {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200, "{text}");
        let samples = parse(&text);
        (text, samples)
    }

    /// Polls /healthz until it answers `status` (within 15 s).
    async fn wait_health(&self, status: u16) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (now, body) = self.health().await;
            if now == status {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "/healthz stayed {now} ({body}), want {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// kv-service with metrics on a port the system picks (port 0), read back from its log: no
/// other test can take it in between.
fn start(nats: &NatsServer, env: &[(&str, &str)]) -> (Running, Ops) {
    let mut all = vec![("METRICS_ADDR", "127.0.0.1:0")];
    all.extend_from_slice(env);
    let service = Running::start_in(&nats.url(), tempfile::tempdir().unwrap(), &all);
    let announced = "serving /metrics and /healthz addr=127.0.0.1:";
    assert!(
        service.wait_for_log(announced, Duration::from_secs(20)),
        "{}",
        service.log()
    );
    let log = service.log();
    let port = log.split(announced).nth(1).unwrap();
    let port: u16 = port[..port
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(port.len())]
        .parse()
        .unwrap();
    (service, Ops::new(port))
}

/// `promtool check metrics` on the scrape, when promtool is there.
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => {
            assert!(
                std::env::var_os("REQUIRE_PROMTOOL").is_none(),
                "REQUIRE_PROMTOOL is set but promtool cannot run: {err}"
            );
            eprintln!("promtool not installed ({err}): skipping `promtool check metrics`");
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_traffic_and_healthz_follows_nats() {
    let mut nats = NatsServer::start();
    let (service, ops) = start(&nats, &[("PURGE_INTERVAL_SECS", "1")]);
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;

    let (status, body) = ops.health().await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"status": "ok", "nats": "connected", "database": "writable"})
        )
    );
    assert_eq!(
        ops.get("/livez").await,
        (200, "{\"status\":\"alive\"}\n".to_owned())
    );

    for n in 0..5 {
        let reply = call(
            &client,
            "set",
            json!({"plugin_name": "p", "key": format!("k{n}"), "value": n}),
        )
        .await;
        assert_eq!(reply["success"], true, "{reply}");
    }
    for _ in 0..3 {
        call(&client, "get", json!({"plugin_name": "p", "key": "k1"})).await;
    }
    let missing = call(&client, "get", json!({"plugin_name": "p"})).await;
    assert_eq!(missing["error"]["code"], "MISSING_FIELD");

    let (text, samples) = ops.scrape().await;
    let at = |name: &str, labels: &[(&str, &str)]| {
        value(&samples, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
    };
    let requests = "nats_rpc_requests_total";
    assert_eq!(at(requests, &[("endpoint", "set"), ("code", "OK")]), 5.0);
    assert_eq!(at(requests, &[("endpoint", "get"), ("code", "OK")]), 3.0);
    assert_eq!(
        at(requests, &[("endpoint", "get"), ("code", "MISSING_FIELD")]),
        1.0
    );
    // Every code an endpoint can reply with is there from the start, at 0.
    assert_eq!(
        at(requests, &[("endpoint", "delete"), ("code", "OVERLOADED")]),
        0.0
    );
    let duration = "nats_rpc_request_duration_seconds";
    assert_eq!(
        at(&format!("{duration}_count"), &[("endpoint", "set")]),
        5.0
    );
    assert_eq!(
        at(&format!("{duration}_count"), &[("endpoint", "get")]),
        4.0
    );
    assert!(at(&format!("{duration}_sum"), &[("endpoint", "set")]) > 0.0);
    assert_eq!(
        at(
            &format!("{duration}_bucket"),
            &[("endpoint", "set"), ("le", "+Inf")]
        ),
        5.0
    );
    assert_eq!(
        at("nats_rpc_requests_in_flight", &[("endpoint", "set")]),
        0.0
    );
    // Five sets and the probe write (or more) committed, in one or more batches.
    assert!(at("kv_store_batch_writes_sum", &[]) >= 6.0, "{text}");
    assert!(at("kv_store_batch_writes_count", &[]) >= 1.0, "{text}");
    assert!(at("kv_store_commit_seconds_count", &[]) >= 1.0, "{text}");
    assert_eq!(at("kv_mirror_enabled", &[]), 1.0);
    assert_eq!(at("kv_mirror_keys", &[]), 5.0);
    assert!(at("kv_mirror_bytes", &[]) > 0.0);
    assert_eq!(at("kv_nats_connected", &[]), 1.0);
    // Registered before the first purge; nothing has expired yet.
    assert_eq!(at("kv_store_purged_keys_total", &[]), 0.0);
    assert_eq!(at("kv_store_purge_failures_total", &[]), 0.0);
    assert_eq!(at("kv_nats_connects_total", &[]), 1.0);
    let info = samples
        .iter()
        .find(|sample| sample.name == "kv_store_info")
        .unwrap_or_else(|| panic!("no kv_store_info in\n{text}"));
    assert_eq!(info.labels["backend"], "sqlite");
    assert_eq!(info.labels["store_id"].len(), 32);
    assert!(text.contains("# HELP nats_rpc_requests_total "), "{text}");
    assert!(text.contains("# TYPE nats_rpc_request_duration_seconds histogram"));
    promtool_check(&text);

    // A key that expires: the purge (every second here) deletes it and counts it.
    let ttl = json!({"plugin_name": "p", "key": "brief", "value": 1, "ttl_seconds": 1});
    assert_eq!(call(&client, "set", ttl).await["success"], true);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, samples) = ops.scrape().await;
        if value(&samples, "kv_store_purged_keys_total", &[]) == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the purge never counted the expired key"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // NATS gone: 503, saying so; back: 200, and the connect counter moved.
    nats.stop();
    let down = ops.wait_health(503).await;
    assert_eq!(down["status"], "unavailable");
    let reason = down["reason"].as_str().unwrap();
    assert!(reason.starts_with("NATS: not connected"), "{reason}");
    // Liveness does not follow NATS: the process is fine and will reconnect by itself.
    assert_eq!(ops.get("/livez").await.0, 200);
    let (_, samples) = ops.scrape().await;
    assert_eq!(value(&samples, "kv_nats_connected", &[]), Some(0.0));
    nats.restart();
    ops.wait_health(200).await;
    let (_, samples) = ops.scrape().await;
    assert_eq!(value(&samples, "kv_nats_connected", &[]), Some(1.0));
    assert!(value(&samples, "kv_nats_connects_total", &[]).unwrap() >= 2.0);
    drop(service);
}

/// The purge task: a purge that fails (the database locked by another process past the
/// writer's busy timeout) is logged and counted, the service keeps answering, and the next
/// purge after the lock is released removes the expired key and logs how many rows it removed
/// and how long it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_purge_is_logged_and_retried_and_never_stops_the_service() {
    let nats = NatsServer::start();
    let (service, ops) = start(&nats, &[("PURGE_INTERVAL_SECS", "1")]);
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;
    let set = |key: &str, ttl: Option<u32>| {
        let mut body = json!({"plugin_name": "p", "key": key, "value": 1});
        if let Some(ttl) = ttl {
            body["ttl_seconds"] = ttl.into();
        }
        call(&client, "set", body)
    };
    assert_eq!(set("brief", Some(1)).await["success"], true);
    assert_eq!(set("kept", None).await["success"], true);
    let locker = Locker::lock(&service.dir.path().join("kv.db")).await;

    let failed = "purge failed, retrying at the next interval";
    assert!(
        service.wait_for_log(failed, Duration::from_secs(10)),
        "{}",
        service.log()
    );
    let (_, samples) = ops.scrape().await;
    assert!(value(&samples, "kv_store_purge_failures_total", &[]).unwrap() >= 1.0);
    assert_eq!(
        value(&samples, "kv_store_purged_keys_total", &[]),
        Some(0.0)
    );
    // Still serving: reads answer while the lock is held.
    assert_eq!(
        call(&client, "get", json!({"plugin_name": "p", "key": "kept"})).await,
        envelope::found(json!(1))
    );

    locker.release().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = service.log();
        let after = &log[log.find(failed).unwrap()..];
        if let Some(line) = after
            .lines()
            .find(|line| line.contains("purged expired keys") && line.contains("purged=1"))
        {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no purge after the lock:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(line.contains("elapsed_ms="), "{line}");
    let (_, samples) = ops.scrape().await;
    assert_eq!(
        value(&samples, "kv_store_purged_keys_total", &[]),
        Some(1.0)
    );
    assert_eq!(set("after", None).await["success"], true);
    assert_eq!(
        call(&client, "list", json!({"plugin_name": "p"})).await,
        envelope::success(json!({"keys": ["after", "kept"], "count": 2, "truncated": false}))
    );
    drop(service);
}

/// The database held locked by another process: /healthz says it cannot write (503, within
/// its 2 s probe timeout), a queued write past its deadline is dropped and counted, a request
/// past the in-flight bound is counted as shed; released, /healthz is 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_an_unwritable_database_and_metrics_count_shed_work() {
    let nats = NatsServer::start();
    let (service, ops) = start(&nats, &[("MAX_IN_FLIGHT", "2")]);
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;
    ops.wait_health(200).await;

    let path = service.dir.path().join("kv.db");
    let locker = Locker::lock(&path).await;

    let set = |key: &'static str, timeout_ms: &'static str| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Rpc-Timeout-Ms", timeout_ms);
            let body = json!({"plugin_name": "p", "key": key, "value": 1}).to_string();
            let reply = client
                .request_with_headers("rosey.db.kv.set", headers, body.into())
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&reply.payload).unwrap()
        })
    };
    // `stuck` holds the writer on the lock; `late` waits behind it and outlives its 300 ms.
    let stuck = set("stuck", "10000");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = set("late", "300");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shed = call(&client, "get", json!({"plugin_name": "p", "key": "x"})).await;
    assert_eq!(shed["error"]["code"], "OVERLOADED", "{shed}");

    let started = Instant::now();
    let (status, body) = ops.health().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body["reason"], "database: a write did not commit within 2000 ms",
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(4));

    let late = late.await.unwrap();
    assert_eq!(late["error"]["code"], "TIMEOUT", "{late}");
    locker.release().await;
    stuck.await.unwrap();
    ops.wait_health(200).await;

    let (text, samples) = ops.scrape().await;
    let at = |name: &str, labels: &[(&str, &str)]| {
        value(&samples, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
    };
    assert_eq!(at("kv_store_writes_expired_total", &[]), 1.0);
    assert_eq!(
        at(
            "nats_rpc_requests_total",
            &[("endpoint", "set"), ("code", "TIMEOUT")]
        ),
        1.0
    );
    assert_eq!(
        at(
            "nats_rpc_requests_shed_total",
            &[("endpoint", "get"), ("reason", "overloaded")]
        ),
        1.0
    );
    assert_eq!(
        at(
            "nats_rpc_requests_total",
            &[("endpoint", "get"), ("code", "OVERLOADED")]
        ),
        1.0
    );
    promtool_check(&text);
    drop(service);
}

/// A metrics port already taken stops the start with a reason, before anything else.
#[tokio::test]
async fn a_taken_metrics_port_refuses_to_start() {
    let nats = NatsServer::start();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut service = Running::start_in(
        &nats.url(),
        tempfile::tempdir().unwrap(),
        &[("METRICS_ADDR", addr.as_str())],
    );
    let (status, log) = service.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!("cannot serve metrics on {addr}")),
        "{log}"
    );
    assert!(
        !service.dir.path().join("kv.db").exists(),
        "nothing was created before the refusal"
    );
}
