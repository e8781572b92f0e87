//! Instructions per request, for the kv-service process alone, counted by valgrind's
//! callgrind: repeatable where wall-clock figures drift on a shared machine. For each of get,
//! set, list and delete at 16 in flight, the service runs under callgrind with instrumentation
//! off through start-up and the fill, on (`callgrind_control -i on`) for `N` requests of the
//! operation, off again before shutdown; the profile divided by `N` is what one request costs,
//! the NATS reads and writes, the batching and the commits included. Functions are grouped by
//! where they live: the NATS client (async-nats), JSON (serde_json parsing and rendering,
//! jsonschema, nats-rpc's schema and document modules), the nats-rpc runtime, the handler
//! (kv-service's api and value rules), the store (kv-service's store, sqlx, rusqlite), SQLite,
//! tokio, the allocator, and the rest. The background checkpoint (another connection, every
//! 500 ms) is counted too: under callgrind far fewer requests share each checkpoint than at
//! full speed, so it weighs more here than it does in service.
//!
//! Run: `cargo bench -p kv-service --bench instructions` (env: `BENCH_INSTR_REQUESTS`, default
//! 2000; `BENCH_INSTR_OPS`, default `get,set,list,delete`; `BENCH_INSTR_BACKENDS`, default
//! `sqlite`, or `sqlite,postgres` (a private cluster; PostgreSQL's own work is not counted);
//! `BENCH_INSTR_TOP` lists the 40 costliest functions; `BENCH_INSTR_DIR` keeps the profiles
//! there). Needs valgrind; takes a few minutes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use test_support::NatsServer;
use test_support::env_or;
use test_support::{Postgres, Service};

