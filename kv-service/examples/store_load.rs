//! The store alone, without NATS: how many sets per second the group-commit writer sustains
//! with N concurrent writers, to tell storage cost from messaging cost.
//!
//! Run: `cargo run --release -p kv-service --example store_load -- [writers] [seconds]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kv_service::store::{Store, StoreOptions, Value};
use serde_json::value::RawValue;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let writers: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let seconds: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("kv.db").display());
    let store = Arc::new(Store::open(&StoreOptions::new(url)).await.expect("open"));
    let counter = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let store = store.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let value: Value = RawValue::from_string(format!("\"{n:0>126}\""))
                    .unwrap()
                    .into();
                store
                    .set(
                        "bench",
                        &format!("key-{:05}", n * 7919 % 10_000),
                        value,
                        None,
                    )
                    .await
                    .expect("set");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let done = counter.load(Ordering::Relaxed);
    println!(
        "{writers} writers: {done} sets in {:.2} s = {:.0} sets/s",
        started.elapsed().as_secs_f64(),
        done as f64 / started.elapsed().as_secs_f64()
    );
}
