//! Overload: what deadlines buy. kv-service (SQLite) is first measured unloaded (closed loop,
//! 64 sets in flight: its capacity); then twice that rate of sets is offered open loop for
//! `BENCH_OVERLOAD_SECONDS` (default 10) by clients that wait 1 s for each reply, once with
//! every request carrying `Rpc-Timeout-Ms: 1000` and once without (no deadlines: the service
//! works on everything it takes). Each mode gets a fresh service and store. Both run with the
//! default in-flight bound (512), past which requests are answered OVERLOADED at the door, and
//! with a bound of 16,384, where work queues inside the service (the writer) instead: that is
//! where deadlines have to do the shedding.
//!
//! Goodput: success replies received within the client's 1 s, per second of offered load.
//! Also: replies later than the timeout (work the client had abandoned) and the latest reply.
//! Targets (with deadlines): goodput >= 0.8x the unloaded capacity; no reply later than 2x the
//! timeout. Without deadlines the figures are printed, not judged.
//!
//! Run: `cargo bench -p kv-service --bench overload` (env: `BENCH_OVERLOAD_SECONDS`,
//! `BENCH_OVERLOAD_FACTOR` (default 2.0), `BENCH_OVERLOAD_OP` (`set` or `get`),
//! `BENCH_OVERLOAD_MAX_IN_FLIGHT` (default `512,16384`)).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use test_support::NatsServer;
use test_support::Service;
use test_support::env_or;
use test_support::load::drive;

const KEYS: u64 = 10_000;
/// How long clients wait for a reply, and what they put in `Rpc-Timeout-Ms`.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// After the last request, how long late replies are still collected.
const TAIL: Duration = Duration::from_secs(6);
/// Pacing step of the open-loop sender.
const TICK: Duration = Duration::from_millis(1);