const IN_FLIGHT: u64 = 16;
const GROUPS: [&str; 10] = [
    "NATS client",
    "JSON",
    "nats-rpc",
    "handler",
    "store",
    "SQLite",
    "tokio",
    "allocator",
    "std/libc",
    "other",
];

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
        // The start-up fill: key `i` once each.
        "fill" => format!(
            r#"{{"plugin_name":"bench","key":"{}","value":"{i:0>128}"}}"#,
            key(i)
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
                let subject = if op == "fill" { "set" } else { op.as_str() };
                let reply = client
                    .request(format!("rosey.db.kv.{subject}"), request(&op, i, keys))
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
async fn profile(
    nats: &NatsServer,
    dir: &Path,
    backend: &Backend,
    op: &str,
    count: u64,
    keys: u64,
) -> String {
    let run = dir.join(format!("{}-{op}-{count}", backend.name()));
    std::fs::create_dir_all(&run).unwrap();
    let out = run.join("callgrind.out");
    let database = match backend {
        Backend::Sqlite => format!("sqlite://{}", run.join("kv.db").display()),
        Backend::Postgres(server) => server.create_database(&format!("kv_{op}_{count}")),
    };
    let out_flag = format!("--callgrind-out-file={}", out.display());
    let mut service = Service::spawn(
        "valgrind",
        &[
            "--tool=callgrind",
            "--instr-atstart=no",
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
    test_support::wait_for_service(&client, "kv-service").await;
    send(&client, "fill", keys, keys).await;
    instrument(service.pid(), "on");
    send(&client, op, count, keys).await;
    instrument(service.pid(), "off");
    service.terminate(Duration::from_secs(120));
    out.display().to_string()
}

fn instrument(pid: u32, state: &str) {
    let status = Command::new("callgrind_control")
        .args([format!("--instr={state}"), pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("callgrind_control runs");
    assert!(status.success(), "callgrind_control --instr={state} failed");
}

/// Exclusive instructions per function in a profile.
fn functions(profile: &str) -> BTreeMap<String, u64> {
    let output = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--threshold=100", "--auto=no", profile])
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
        if rest.starts_with("PROGRAM TOTALS") || rest.is_empty() || !rest.contains(':') {
            continue;
        }
        *costs.entry(rest.to_owned()).or_insert(0) += count;
    }
    costs
}

/// Which component a `file:function [object]` line of callgrind_annotate belongs to: by the
/// Rust crate its function names when it names one (code inlined from std keeps its caller's
/// name), else by its file (SQLite's and jemalloc's C functions, libc).
fn group(line: &str) -> &'static str {
    let (file, name) = line.split_once(':').unwrap_or(("", line));
    let name = name
        .trim_start_matches(['<', '&'])
        .trim_start_matches("mut ");
    let starts = |prefixes: &[&str]| prefixes.iter().any(|prefix| name.starts_with(prefix));
    if starts(&["async_nats"]) {
        "NATS client"
    } else if starts(&[
        "serde_json",
        "serde_core",
        "jsonschema",
        "referencing",
        "nats_rpc::schema",
        "nats_rpc::document",
        "fancy_regex",
        "regex",
        "indexmap",
    ]) {
        "JSON"
    } else if starts(&["nats_rpc"]) {
        "nats-rpc"
    } else if starts(&["kv_service::api", "kv_service::value"]) {
        "handler"
    } else if starts(&["kv_service", "sqlx", "libsqlite3_sys", "rusqlite"]) {
        "store"
    } else if starts(&["tokio", "futures", "bytes"]) {
        "tokio"
    } else if file.contains("libsqlite3-sys") {
        "SQLite"
    } else if file.contains("jemalloc") {
        "allocator"
    } else if starts(&["core::", "alloc::", "std::"])
        || file.contains("/rustc/")
        || file.contains("sysdeps")
        || file.contains("nptl")
        || line.contains("libc.so")
    {
        "std/libc"
    } else {
        "other"
    }
}

/// Which store the service runs on.
enum Backend {
    Sqlite,
    /// A private cluster (`fsync` and `synchronous_commit` on), a fresh database per profile.
    Postgres(Postgres),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
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
    let keys = count.max(10_000);
    let nats = NatsServer::start();
    // `BENCH_INSTR_DIR` keeps the profiles (`<dir>/<op>-<count>/callgrind.out`) for
    // `callgrind_annotate --tree=caller` and the like.
    let temp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("BENCH_INSTR_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temp.path().to_owned());
    let backends: Vec<Backend> = std::env::var("BENCH_INSTR_BACKENDS")
        .unwrap_or_else(|_| "sqlite".into())
        .split(',')
        .map(|name| match name.trim() {
            "sqlite" => Backend::Sqlite,
            "postgres" => Backend::Postgres(Postgres::start()),
            other => panic!("unknown backend {other} (sqlite, postgres)"),
        })
        .collect();
    println!(
        "instructions per request in the kv-service process (callgrind; {IN_FLIGHT} in flight; \
         {count} requests each over {keys} keys of 128 bytes)"
    );
    let mut header = format!("{:8} {:7} {:>9}", "store", "op", "total");
    for name in GROUPS {
        header.push_str(&format!(" {name:>14}"));
    }
    println!("{header}");
    for (backend, op) in backends
        .iter()
        .flat_map(|backend| ops.iter().map(move |op| (backend, op)))
    {
        let costs = functions(&profile(&nats, &dir, backend, op, count, keys).await);
        let mut by_group: BTreeMap<&str, u64> = BTreeMap::new();
        for (function, cost) in &costs {
            *by_group.entry(group(function)).or_insert(0) += cost;
        }
        if std::env::var_os("BENCH_INSTR_TOP").is_some() {
            let mut top: Vec<(&String, &u64)> = costs.iter().collect();
            top.sort_by(|a, b| b.1.cmp(a.1));
            for (function, cost) in top.iter().take(40) {
                println!(
                    "    {:>9.0} {:14} {function}",
                    **cost as f64 / count as f64,
                    group(function)
                );
            }
        }
        let per = |value: u64| value as f64 / count as f64;
        let total: u64 = by_group.values().sum();
        let mut line = format!("{:8} {op:7} {:>9.0}", backend.name(), per(total));
        for name in GROUPS {
            line.push_str(&format!(
                " {:>14.0}",
                per(by_group.get(name).copied().unwrap_or(0))
            ));
        }
        println!("{line}");
    }
}
