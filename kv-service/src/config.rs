//! The command line and environment: every setting is a flag and an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// kv-service: the rosey.db.kv key-value store over NATS request/reply.
#[derive(Debug, Parser)]
#[command(name = "kv-service", version, about, after_help = LOGGING_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeConfig,
}

/// Shown at the end of `--help` and `serve --help`.
const LOGGING_HELP: &str = "Logging: RUST_LOG sets the level (error, warn, info, debug, trace; \
default info), e.g. RUST_LOG=debug or RUST_LOG=info,kv_service=debug. Options go before or after \
the subcommand; every one also reads the environment variable shown.";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve rosey.db.kv.set|get|delete|list (the default).
    #[command(after_help = LOGGING_HELP)]
    Serve,
    /// Write every endpoint's request, success-reply and error-reply JSON Schema to a folder.
    Schemas {
        /// Folder to write to (created if missing).
        #[arg(default_value = "schemas")]
        dir: PathBuf,
    },
    /// Write the AsyncAPI 3.0 document of every endpoint (requests and both replies).
    Asyncapi {
        /// File to write (its folder must exist).
        #[arg(default_value = crate::ASYNCAPI_FILE)]
        file: PathBuf,
    },
    /// Copy every live key from one store to another (SQLite to PostgreSQL, or back).
    ///
    /// Each key keeps its value, expiry and timestamps. Idempotent: running it again rewrites
    /// the same rows, so an interrupted copy can simply be run again. Stop the service on the
    /// source first, so nothing is written there meanwhile (a SQLite file still being served is
    /// refused).
    Copy {
        /// The store to read, e.g. `sqlite://kv.db`.
        #[arg(long)]
        from: String,
        /// The store to write (created and migrated if new), e.g. `postgres://kv@db/kv`.
        #[arg(long)]
        to: String,
    },
}

/// Most `--read-connections`.
const MAX_READ_CONNECTIONS: i64 = 64;

