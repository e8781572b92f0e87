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
    #[command(flatten)]
    pub credentials: NatsCredentials,
    /// NATS queue group shared by all instances.
    #[arg(long, env = "QUEUE_GROUP", default_value = nats_rpc::DEFAULT_QUEUE_GROUP)]
    pub queue_group: String,
    /// Also serve rosey.db.kv.<plugin_name>.set|get|delete|list, taking the plugin from the
    /// subject, so NATS permissions can confine each plugin to its own keys.
    #[arg(long, env = "PLUGIN_SUBJECTS")]
    pub plugin_subjects: bool,
}

/// How kv-service proves who it is to NATS; any combination the server asks for.
#[derive(Debug, Clone, Default, Args)]
pub struct NatsCredentials {
    /// NATS user name (with `--nats-password`).
    #[arg(long, env = "NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(
        long,
        env = "NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    pub nats_password: Option<Secret>,
    /// NATS token.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<Secret>,
    /// File holding an NKey seed (`SU…`).
    #[arg(long, env = "NATS_NKEY_SEED_FILE")]
    pub nats_nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and NKey seed).
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server's TLS certificate; implies TLS.
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (with `--nats-tls-key`).
    #[arg(long, env = "NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, env = "NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
}

impl NatsCredentials {
    /// Adds these credentials to `options`. Fails, naming the file, when a file cannot be read.
    pub async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, String> {
        if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(token) = &self.nats_token {
            options = options.token(token.expose().to_owned());
        }
        if let Some(path) = &self.nats_nkey_seed_file {
            let seed = std::fs::read_to_string(path).map_err(|err| {
                format!("cannot read the NKey seed file {}: {err}", path.display())
            })?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(path) = &self.nats_creds {
            options = options.credentials_file(path).await.map_err(|err| {
                format!("cannot use the credentials file {}: {err}", path.display())
            })?;
        }
        if let Some(ca) = &self.nats_tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.nats_tls_cert, &self.nats_tls_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        Ok(options)
    }
}

/// A secret from the command line or environment: `Debug` never shows it, so a logged config
/// cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Secret(text.to_owned()))
    }
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
