//! Per-endpoint counters for `$SRV.STATS`: requests, errors (error envelopes included),
//! processing time. Lock-free on the hot path; the last error text takes a lock only on errors.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct EndpointStats {
    requests: AtomicU64,
    errors: AtomicU64,
    processing_nanos: AtomicU64,
    last_error: Mutex<String>,
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
}

impl EndpointStats {
    pub(crate) fn record(&self, elapsed: Duration, error: Option<(&str, &str)>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.processing_nanos.fetch_add(nanos, Ordering::Relaxed);
        if let Some((code, message)) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
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
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}
