//! Group commit, the same for every backend: writes queue for one writer task, which takes
//! everything pending (up to [`MAX_BATCH`]) and hands it to its backend's [`Commit`] as one
//! batch; each caller hears back only after the commit that holds its write. One task owning
//! the only write connection also means writers of one process never contend for locks.
//!
//! A backend whose commit holds up the runtime thread (SQLite's small batches, committed in
//! place) has a batch committed in two parts: the first part's callers are answered, and their
//! replies published, before the second part commits (see [`Commit::first_part`]).

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use nats_rpc::Deadline;

use super::{Row, StoreError, Value};

/// Metric: writes per committed batch (group commit at work: under load, many).
pub(crate) const BATCH_METRIC: &str = "kv_store_batch_writes";
/// Metric: seconds one batch takes to commit.
pub(crate) const COMMIT_METRIC: &str = "kv_store_commit_seconds";
/// Metric: writes dropped unapplied because their deadline passed while they were queued.
pub(crate) const EXPIRED_WRITES_METRIC: &str = "kv_store_writes_expired_total";

/// Most writes handed to a backend at once.
pub(crate) const MAX_BATCH: usize = 256;
/// Writes waiting for the writer before callers wait for room (back-pressure).
const QUEUE: usize = 4096;

/// One change to the store.
#[derive(Debug)]
pub(crate) enum Write {
    Set {
        plugin: String,
        key: String,
        value: Value,
        ttl_seconds: Option<u32>,
    },
    Delete {
        plugin: String,
        key: String,
    },
    /// One chunk of expired rows (SQLite, whose only write connection is the writer's).
    Purge,
    /// Rows copied from another store, kept as they were (`kv-service copy`).
    Import(Vec<Row>),
    /// A write that changes nothing (the store identity rewritten as it is): proves the
    /// writer and the database accept writes (`/healthz`).
    Probe,
}

impl Write {
    /// `(plugin, key)` of a set or delete: what must not repeat within one statement.
    pub(crate) fn target(&self) -> Option<(&str, &str)> {
        match self {
            Write::Set { plugin, key, .. } | Write::Delete { plugin, key } => Some((plugin, key)),
            Write::Purge | Write::Import(_) | Write::Probe => None,
        }
    }
}

/// The statement of [`Write::Probe`], the same on both backends.
pub(crate) const PROBE_SQL: &str = "UPDATE kv_meta SET value = value WHERE name = 'store_id'";

/// What a committed write reports: `Set` 0, `Delete` rows deleted, `Purge` rows purged,
/// `Import` rows written.
pub(crate) type Applied = u64;

/// How one backend commits a batch.
pub(crate) trait Commit: Send + 'static {
    /// Commits `writes` in order and returns each one's outcome, in the same order. A write may
    /// fail alone (its neighbours still commit) or with the whole batch. The writes are handed
    /// over whole, so a backend may commit them on another thread.
    fn commit(
        &mut self,
        writes: Vec<Write>,
    ) -> impl Future<Output = Vec<Result<Applied, StoreError>>> + Send;

    /// How many of `writes` to commit first; the rest are committed right after, once the
    /// first part's callers have been answered. All of them, unless the backend says otherwise.
    ///
    /// A commit that runs on the runtime thread holds up every reply until it ends, so a batch
    /// committed whole answers all its callers at once; callers that are answered together send
    /// their next writes together, and the batches stay as big as the load (a convoy: every
    /// write waits for all the others' commit, and the service sits idle while the replies
    /// travel). Answering part of them one commit earlier breaks the convoy up (the README's
    /// benchmark section has the figures).
    fn first_part(&self, writes: &[Write]) -> usize {
        writes.len()
    }

    /// Called once the queue is closed and empty.
    fn close(self) -> impl Future<Output = ()> + Send;
}

/// Smallest first part: a batch of up to this many writes is committed whole, because
/// answering fewer callers early saves less than the second commit costs (a commit's fixed
/// part, ~7,500 instructions on SQLite, is more than half a set's upsert).
pub(crate) const MIN_PART: usize = 8;

/// [`Commit::first_part`] for a backend that splits: half the batch (rounded up), at least
/// [`MIN_PART`], so a batch is committed in two parts at most (the second may be smaller).
pub(crate) fn half(writes: usize) -> usize {
    writes.div_ceil(2).max(MIN_PART).min(writes)
}

struct Command {
    write: Write,
    /// Past it, the write is not committed: its caller has given up.
    deadline: Option<Deadline>,
    done: oneshot::Sender<Result<Applied, StoreError>>,
}

/// The handle to a running writer task.
#[derive(Debug)]
pub(crate) struct Writer {
    queue: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl Writer {
    pub(crate) fn spawn(committer: impl Commit) -> Writer {
        let (queue, commands) = mpsc::channel(QUEUE);
        Writer {
            queue,
            task: tokio::spawn(run(committer, commands)),
        }
    }

    /// Queues `write` and waits for its commit.
    pub(crate) fn write(
        &self,
        write: Write,
    ) -> impl Future<Output = Result<Applied, StoreError>> + Send + '_ {
        self.write_within(write, None)
    }

