//! What the workspace's tests and benches share (not published). Tests own every server they
//! talk to, so they can stop, kill or freeze it, and never collide with each other or with a
//! server someone else started.
//!
//! - [`NatsServer`]: a private `nats-server` child, killed when dropped; [`wait_for_service`]
//!   and [`wait_for_instances`] wait for NATS micro services to answer.
//! - [`Postgres`]: a private PostgreSQL cluster.
//! - [`Service`]: the kv-service binary as a child process, its log collected.
//! - [`load`]: the closed-loop driver and the bare responder (the floor) the benches measure
//!   against; [`env_or`] reads the benches' knobs.
//! - [`call`]: one kv request, its reply as JSON; [`envelope`]: the replies tests expect.
//!
//! Which harness to use when:
//! - `kv-service/tests/common` (`Harness`): kv-service in-process on a fresh store of either
//!   backend, replies checked whole (the contract suite, the store and handler tests);
//!   `common::process` for kv-service as a child process on a SQLite folder of its own
//!   (faults, signals, the binary's options, metrics);
//! - `tests/common`: several kv-service processes on one shared store (the system tests:
//!   scale-out, split brain, PostgreSQL faults, copy);
//! - this crate directly: a nats-rpc test, or a bench.

mod nats;
mod postgres;
mod process;

pub mod envelope;
pub mod load;

pub use nats::{NatsServer, wait_for_instances, wait_for_service};
pub use postgres::Postgres;
pub use process::Service;

use std::process::Command;

/// A loopback port nobody listens on right now.
///
/// # Panics
/// When no port can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The `sqlite://` URL of the database file at `path`.
pub fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

/// The environment variable `name` parsed, else `default`: the benches' knobs.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Sends `body` to `rosey.db.kv.<op>` and returns the reply's JSON.
///
/// # Panics
/// When no reply comes within 5 s, or it is not JSON.
pub async fn call(
    client: &async_nats::Client,
    op: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.request(format!("rosey.db.kv.{op}"), body.to_string().into()),
    )
    .await
    .expect("a reply within 5 s")
    .expect("request");
    serde_json::from_slice(&reply.payload).expect("a JSON reply")
}

/// Sends `signal` (`-TERM`, `-STOP`, ...) to process `pid`, ignoring failure (it may be gone).
fn signal(signal: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}
