//! What `#[nats_rpc]` costs: a no-op handler against a bare async-nats responder answering the
//! same canned envelope, same payloads, same run, interleaved rounds, medians.
//!
//! Run: `cargo bench -p nats-rpc --bench overhead` (env: `BENCH_ROUNDS`, default 7;
//! `BENCH_SECONDS` per case, default 1; `BENCH_IN_FLIGHT`, default `1,16,64`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nats_rpc::{Service, nats_rpc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use test_support::load::{Report, Summary, bare_responder, drive, median};
use test_support::{NatsServer, env_or};

#[derive(Deserialize, JsonSchema)]
struct Request {
    #[schemars(regex(pattern = "^[a-z0-9_-]{1,100}$"))]
    #[allow(dead_code)]
    plugin_name: String,
    #[schemars(length(min = 1, max = 255))]
    #[allow(dead_code)]
    key: String,
}

#[derive(Serialize, JsonSchema)]
struct Empty {}

#[nats_rpc(subject = "bench.noop")]
async fn noop(_state: &(), _request: Request) -> Result<Empty, nats_rpc::Error> {
    Ok(Empty {})
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let rounds: usize = env_or("BENCH_ROUNDS", 7);
    let seconds: f64 = env_or("BENCH_SECONDS", 1.0);
    let in_flights: Vec<usize> = std::env::var("BENCH_IN_FLIGHT")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let server = NatsServer::start();
    let connect = || nats_rpc::connect_options().connect(server.url());
    let driver = connect().await.expect("driver");
    let floor = connect().await.expect("floor");
    let served = connect().await.expect("service");
    let _floor = bare_responder(
        floor,
        "bench.floor",
        Bytes::from_static(br#"{"success":true,"data":{}}"#),
    )
    .await;
    let service = Service::builder("bench", "0.1.0")
        .endpoint::<noop>()
        .serve(served, ())
        .await
        .expect("serve");
    let payload: Arc<dyn Fn(u64) -> Bytes + Send + Sync> = Arc::new(|i| {
        Bytes::from(format!(
            r#"{{"plugin_name":"bench","key":"key-{}"}}"#,
            i % 10_000
        ))
    });
    let duration = Duration::from_secs_f64(seconds);

    // Warm up both paths.
    for subject in ["bench.floor", "bench.noop"] {
        drive(
            &driver,
            subject,
            16,
            Duration::from_millis(500),
            payload.clone(),
        )
        .await;
    }

    println!("nats-rpc overhead: no-op #[nats_rpc] handler vs bare async-nats responder");
    println!("{rounds} interleaved rounds of {seconds} s per case; medians\n");
    println!(
        "{:>9} | {:>12} {:>12} {:>7} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9}",
        "in flight",
        "floor req/s",
        "rpc req/s",
        "ratio",
        "floor p50",
        "p95",
        "p99",
        "rpc p50",
        "p95",
        "p99"
    );
    for &in_flight in &in_flights {
        let mut floor_runs: Vec<Report> = Vec::new();
        let mut rpc_runs: Vec<Report> = Vec::new();
        let mut ratios = Vec::new();
        for _ in 0..rounds {
            let f = drive(&driver, "bench.floor", in_flight, duration, payload.clone()).await;
            let r = drive(&driver, "bench.noop", in_flight, duration, payload.clone()).await;
            assert_eq!(r.errors, 0, "the no-op handler answered errors");
            ratios.push(r.throughput() / f.throughput());
            floor_runs.push(f);
            rpc_runs.push(r);
        }
        let (floor, rpc) = (Summary::of(&floor_runs), Summary::of(&rpc_runs));
        println!(
            "{:>9} | {:>12.0} {:>12.0} {:>6.2}x | {:>7.0}us {:>7.0}us {:>7.0}us | {:>7.0}us {:>7.0}us {:>7.0}us",
            in_flight,
            floor.throughput,
            rpc.throughput,
            median(&mut ratios),
            floor.p50_us,
            floor.p95_us,
            floor.p99_us,
            rpc.p50_us,
            rpc.p95_us,
            rpc.p99_us,
        );
    }
    service.shutdown().await.expect("drain");
}
