//! Instructions per request, for the kv-service process alone (SQLite), counted by valgrind's
//! callgrind: repeatable where wall-clock figures drift on a shared machine. For each of get,
//! set, list and delete at 16 in flight, the service runs twice under callgrind, serving the
//! same start-up and fill and then `N` or `2N` requests of the operation; the difference of the
//! two runs, per function, divided by `N`, is what one request costs. Functions are grouped by
//! where they live: the NATS client (async-nats), parse and validate (serde_json, jsonschema,
//! nats-rpc's schema module), the nats-rpc runtime, the handler (kv-service's api), the store
//! (kv-service's store, sqlx), SQLite, tokio, the allocator, and the rest.
//!
//! Run: `cargo bench -p kv-service --bench instructions` (env: `BENCH_INSTR_REQUESTS`, default
//! 2000; `BENCH_INSTR_OPS`, default `get,set,list,delete`). Needs valgrind; takes a few minutes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use kv_service::testing::Service;
use nats_rpc::testing::NatsServer;

const IN_FLIGHT: u64 = 16;
const GROUPS: [&str; 10] = [
    "NATS client",
    "parse/validate",
    "nats-rpc",
    "handler",
    "store+sqlx",
    "SQLite",
    "tokio",
    "allocator",
    "std/libc",
    "other",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn key(i: u64) -> String {
    format!("key-{i:05}")
}

fn request(op: &str, i: u64, keys: u64) -> Bytes {
    let body = match op {
        "get" => format!(
            r#"{{"plugin_name":"bench","key":"{}"}}"#,
            key(i.wrapping_mul(7919) % keys)
        ),
        "set" => format!(
            r#"{{"plugin_name":"bench","key":"{}","value":"{:0>128}"}}"#,
            key(i.wrapping_mul(7919) % keys),
            i + 1_000_000_000
        ),
        "list" => format!(
            r#"{{"plugin_name":"bench","prefix":"key-0{:02}","limit":100}}"#,
            i.wrapping_mul(31) % 100
        ),
        // Every delete finds its key: the fill made them, none repeats.
        "delete" => format!(r#"{{"plugin_name":"bench","key":"{}"}}"#, key(i)),
        other => panic!("unknown op {other}"),
    };
    body.into()
}

/// `count` requests, `IN_FLIGHT` at a time; panics on an error reply (it would skew the count).
async fn send(client: &async_nats::Client, op: &str, count: u64, keys: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let client = client.clone();
        let next = next.clone();
        let op = op.to_owned();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return;
                }
                let reply = client
                    .request(format!("rosey.db.kv.{op}"), request(&op, i, keys))
                    .await
                    .expect("a reply");
                assert!(
                    reply.payload.starts_with(br#"{"success":true"#),
                    "{op} failed: {}",
                    String::from_utf8_lossy(&reply.payload)
                );
            }
        }));
    }
    for worker in workers {
        worker.await.expect("worker");
    }
}

/// Runs kv-service under callgrind: start, fill `keys` keys, `count` requests of `op`, stop.
/// Returns the profile's path.
async fn profile(nats: &NatsServer, dir: &Path, op: &str, count: u64, keys: u64) -> String {
    let run = dir.join(format!("{op}-{count}"));
    std::fs::create_dir_all(&run).unwrap();
    let out = run.join("callgrind.out");
    let database = format!("sqlite://{}", run.join("kv.db").display());
    let out_flag = format!("--callgrind-out-file={}", out.display());
    let mut service = Service::spawn(
        "valgrind",
        &[
            "--tool=callgrind",
            out_flag.as_str(),
            env!("CARGO_BIN_EXE_kv-service"),
        ],
        &[
            ("NATS_URL", nats.url().as_str()),
            ("DATABASE_URL", database.as_str()),
            ("RUST_LOG", "warn"),
            ("PURGE_INTERVAL_SECS", "3600"),
        ],
    );
    let client = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(60)))
        .connect(nats.url())
        .await
        .unwrap();
    nats_rpc::testing::wait_for_service(&client, "kv-service").await;
    fill(&client, keys).await;
    send(&client, op, count, keys).await;
    service.terminate(Duration::from_secs(120));
    out.display().to_string()
}