/// How to serve.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// NATS server URL (credentials in it are never logged).
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true,
        global = true
    )]
    pub nats_url: String,
    /// The store: `sqlite://path` (a file, created if missing; one instance) or
    /// `postgres://user:password@host/database` (several instances may share it).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://kv.db",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,
    /// Seconds between purges of expired keys.
    #[arg(long = "purge-interval", env = "PURGE_INTERVAL_SECS", default_value = "300", value_parser = parse_seconds, global = true)]
    pub purge_interval: Duration,
    /// Commit with synchronous=FULL (survives power loss) instead of NORMAL (survives crashes).
    #[arg(long, env = "SYNCHRONOUS_FULL", global = true)]
    pub synchronous_full: bool,
    /// Milliseconds a request without an `Rpc-Timeout-Ms` header is worth answering: past it,
    /// one not yet started (or a write not yet committed) gets TIMEOUT and nothing is done.
    /// Default: such requests have no deadline.
    #[arg(long = "request-timeout-ms", env = "REQUEST_TIMEOUT_MS", value_parser = parse_millis, global = true)]
    pub request_timeout: Option<Duration>,
    /// Requests handled at once; past it clients get OVERLOADED at once.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = nats_rpc::DEFAULT_MAX_IN_FLIGHT, value_parser = parse_in_flight, global = true)]
    pub max_in_flight: usize,
    /// MiB of memory for the in-memory mirror that serves reads on SQLite; past it, or at 0,
    /// reads go to the file. PostgreSQL has no mirror (other instances write too).
    #[arg(long, env = "MIRROR_MB", default_value_t = crate::store::DEFAULT_MIRROR_MB, global = true)]
    pub mirror_mb: usize,
    /// Database connections serving reads (PostgreSQL; SQLite when the mirror is off).
    #[arg(long, env = "READ_CONNECTIONS", default_value_t = crate::store::DEFAULT_READ_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=MAX_READ_CONNECTIONS), global = true)]
    pub read_connections: u32,
    /// PostgreSQL: milliseconds a statement may run (a lock held elsewhere, a hung server)
    /// before the request is answered INTERNAL_ERROR.
    #[arg(long = "statement-timeout-ms", env = "STATEMENT_TIMEOUT_MS", default_value_t = crate::store::DEFAULT_STATEMENT_TIMEOUT_MS, value_parser = parse_millis_count, global = true)]
    pub statement_timeout_ms: u64,
    /// Shifts this process's clock by this many milliseconds: for tests of instances whose
    /// clocks disagree.
    #[arg(
        long,
        env = "KV_CLOCK_OFFSET_MS",
        default_value_t = 0,
        allow_hyphen_values = true,
        hide = true,
        global = true
    )]
    pub clock_offset_ms: i64,
    /// Async worker threads; 1 runs everything on one thread (SQLite has its own).
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1, value_parser = parse_worker_threads, global = true)]
    pub worker_threads: usize,
    #[command(flatten)]
    pub credentials: NatsCredentials,
    /// NATS queue group shared by all instances.
    #[arg(long, env = "QUEUE_GROUP", default_value = nats_rpc::DEFAULT_QUEUE_GROUP, value_parser = parse_queue_group, global = true)]
    pub queue_group: String,
    /// Also serve rosey.db.kv.<plugin_name>.set|get|delete|list, taking the plugin from the
    /// subject, so NATS permissions can confine each plugin to its own keys.
    #[arg(long, env = "PLUGIN_SUBJECTS", global = true)]
    pub plugin_subjects: bool,
    /// Seconds to keep trying to reach NATS at start (with backoff, each failure logged)
    /// before giving up with exit status 1: the bus may come up after the service.
    #[arg(long = "nats-connect-timeout", env = "NATS_CONNECT_TIMEOUT_SECS", default_value = "10", value_parser = parse_seconds, global = true)]
    pub nats_connect_timeout: Duration,
    /// Serve Prometheus metrics on http://ADDR/metrics and a health probe on /healthz (200 when
    /// NATS is connected and the database takes writes, else 503 with the reason), e.g.
    /// `0.0.0.0:9090`. Default: off.
    #[arg(long, env = "METRICS_ADDR", global = true)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// How kv-service proves who it is to NATS; any combination the server asks for.
#[derive(Debug, Clone, Default, Args)]
pub struct NatsCredentials {
    /// NATS user name (with `--nats-password`).
    #[arg(long, env = "NATS_USER", requires = "nats_password", global = true)]
    pub nats_user: Option<String>,
    /// NATS password.
    #[arg(
        long,
        env = "NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user",
        global = true
    )]
    pub nats_password: Option<Secret>,
    /// NATS token.
    #[arg(long, env = "NATS_TOKEN", hide_env_values = true, global = true)]
    pub nats_token: Option<Secret>,
    /// File holding an NKey seed (`SU…`).
    #[arg(long, env = "NATS_NKEY_SEED_FILE", global = true)]
    pub nats_nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and NKey seed).
    #[arg(long, env = "NATS_CREDS", global = true)]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server's TLS certificate; implies TLS.
    #[arg(long, env = "NATS_TLS_CA", global = true)]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (with `--nats-tls-key`).
    #[arg(long, env = "NATS_TLS_CERT", requires = "nats_tls_key", global = true)]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS.
    #[arg(long, env = "NATS_TLS_KEY", requires = "nats_tls_cert", global = true)]
    pub nats_tls_key: Option<PathBuf>,
}

