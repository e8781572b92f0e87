//! The command line and environment: every setting is a flag and an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// kv-service: the rosey.db.kv key-value store over NATS request/reply.
#[derive(Debug, Parser)]
#[command(name = "kv-service", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve rosey.db.kv.set|get|delete|list (the default).
    Serve,
    /// Write every endpoint's request, success-reply and error-reply JSON Schema to a folder.
    Schemas {
        /// Folder to write to (created if missing).
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
}

/// How to serve.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// NATS server URL (credentials in it are never logged).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// SQLite database URL; the file is created if missing.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://kv.db")]
    pub database_url: String,
    /// Seconds between purges of expired keys.
    #[arg(long = "purge-interval", env = "PURGE_INTERVAL_SECS", default_value = "300", value_parser = parse_seconds)]
    pub purge_interval: Duration,
    /// Commit with synchronous=FULL (survives power loss) instead of NORMAL (survives crashes).
    #[arg(long, env = "SYNCHRONOUS_FULL")]
    pub synchronous_full: bool,
    /// Requests handled at once; past it clients get OVERLOADED at once.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = nats_rpc::DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,
    /// MiB of memory for the in-memory mirror that serves reads; past it, or at 0, reads go to
    /// SQLite.
    #[arg(long, env = "MIRROR_MB", default_value_t = 48)]
    pub mirror_mb: usize,
    /// Async worker threads; 1 runs everything on one thread (SQLite has its own).
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
    /// NATS queue group shared by all instances.
    #[arg(long, env = "QUEUE_GROUP", default_value = nats_rpc::DEFAULT_QUEUE_GROUP)]
    pub queue_group: String,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(0) | Err(_) => Err(format!("`{text}` is not a whole number of seconds >= 1")),
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
    }
}

/// `nats://user:secret@host:4222` → `nats://***@host:4222`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let (scheme, rest) = server.split_once("://").unwrap_or(("", server));
            let rest = match rest.rsplit_once('@') {
                Some((_, host)) => format!("***@{host}"),
                None => rest.to_owned(),
            };
            if scheme.is_empty() {
                rest
            } else {
                format!("{scheme}://{rest}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}