async fn fill(client: &async_nats::Client, keys: u64) {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let client = client.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return;
                }
                let body = format!(
                    r#"{{"plugin_name":"bench","key":"{}","value":"{i:0>128}"}}"#,
                    key(i)
                );
                client
                    .request("rosey.db.kv.set", body.into())
                    .await
                    .expect("fill");
            }
        }));
    }
    for worker in workers {
        worker.await.expect("fill worker");
    }
}

/// Exclusive instructions per function in a profile.
fn functions(profile: &str) -> BTreeMap<String, u64> {
    let output = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--threshold=100", profile])
        .output()
        .expect("callgrind_annotate runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut costs = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((count, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        // `123 (1.0%)  file:function [object]` or `123  file:function [object]`.
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('(') {
            Some(after) => after.split_once(')').map_or(after, |(_, r)| r).trim_start(),
            None => rest,
        };
        if rest.starts_with("PROGRAM TOTALS") || rest.is_empty() {
            continue;
        }
        *costs.entry(rest.to_owned()).or_insert(0) += count;
    }
    costs
}

fn group(function: &str) -> &'static str {
    let name = function
        .split_once(':')
        .map_or(function, |(_, name)| name)
        .trim_start_matches('<');
    let has = |needle: &str| name.contains(needle);
    if name.starts_with("sqlite3") || has("libsqlite3") || name.starts_with("pcache") {
        "SQLite"
    } else if name.starts_with("async_nats") {
        "NATS client"
    } else if name.starts_with("serde_json")
        || name.starts_with("jsonschema")
        || name.starts_with("referencing")
        || name.starts_with("nats_rpc::schema")
        || name.starts_with("fancy_regex")
        || name.starts_with("regex")
    {
        "parse/validate"
    } else if name.starts_with("nats_rpc") {
        "nats-rpc"
    } else if name.starts_with("kv_service::api") {
        "handler"
    } else if name.starts_with("kv_service") || name.starts_with("sqlx") {
        "store+sqlx"
    } else if name.starts_with("tokio") || name.starts_with("futures") {
        "tokio"
    } else if has("jemalloc") || name.starts_with("_rjem") || name.starts_with("je_") {
        "allocator"
    } else if name.starts_with("core::")
        || name.starts_with("alloc::")
        || name.starts_with("std::")
        || name.starts_with("__mem")
        || name.starts_with("mem")
        || name.starts_with("str")
        || has("libc.so")
    {
        "std/libc"
    } else {
        "other"
    }
}

fn main() {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}

async fn run() {
    let count: u64 = env_or("BENCH_INSTR_REQUESTS", 2000);
    let ops: Vec<String> = std::env::var("BENCH_INSTR_OPS")
        .unwrap_or_else(|_| "get,set,list,delete".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let keys = 2 * count + 10_000;
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    println!(
        "instructions per request in the kv-service process (callgrind; SQLite; {IN_FLIGHT} in flight; \
         ({count} - {count} extra requests) / {count}; {keys} keys)"
    );
    let mut header = format!("{:7} {:>9}", "op", "total");
    for name in GROUPS {
        header.push_str(&format!(" {name:>14}"));
    }
    println!("{header}");
    for op in &ops {
        let small = functions(&profile(&nats, dir.path(), op, count, keys).await);
        let large = functions(&profile(&nats, dir.path(), op, 2 * count, keys).await);
        let mut by_group: BTreeMap<&str, i64> = BTreeMap::new();
        for (function, cost) in &large {
            let base = small.get(function).copied().unwrap_or(0);
            *by_group.entry(group(function)).or_insert(0) += *cost as i64 - base as i64;
        }
        for (function, cost) in &small {
            if !large.contains_key(function) {
                *by_group.entry(group(function)).or_insert(0) -= *cost as i64;
            }
        }
        let per = |value: i64| value as f64 / count as f64;
        let total: i64 = by_group.values().sum();
        let mut line = format!("{op:7} {:>9.0}", per(total));
        for name in GROUPS {
            line.push_str(&format!(
                " {:>14.0}",
                per(by_group.get(name).copied().unwrap_or(0))
            ));
        }
        println!("{line}");
    }
}