impl NatsCredentials {
    /// Adds these credentials to `options`. Fails, naming the file, when a file cannot be read.
    pub async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, crate::Error> {
        if let (Some(user), Some(password)) = (&self.nats_user, &self.nats_password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(token) = &self.nats_token {
            options = options.token(token.expose().to_owned());
        }
        if let Some(path) = &self.nats_nkey_seed_file {
            let seed =
                std::fs::read_to_string(path).map_err(|source| crate::Error::Credentials {
                    action: "read the NKey seed file",
                    path: path.clone(),
                    source,
                })?;
            options = options.nkey(seed.trim().to_owned());
        }
        if let Some(path) = &self.nats_creds {
            options = options.credentials_file(path).await.map_err(|source| {
                crate::Error::Credentials {
                    action: "use the credentials file",
                    path: path.clone(),
                    source,
                }
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

/// The longest duration a millisecond option takes: an hour.
const MAX_MILLIS: u64 = 3_600_000;
/// The longest duration a seconds option takes: a year.
const MAX_SECONDS: u64 = 31_536_000;

fn parse_millis(text: &str) -> Result<Duration, String> {
    parse_millis_count(text).map(Duration::from_millis)
}

fn parse_millis_count(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(millis @ 1..=MAX_MILLIS) => Ok(millis),
        _ => Err(format!(
            "`{text}` is not a whole number of milliseconds from 1 to {MAX_MILLIS}"
        )),
    }
}

/// The most requests `--max-in-flight` allows (each holds its request's bytes meanwhile).
const MAX_IN_FLIGHT_LIMIT: usize = 1_000_000;

fn parse_in_flight(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(limit) if (1..=MAX_IN_FLIGHT_LIMIT).contains(&limit) => Ok(limit),
        _ => Err(format!(
            "`{text}` is not a whole number from 1 to {MAX_IN_FLIGHT_LIMIT}"
        )),
    }
}

/// The most `--worker-threads` allows: far past any gain on a machine this service runs on,
/// and short of what the system refuses to spawn.
const MAX_WORKER_THREADS: usize = 256;

fn parse_worker_threads(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(threads @ 1..=MAX_WORKER_THREADS) => Ok(threads),
        _ => Err(format!(
            "`{text}` is not a whole number from 1 to {MAX_WORKER_THREADS}"
        )),
    }
}

fn parse_queue_group(text: &str) -> Result<String, String> {
    if text.is_empty() || text.contains(char::is_whitespace) {
        Err(format!("`{text}` must be non-empty, without whitespace"))
    } else {
        Ok(text.to_owned())
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(seconds @ 1..=MAX_SECONDS) => Ok(Duration::from_secs(seconds)),
        _ => Err(format!(
            "`{text}` is not a whole number of seconds from 1 to {MAX_SECONDS}"
        )),
    }
}

/// `nats://user:secret@host:4222` → `nats://***@host:4222` (also `postgres://…`, whose
/// `password=` parameter goes too), for logs and error messages.
pub fn redact_url(url: &str) -> String {
    // Query passwords first, so that hiding the credentials (up to an `@`, which may stand in
    // a query) can only hide more.
    redact_userinfo(&redact_query_passwords(url))
}

/// `password=…` and `sslpassword=…` parameters (after `?` or `&`, any case): value hidden.
fn redact_query_passwords(url: &str) -> String {
    let lower = url.to_ascii_lowercase();
    let mut redacted = String::with_capacity(url.len());
    let mut copied = 0;
    for (at, _) in lower.match_indices("password=") {
        let name_start = if lower[..at].ends_with("ssl") {
            at - 3
        } else {
            at
        };
        let starts_param = url[..name_start].ends_with(['?', '&']);
        let value = at + "password=".len();
        if !starts_param || value < copied {
            continue;
        }
        let end = url[value..]
            .find('&')
            .map_or(url.len(), |next| value + next);
        redacted.push_str(&url[copied..value]);
        redacted.push_str("***");
        // A value holding an `@` (`kv:a&password=b@db`: the parameter was in fact inside the
        // credentials) keeps what follows its last `@`, so the credentials' rule still finds
        // it and hides everything before.
        copied = url[value..end].rfind('@').map_or(end, |at| value + at);
    }
    redacted.push_str(&url[copied..]);
    redacted
}

/// Each server's part up to its last `@` is credentials, replaced whole whatever it holds: a
/// password written unencoded may contain `?`, `,`, `/`, `#` or even `://`. Servers are
/// separated by a `,` that starts another `scheme://` (NATS takes a list), or by any `,` in a
/// list without schemes. An `@` in a query makes more than the credentials go, never less.
fn redact_userinfo(url: &str) -> String {
    let schemes = url.contains("://");
    let starts_server = |rest: &str| {
        let name = rest
            .find(|c: char| !crate::store::is_scheme_char(c))
            .unwrap_or(rest.len());
        !schemes || (name > 0 && rest[name..].starts_with("://"))
    };
    let mut servers = Vec::new();
    let mut start = 0;
    for (comma, _) in url.match_indices(',') {
        if starts_server(&url[comma + 1..]) {
            servers.push(&url[start..comma]);
            start = comma + 1;
        }
    }
    servers.push(&url[start..]);
    servers
        .into_iter()
        .map(|server| {
            let (scheme, rest) = match server.split_once("://") {
                Some((scheme, rest)) => (Some(scheme), rest),
                None => (None, server),
            };
            let rest = match rest.rfind('@') {
                Some(at) => format!("***{}", &rest[at..]),
                None => rest.to_owned(),
            };
            match scheme {
                Some(scheme) => format!("{scheme}://{rest}"),
                None => rest,
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl ServeConfig {
    /// Every setting at its default, as the command line declares it (the environment is not
    /// read): for embedding the service, and for tests that change a few settings.
    pub fn defaults() -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command()
            .mut_args(|arg| arg.env(None::<&str>))
            .no_binary_name(true)
            .try_get_matches_from(std::iter::empty::<String>())
            .expect("the declared defaults parse");
        ServeConfig::from_arg_matches(&matches).expect("the declared defaults are a config")
    }

    /// How the store is opened for serving.
    pub(crate) fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            url: self.database_url.clone(),
            synchronous_full: self.synchronous_full,
            read_connections: self.read_connections,
            mirror_budget_bytes: self.mirror_mb << 20,
            statement_timeout: Duration::from_millis(self.statement_timeout_ms),
            clock_offset_ms: self.clock_offset_ms,
            must_exist: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Cli, redact_url};
    use clap::CommandFactory;

    /// The README's configuration table: each row's cells (setting, env, flag, default), as
    /// written.
    fn readme_table() -> Vec<Vec<&'static str>> {
        let readme = include_str!("../../README.md");
        let table = readme
            .split("| setting | env | flag | default |\n|---|---|---|---|\n")
            .nth(1)
            .expect("the README's configuration table");
        table
            .lines()
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                cells[1..cells.len() - 1].to_vec()
            })
            .collect()
    }

    /// `ServeConfig::defaults` is what the command line gives when nothing is set: the same
    /// declared defaults, read without the environment.
    #[test]
    fn defaults_are_the_command_lines() {
        let config = super::ServeConfig::defaults();
        assert_eq!(config.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(config.database_url, "sqlite://kv.db");
        assert_eq!(config.purge_interval, super::Duration::from_secs(300));
        assert_eq!(config.nats_connect_timeout, super::Duration::from_secs(10));
        assert_eq!(config.max_in_flight, nats_rpc::DEFAULT_MAX_IN_FLIGHT);
        assert_eq!(
            config.read_connections,
            crate::store::DEFAULT_READ_CONNECTIONS
        );
        assert_eq!(config.worker_threads, 1);
        assert_eq!(config.queue_group, nats_rpc::DEFAULT_QUEUE_GROUP);
        assert_eq!(config.request_timeout, None);
        assert!(!config.synchronous_full && !config.plugin_subjects);
    }

    /// Each default in the README's table is the one clap applies (a switch, or an option with
    /// no value by default, is documented as "off" or "none"), each documented flag reads the
    /// variable the table names, and every setting a user can give is in the table.
    #[test]
    fn the_readme_documents_every_setting_with_its_default() {
        let mut command = Cli::command();
        command.build(); // applies the implicit defaults (`false` for a switch)
        let table = readme_table();
        let unquote = |cell: &str| cell.trim_matches('`').to_owned();
        let mut checked = 0;
        for row in &table {
            let (env, flag, default) = (unquote(row[1]), unquote(row[2]), unquote(row[3]));
            // One setting, one flag (RUST_LOG has none; the credentials rows list several).
            if !flag.starts_with("--") || flag.contains(['`', ',', '/']) {
                continue;
            }
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_long().map(|long| format!("--{long}")) == Some(flag.clone()))
                .unwrap_or_else(|| panic!("README documents {flag}, which kv-service lacks"));
            assert_eq!(
                arg.get_env().and_then(|env| env.to_str()),
                Some(env.as_str()),
                "{flag}"
            );
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect();
            let expected: Vec<String> = if !(default.starts_with("off") || default == "none") {
                vec![default.clone()]
            } else if arg.get_action().takes_values() {
                Vec::new()
            } else {
                vec!["false".to_owned()] // a switch
            };
            assert_eq!(defaults, expected, "the default of {flag}");
            checked += 1;
        }
        assert!(checked >= 10, "{table:?}");
        let documented: Vec<&str> = table
            .iter()
            .flat_map(|row| row[2].split('`'))
            .filter(|word| word.starts_with("--"))
            .collect();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if arg.is_hide_set() || ["help", "version"].contains(&long) {
                continue;
            }
            let flag = format!("--{long}");
            assert!(
                documented.contains(&flag.as_str()),
                "{flag} is missing from the README's table"
            );
        }
    }

    #[test]
    fn redact_url_hides_user_info_and_password_parameters() {
        for (url, shown) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            ("nats://alice:pw@h:4222", "nats://***@h:4222"),
            (
                "nats://a:b@h1:1,nats://c:d@h2:2",
                "nats://***@h1:1,nats://***@h2:2",
            ),
            ("tok@h:4222", "***@h:4222"),
            (
                "postgres://kv:s3cret@db:5432/kv",
                "postgres://***@db:5432/kv",
            ),
            (
                "postgresql://db/kv?user=kv&password=s3cret&sslmode=require",
                "postgresql://db/kv?user=kv&password=***&sslmode=require",
            ),
            (
                "postgres://db/kv?SSLPASSWORD=x",
                "postgres://db/kv?SSLPASSWORD=***",
            ),
            // Unencoded passwords holding the query's, the list's or the path's separators.
            (
                "postgres://kv:s3cr?t@127.0.0.1:5432/kv",
                "postgres://***@127.0.0.1:5432/kv",
            ),
            (
                "postgres://kv:a/b#c,d@db/kv?sslmode=require",
                "postgres://***@db/kv?sslmode=require",
            ),
            (
                "nats://a:p,q@h1:1,nats://c:d?e@h2:2",
                "nats://***@h1:1,nats://***@h2:2",
            ),
            // An `@` in the query: the credentials' rule hides more, the password goes first.
            (
                "postgres://db/kv?user=kv@corp&password=s3cret",
                "postgres://***@corp&password=***",
            ),
            (
                "postgres://db/kv?sslmode=require&SSLPassword=s3cret&x=1",
                "postgres://db/kv?sslmode=require&SSLPassword=***&x=1",
            ),
            // What looks like a password parameter inside the credentials hides them all.
            ("postgres://kv:a&password=b@db/kv", "postgres://***@db/kv"),
            ("postgres://kv:x?password=y@db/kv", "postgres://***@db/kv"),
            // `://` inside a password is not another server; a bare list keeps every host.
            ("nats://u:ab://cd@h:4222", "nats://***@h:4222"),
            ("a@h1:4222,b@h2:4222", "***@h1:4222,***@h2:4222"),
            ("tls://u:p@h1:1,tls://h2:2", "tls://***@h1:1,tls://h2:2"),
            ("sqlite://kv.db", "sqlite://kv.db"),
            ("sqlite://kv.db?mode=rwc", "sqlite://kv.db?mode=rwc"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }
}
