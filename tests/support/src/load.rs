//! Load generation for benchmarks: `in_flight` concurrent requesters on one connection, each
//! sending its next request as soon as the previous reply arrives, for `duration`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// What one load run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Replies received.
    pub requests: u64,
    /// Replies that were not success envelopes, plus requests that failed.
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Every reply's round-trip time, sorted.
    pub latencies: Vec<Duration>,
}

impl Report {
    /// Replies per second.
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The `p`-th percentile latency (`p` in 0..=100).
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[rank.min(self.latencies.len() - 1)]
    }
}

/// Drives `subject` with `payload(i)` for the i-th request.
pub async fn drive(
    client: &async_nats::Client,
    subject: &str,
    in_flight: usize,
    duration: Duration,
    payload: Arc<dyn Fn(u64) -> Bytes + Send + Sync>,
) -> Report {
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::with_capacity(in_flight);
    for _ in 0..in_flight {
        let client = client.clone();
        let subject = subject.to_owned();
        let counter = counter.clone();
        let payload = payload.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut errors = 0;
            while Instant::now() < deadline {
                let index = counter.fetch_add(1, Ordering::Relaxed);
                let body = payload(index);
                let sent = Instant::now();
                match client.request(subject.clone(), body).await {
                    Ok(reply) if reply.payload.starts_with(br#"{"success":true"#) => {
                        latencies.push(sent.elapsed());
                    }
                    Ok(_) => {
                        latencies.push(sent.elapsed());
                        errors += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut report = Report::default();
    for worker in workers {
        let (latencies, errors) = worker.await.expect("load worker");
        report.latencies.extend(latencies);
        report.errors += errors;
    }
    report.elapsed = started.elapsed();
    report.requests = report.latencies.len() as u64;
    report.latencies.sort_unstable();
    report
}

/// A bare async-nats responder answering every request on `subject` with `reply`: the floor
/// any framework is measured against.
pub async fn bare_responder(
    client: async_nats::Client,
    subject: &str,
    reply: Bytes,
) -> tokio::task::JoinHandle<()> {
    use futures_util::StreamExt;
    let mut subscriber = client
        .queue_subscribe(subject.to_owned(), "q".into())
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            if let Some(to) = message.reply {
                let _ = client.publish(to, reply.clone()).await;
            }
        }
    })
}

/// Medians over several runs of one case: throughput and latency percentiles (µs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub throughput: f64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
}

impl Summary {
    /// The medians of `runs`.
    pub fn of(runs: &[Report]) -> Summary {
        let med =
            |pick: &dyn Fn(&Report) -> f64| median(&mut runs.iter().map(pick).collect::<Vec<_>>());
        let us = |p: f64| move |r: &Report| r.percentile(p).as_secs_f64() * 1e6;
        Summary {
            throughput: med(&|r| r.throughput()),
            p50_us: med(&us(50.0)),
            p95_us: med(&us(95.0)),
            p99_us: med(&us(99.0)),
        }
    }
}

/// The median of `values` (0 when empty).
pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}
