//! Per-endpoint counters for `$SRV.STATS`: requests, errors (error envelopes included),
//! processing time, and latency percentiles over a sliding window. Counters are lock-free; the
//! latency window takes an uncontended lock per request, the last error text one per error.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How far back the latency percentiles in `$SRV.STATS` look.
pub const LATENCY_WINDOW: Duration = Duration::from_secs(60);
/// The window moves in steps of this: a sample leaves it between `LATENCY_WINDOW - LATENCY_STEP`
/// and `LATENCY_WINDOW` after it was recorded.
const LATENCY_STEP: Duration = Duration::from_secs(10);
const LATENCY_SLOTS: usize = (LATENCY_WINDOW.as_secs() / LATENCY_STEP.as_secs()) as usize;
/// Histogram bounds: 1 µs resolution up to one hour, two significant digits (1% error), which
/// keeps each of the slots at ~20 KB.
const LATENCY_LOW_NANOS: u64 = 1_000;
const LATENCY_HIGH_NANOS: u64 = 3_600_000_000_000;
const LATENCY_DIGITS: u8 = 2;

#[derive(Debug)]
pub(crate) struct EndpointStats {
    requests: AtomicU64,
    errors: AtomicU64,
    processing_nanos: AtomicU64,
    last_error: Mutex<String>,
    latency: Mutex<LatencyWindow>,
}

impl Default for EndpointStats {
    fn default() -> Self {
        EndpointStats {
            requests: AtomicU64::default(),
            errors: AtomicU64::default(),
            processing_nanos: AtomicU64::default(),
            last_error: Mutex::default(),
            latency: Mutex::new(LatencyWindow::new(Instant::now())),
        }
    }
}

/// A consistent-enough copy of one endpoint's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub num_requests: u64,
    pub num_errors: u64,
    pub processing_time: Duration,
    pub average_processing_time: Duration,
    /// `CODE: message` of the latest error reply, empty when there was none.
    pub last_error: String,
    /// Processing-time percentiles of the requests run (not those shed as overloaded or past
    /// their deadline) in the last [`LATENCY_WINDOW`] (50 to 60 s: the window moves in 10 s
    /// steps).
    pub latency: Latency,
}

/// Processing-time percentiles over the sliding window (all zero when it holds no request).
/// Accurate to 1% (two significant digits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Requests in the window.
    pub count: u64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl EndpointStats {
    /// Counts one reply; its time goes into the latency window when `measured` (requests shed
    /// without running are counted, not timed).
    pub(crate) fn record(&self, elapsed: Duration, error: Option<(&str, &str)>, measured: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.processing_nanos.fetch_add(nanos, Ordering::Relaxed);
        if measured {
            lock(&self.latency).record(Instant::now(), nanos);
        }
        if let Some((code, message)) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            let mut last = lock(&self.last_error);
            last.clear();
            last.push_str(code);
            last.push_str(": ");
            last.push_str(message);
        }
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let num_requests = self.requests.load(Ordering::Relaxed);
        let total = self.processing_nanos.load(Ordering::Relaxed);
        let average = total.checked_div(num_requests).unwrap_or(0);
        StatsSnapshot {
            num_requests,
            num_errors: self.errors.load(Ordering::Relaxed),
            processing_time: Duration::from_nanos(total),
            average_processing_time: Duration::from_nanos(average),
            last_error: lock(&self.last_error).clone(),
            latency: lock(&self.latency).percentiles(Instant::now()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A ring of histograms, one per [`LATENCY_STEP`]; the oldest is cleared as the window moves.
#[derive(Debug)]
struct LatencyWindow {
    slots: Vec<Histogram<u64>>,
    /// Index of the slot being filled, and when its step began.
    current: usize,
    current_began: Instant,
}

impl LatencyWindow {
    fn new(now: Instant) -> Self {
        let slot =
            Histogram::new_with_bounds(LATENCY_LOW_NANOS, LATENCY_HIGH_NANOS, LATENCY_DIGITS)
                .expect("constant histogram bounds are valid");
        LatencyWindow {
            slots: vec![slot; LATENCY_SLOTS],
            current: 0,
            current_began: now,
        }
    }

    /// Moves the window to `now`, clearing the slots whose step has left it.
    fn advance(&mut self, now: Instant) {
        let steps =
            now.saturating_duration_since(self.current_began).as_nanos() / LATENCY_STEP.as_nanos();
        if steps == 0 {
            return;
        }
        for _ in 0..steps.min(LATENCY_SLOTS as u128) {
            self.current = (self.current + 1) % LATENCY_SLOTS;
            self.slots[self.current].reset();
        }
        // `steps` whole steps later (not `now`), so steps stay aligned.
        self.current_began += LATENCY_STEP * u32::try_from(steps).unwrap_or(u32::MAX);
    }

    fn record(&mut self, now: Instant, nanos: u64) {
        self.advance(now);
        self.slots[self.current].saturating_record(nanos);
    }

    fn percentiles(&mut self, now: Instant) -> Latency {
        self.advance(now);
        let mut all = self.slots[0].clone();
        for slot in &self.slots[1..] {
            all.add(slot).expect("slots share their bounds");
        }
        if all.is_empty() {
            return Latency::default();
        }
        let at = |quantile: f64| Duration::from_nanos(all.value_at_quantile(quantile));
        Latency {
            count: all.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: Duration::from_nanos(all.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn nanos(duration: Duration) -> u64 {
        duration.as_nanos() as u64
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let start = Instant::now();
        let mut window = LatencyWindow::new(start);
        for i in 1..=1000u64 {
            window.record(start, i * 1_000_000); // 1 ms … 1000 ms
        }
        let latency = window.percentiles(start);
        assert_eq!(latency.count, 1000);
        let near = |got: Duration, want_ms: u64| {
            let want = want_ms as f64;
            let got = got.as_secs_f64() * 1000.0;
            assert!(
                (got - want).abs() <= want * 0.01,
                "{got} ms, want {want} ms ±1%"
            );
        };
        near(latency.p50, 500);
        near(latency.p90, 900);
        near(latency.p99, 990);
        near(latency.max, 1000);
    }

    #[test]
    fn samples_leave_the_window() {
        let start = Instant::now();
        let mut window = LatencyWindow::new(start);
        window.record(start, nanos(900 * MS));
        window.record(start + LATENCY_STEP, nanos(MS));
        // Still inside: both count, the slow one is the max.
        let inside = window.percentiles(start + LATENCY_WINDOW - MS);
        assert_eq!(inside.count, 2);
        assert!(inside.max >= 890 * MS, "{inside:?}");
        // The first step has left the window; the second has not.
        let later = window.percentiles(start + LATENCY_WINDOW + MS);
        assert_eq!(later.count, 1);
        assert!(later.max < 2 * MS, "{later:?}");
        // Long idle: everything has left.
        let idle = window.percentiles(start + 10 * LATENCY_WINDOW);
        assert_eq!(idle, Latency::default());
        // And it records again afterwards.
        window.record(start + 10 * LATENCY_WINDOW, nanos(5 * MS));
        assert_eq!(window.percentiles(start + 10 * LATENCY_WINDOW).count, 1);
    }

    #[test]
    fn sub_microsecond_and_huge_values_are_kept() {
        let start = Instant::now();
        let mut window = LatencyWindow::new(start);
        window.record(start, 10);
        window.record(start, u64::MAX);
        let latency = window.percentiles(start);
        assert_eq!(latency.count, 2);
        assert!(latency.max >= Duration::from_secs(3500), "{latency:?}");
    }
}