fn body(op: &str, i: u64) -> Bytes {
    let key = format!("key-{:05}", i.wrapping_mul(7919) % KEYS);
    match op {
        "get" => format!(r#"{{"plugin_name":"bench","key":"{key}"}}"#).into(),
        _ => format!(r#"{{"plugin_name":"bench","key":"{key}","value":"{i:0>128}"}}"#).into(),
    }
}

/// What one overload run saw.
#[derive(Debug, Default)]
struct Outcome {
    offered: u64,
    /// Success replies within the client timeout.
    good: u64,
    /// Replies (any) after the client timeout.
    late: u64,
    overloaded: u64,
    timeout: u64,
    other_errors: u64,
    /// Requests that never got a reply (dropped or still unanswered at the end).
    unanswered: u64,
    latest: Duration,
    seconds: f64,
}

impl Outcome {
    fn goodput(&self) -> f64 {
        self.good as f64 / self.seconds
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
    let seconds: f64 = env_or("BENCH_OVERLOAD_SECONDS", 10.0);
    let factor: f64 = env_or("BENCH_OVERLOAD_FACTOR", 2.0);
    let op: String = env_or("BENCH_OVERLOAD_OP", "set".to_owned());
    let nats = NatsServer::start();
    println!(
        "kv-service under {factor}x its capacity of {op}s for {seconds} s, clients waiting {} ms",
        CLIENT_TIMEOUT.as_millis()
    );
    let bounds: Vec<usize> = std::env::var("BENCH_OVERLOAD_MAX_IN_FLIGHT")
        .unwrap_or_else(|_| "512,16384".into())
        .split(',')
        .map(|bound| bound.trim().parse().expect("a number"))
        .collect();
    let mut results = Vec::new();
    for (bound, deadlines) in bounds
        .iter()
        .flat_map(|&bound| [(bound, true), (bound, false)])
    {
        let max_in_flight = bound.to_string();
        let dir = tempfile::tempdir().expect("temp dir");
        let database = format!("sqlite://{}", dir.path().join("kv.db").display());
        let mut service = Service::spawn(
            env!("CARGO_BIN_EXE_kv-service"),
            &[],
            &[
                ("NATS_URL", nats.url().as_str()),
                ("DATABASE_URL", database.as_str()),
                ("RUST_LOG", "error"),
                ("MAX_IN_FLIGHT", max_in_flight.as_str()),
            ],
        );
        let driver = async_nats::connect(nats.url()).await.expect("connect");
        test_support::wait_for_service(&driver, "kv-service").await;
        let payloads: Arc<dyn Fn(u64) -> Bytes + Send + Sync> = {
            let op = op.clone();
            Arc::new(move |i| body(&op, i))
        };
        let subject = format!("rosey.db.kv.{op}");
        // Warm up (fills the keys for gets), then the unloaded capacity.
        drive(&driver, "rosey.db.kv.set", 64, Duration::from_secs(1), {
            Arc::new(|i| body("set", i))
        })
        .await;
        let unloaded = drive(&driver, &subject, 64, Duration::from_secs(3), payloads).await;
        let capacity = unloaded.throughput();
        let outcome = overload(
            &nats.url(),
            &subject,
            &op,
            capacity * factor,
            Duration::from_secs_f64(seconds),
            deadlines,
        )
        .await;
        service.terminate(Duration::from_secs(30));
        results.push((bound, deadlines, capacity, outcome));
    }

    println!(
        "in flight  deadlines | capacity/s  offered/s | goodput/s  ratio |   late  overloaded   timeout  other  unanswered | latest reply"
    );
    for (bound, deadlines, capacity, o) in &results {
        println!(
            "{:9}  {:9} | {:10.0} {:10.0} | {:9.0} {:5.2}x | {:6} {:11} {:9} {:6} {:11} | {:>8} ms",
            bound,
            if *deadlines { "on" } else { "off" },
            capacity,
            o.offered as f64 / o.seconds,
            o.goodput(),
            o.goodput() / capacity,
            o.late,
            o.overloaded,
            o.timeout,
            o.other_errors,
            o.unanswered,
            o.latest.as_millis(),
        );
    }
    let verdict = |met: bool| if met { "met   " } else { "MISSED" };
    println!("targets:");
    // Silence is the one wrong answer: shed requests get OVERLOADED, late ones TIMEOUT.
    for (bound, deadlines, _, outcome) in &results {
        println!(
            "  {} in flight {bound}, deadlines {}: every request answered: {} unanswered",
            verdict(outcome.unanswered == 0),
            if *deadlines { "on" } else { "off" },
            outcome.unanswered
        );
    }
    println!("targets (with deadlines):");
    let limit = 2 * CLIENT_TIMEOUT;
    for (bound, _, capacity, with) in results.iter().filter(|result| result.1) {
        let ratio = with.goodput() / capacity;
        println!(
            "  {} in flight {bound}: goodput >= 0.80x the unloaded capacity: {ratio:.2}x",
            verdict(ratio >= 0.8)
        );
        println!(
            "  {} in flight {bound}: no reply later than {} ms: latest {} ms",
            verdict(with.latest <= limit),
            limit.as_millis(),
            with.latest.as_millis()
        );
    }
}

/// Offers `rate` requests/s for `duration`, open loop: request `i` is sent at `i / rate`
/// whatever happened to the earlier ones; replies are matched by their reply subject.
async fn overload(
    url: &str,
    subject: &str,
    op: &str,
    rate: f64,
    duration: Duration,
    deadlines: bool,
) -> Outcome {
    let sender = async_nats::connect(url).await.expect("connect");
    let receiver = async_nats::ConnectOptions::new()
        .subscription_capacity(1 << 20)
        .connect(url)
        .await
        .expect("connect");
    let total = (rate * duration.as_secs_f64()) as usize;
    let started = Instant::now();
    // Nanoseconds after `started` each request was sent (0: not yet).
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let mut replies = receiver
        .subscribe("overload.reply.*")
        .await
        .expect("subscribe");
    receiver.flush().await.expect("flush");

    let collector = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut outcome = Outcome::default();
            let mut answered = vec![false; sent.len()];
            let end = started + duration + TAIL;
            while let Ok(Some(reply)) = tokio::time::timeout_at(end.into(), replies.next()).await {
                let now = started.elapsed();
                let Some(index) = reply
                    .subject
                    .rsplit('.')
                    .next()
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|&i| i < answered.len())
                else {
                    continue;
                };
                answered[index] = true;
                let at = Duration::from_nanos(sent[index].load(Ordering::Relaxed));
                let latency = now.saturating_sub(at);
                outcome.latest = outcome.latest.max(latency);
                let payload = &reply.payload[..];
                if latency > CLIENT_TIMEOUT {
                    outcome.late += 1;
                } else if payload.starts_with(br#"{"success":true"#) {
                    outcome.good += 1;
                }
                let has = |code: &[u8]| payload.windows(code.len()).any(|w| w == code);
                if has(br#""code":"OVERLOADED""#) {
                    outcome.overloaded += 1;
                } else if has(br#""code":"TIMEOUT""#) {
                    outcome.timeout += 1;
                } else if !payload.starts_with(br#"{"success":true"#) {
                    outcome.other_errors += 1;
                }
            }
            outcome.unanswered = answered.iter().filter(|a| !**a).count() as u64;
            outcome
        })
    };

    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        nats_rpc::TIMEOUT_HEADER,
        CLIENT_TIMEOUT.as_millis().to_string().as_str(),
    );
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut next = 0usize;
    while next < total {
        ticker.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
        while next < due {
            sent[next].store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            let reply = format!("overload.reply.{next}");
            let payload = body(op, next as u64 + 1_000_000_000);
            let published = if deadlines {
                sender
                    .publish_with_reply_and_headers(
                        subject.to_owned(),
                        reply,
                        headers.clone(),
                        payload,
                    )
                    .await
            } else {
                sender
                    .publish_with_reply(subject.to_owned(), reply, payload)
                    .await
            };
            published.expect("publish");
            next += 1;
        }
    }
    sender.flush().await.expect("flush");
    let seconds = started.elapsed().as_secs_f64();
    let mut outcome = collector.await.expect("collector");
    outcome.offered = total as u64;
    outcome.seconds = seconds;
    outcome
}
