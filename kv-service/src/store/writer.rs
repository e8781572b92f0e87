//! Group commit, the same for every backend: writes queue for one writer task, which takes
//! everything pending (up to [`MAX_BATCH`]) and hands it to its backend's [`Commit`] as one
//! batch; each caller hears back only after the commit that holds its write. One task owning
//! the only write connection also means writers of one process never contend for locks.

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

    /// Called once the queue is closed and empty.
    fn close(self) -> impl Future<Output = ()> + Send;
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

    /// Queues `write` at once, to be committed only if its batch starts before `deadline`;
    /// the future waits for its commit and, once committed, reports it committed, however late.
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
    let batch_sizes = metrics::histogram!(BATCH_METRIC);
    let commit_seconds = metrics::histogram!(COMMIT_METRIC);
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
        let mut writes = Vec::with_capacity(batch.len());
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
        let started = std::time::Instant::now();
        let count = writes.len();
        let outcomes = committer.commit(writes).await;
        debug_assert_eq!(outcomes.len(), count, "one outcome per write");
        let elapsed = started.elapsed();
        batch_sizes.record(count as f64);
        commit_seconds.record(elapsed.as_secs_f64());
        tracing::trace!(
            writes = count,
            micros = elapsed.as_micros() as u64,
            "batch done"
        );
        for (done, outcome) in waiting.into_iter().zip(outcomes) {
            let _ = done.send(outcome);
        }
    }
    committer.close().await;
}
