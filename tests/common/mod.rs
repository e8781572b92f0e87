//! What the system tests share: kv-service instances as real processes on a shared store, and
//! a client that tells a reply from a timeout.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;
use test_support::Service;
pub use test_support::wait_for_instances;

pub const BIN: &str = env!("CARGO_BIN_EXE_kv-service");

/// Starts one kv-service instance on `nats_url` and `database_url`, with extra environment.
pub fn instance(nats_url: &str, database_url: &str, env: &[(&str, &str)]) -> Service {
    let mut all = vec![("NATS_URL", nats_url), ("DATABASE_URL", database_url)];
    all.extend_from_slice(env);
    Service::spawn(BIN, &[], &all)
}

/// A NATS server of its own and one instance on `database_url` serving it, ready, with a
/// client.
pub async fn serving(
    database_url: &str,
    env: &[(&str, &str)],
) -> (test_support::NatsServer, Service, async_nats::Client) {
    let nats = test_support::NatsServer::start();
    let service = instance(&nats.url(), database_url, env);
    let kv = client(&nats.url()).await;
    wait_for_instances(&kv, 1).await;
    (nats, service, kv)
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Reply(Value),
    TimedOut,
    Failed(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Reply(body) if body["success"] == true)
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            Outcome::Reply(body) => body["error"]["code"].as_str(),
            _ => None,
        }
    }

    pub fn body(&self) -> &Value {
        match self {
            Outcome::Reply(body) => body,
            other => panic!("no reply: {other:?}"),
        }
    }
}

/// Sends `body` to `rosey.db.kv.<op>` and waits at most `limit` for the reply.
pub async fn request(
    client: &async_nats::Client,
    op: &str,
    body: Value,
    limit: Duration,
) -> Outcome {
    let sent = client.request(format!("rosey.db.kv.{op}"), body.to_string().into());
    match tokio::time::timeout(limit, sent).await {
        Err(_) => Outcome::TimedOut,
        Ok(Err(err)) if err.kind() == async_nats::client::RequestErrorKind::TimedOut => {
            Outcome::TimedOut
        }
        Ok(Err(err)) => Outcome::Failed(err.to_string()),
        Ok(Ok(reply)) => {
            Outcome::Reply(serde_json::from_slice(&reply.payload).expect("JSON reply"))
        }
    }
}

/// A NATS client whose requests time out after 30 s (so `request` reports its own timeouts).
pub async fn client(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .connect(url)
        .await
        .expect("test client connects")
}