    /// Queues `write` at once, to be committed only if its batch starts before `deadline` (a
    /// batch committed in two parts is taken, and its deadlines checked, once); the future
    /// waits for its commit and, once committed, reports it committed, however late.
    ///
    /// Not an `async fn`: queueing happens here, synchronously, so the future holds little more
    /// than the receiver of the outcome. Request futures hold this one, and the runtime moves
    /// them as a whole: every byte here is copied several times per request.
    pub(crate) fn write_within(
        &self,
        write: Write,
        deadline: Option<Deadline>,
    ) -> impl Future<Output = Result<Applied, StoreError>> + Send + '_ {
        let (done, outcome) = oneshot::channel();
        let command = Command {
            write,
            deadline,
            done,
        };
        let queued = super::enqueue(&self.queue, command);
        async move {
            queued.await?;
            outcome.await.map_err(|_| StoreError::Closed)?
        }
    }

    /// Commits what is queued, then stops the task.
    pub(crate) async fn close(self) {
        drop(self.queue);
        let _ = self.task.await;
    }
}

async fn run(mut committer: impl Commit, mut queue: mpsc::Receiver<Command>) {
    let metrics = Metrics {
        batch_sizes: metrics::histogram!(BATCH_METRIC),
        commit_seconds: metrics::histogram!(COMMIT_METRIC),
    };
    let expired = metrics::counter!(EXPIRED_WRITES_METRIC);
    let mut batch: Vec<Command> = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Let requests that are already readable queue their writes first: one yield costs
        // microseconds and fills the batch, where every extra batch costs a commit.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        // Writes whose callers have given up are answered now and never committed: under
        // overload they would only delay the writes still wanted.
        let mut writes: Vec<Write> = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for command in batch.drain(..) {
            match command.deadline {
                Some(deadline) if deadline.passed() => {
                    let _ = command.done.send(Err(StoreError::DeadlinePassed(deadline)));
                    if !matches!(command.write, Write::Probe) {
                        expired.increment(1);
                    }
                }
                _ => {
                    writes.push(command.write);
                    waiting.push(command.done);
                }
            }
        }
        if writes.is_empty() {
            continue;
        }
        let first = committer.first_part(&writes).clamp(1, writes.len());
        let later =
            (first < writes.len()).then(|| (writes.split_off(first), waiting.split_off(first)));
        commit(&mut committer, writes, waiting, &metrics).await;
        if let Some((writes, waiting)) = later {
            // The first part's callers run now and publish their replies; then the rest.
            tokio::task::yield_now().await;
            commit(&mut committer, writes, waiting, &metrics).await;
        }
    }
    committer.close().await;
}

struct Metrics {
    batch_sizes: metrics::Histogram,
    commit_seconds: metrics::Histogram,
}

/// Commits `writes` as one batch and tells each caller its outcome.
async fn commit(
    committer: &mut impl Commit,
    writes: Vec<Write>,
    waiting: Vec<oneshot::Sender<Result<Applied, StoreError>>>,
    metrics: &Metrics,
) {
    let started = std::time::Instant::now();
    let count = writes.len();
    let outcomes = committer.commit(writes).await;
    debug_assert_eq!(outcomes.len(), count, "one outcome per write");
    let elapsed = started.elapsed();
    metrics.batch_sizes.record(count as f64);
    metrics.commit_seconds.record(elapsed.as_secs_f64());
    tracing::trace!(
        writes = count,
        micros = elapsed.as_micros() as u64,
        "batch done"
    );
    for (done, outcome) in waiting.into_iter().zip(outcomes) {
        let _ = done.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn half_splits_in_two_parts_of_at_least_min_part() {
        assert_eq!(half(1), 1);
        assert_eq!(half(MIN_PART), MIN_PART);
        assert_eq!(half(MIN_PART + 1), MIN_PART);
        assert_eq!(half(16), 8);
        assert_eq!(half(17), 9);
        assert_eq!(half(64), 32);
        for writes in 1..=MAX_BATCH {
            let first = half(writes);
            assert!((1..=writes).contains(&first), "{writes}: {first}");
            assert!(writes - first <= first, "{writes}: the rest fits one part");
        }
    }

    /// Commits nothing; records each commit's size and how many callers had heard back by then.
    struct Recorder {
        split: bool,
        answered: Arc<AtomicUsize>,
        commits: Arc<Mutex<Vec<(usize, usize)>>>,
    }

    impl Commit for Recorder {
        async fn commit(&mut self, writes: Vec<Write>) -> Vec<Result<Applied, StoreError>> {
            let answered = self.answered.load(Ordering::SeqCst);
            self.commits.lock().unwrap().push((writes.len(), answered));
            writes.iter().map(|_| Ok(0)).collect()
        }

        fn first_part(&self, writes: &[Write]) -> usize {
            if self.split {
                half(writes.len())
            } else {
                writes.len()
            }
        }

        async fn close(self) {}
    }

    /// Queues `count` writes before the writer runs and returns each commit's (size, callers
    /// answered before it).
    async fn commits_of(count: usize, split: bool) -> Vec<(usize, usize)> {
        let answered = Arc::new(AtomicUsize::new(0));
        let commits = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::new(Writer::spawn(Recorder {
            split,
            answered: answered.clone(),
            commits: commits.clone(),
        }));
        let callers: Vec<_> = (0..count)
            .map(|_| {
                let writer = writer.clone();
                let answered = answered.clone();
                tokio::spawn(async move {
                    writer.write(Write::Probe).await.expect("committed");
                    answered.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        for caller in callers {
            caller.await.unwrap();
        }
        Arc::into_inner(writer).expect("callers done").close().await;
        Arc::into_inner(commits).unwrap().into_inner().unwrap()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_split_batch_answers_its_first_part_before_committing_the_rest() {
        assert_eq!(commits_of(20, true).await, [(10, 0), (10, 10)]);
        assert_eq!(commits_of(12, true).await, [(8, 0), (4, 8)]);
        assert_eq!(commits_of(MIN_PART, true).await, [(MIN_PART, 0)]);
        assert_eq!(commits_of(20, false).await, [(20, 0)]);
    }
}
