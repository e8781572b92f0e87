//! The kv-service binary: parse flags and environment, set up logging, run. Logic is in lib.rs.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use kv_service::config::{Cli, Command};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// jemalloc instead of the system allocator: the request path allocates and frees across threads
/// (request tasks, the SQLite writer), where glibc malloc spends about a fifth of a set's
/// instructions.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // async-nats logs message bodies (stored values) at trace and the server URL, credentials
    // included, at debug: whatever RUST_LOG asks for, it gets at most info. nats-rpc's
    // per-request spans are for trace exporters, not the text log: formatting their fields for
    // every request costs ~7% of get throughput, so the log leaves them out, which disables
    // them outright.
    let requested = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let secrets_safe = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("async_nats", LevelFilter::INFO)
        .with_target(nats_rpc::telemetry::SPAN_TARGET, LevelFilter::OFF);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(requested)
                .with_filter(secrets_safe),
        )
        .init();
    let cli = Cli::parse();
    // One thread by default: on a small machine shared with nats-server, a single-threaded
    // runtime beside SQLite's worker thread avoids cross-thread wake-ups on every request.
    let runtime = match cli.serve.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        threads => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build(),
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(err) => {
            tracing::error!("cannot start the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Prints one line of a command's report (the paths written, a copy's progress). A reader that
/// stopped reading (`kv-service schemas | head -1`) ends the report, quietly, and not the
/// work, where `println!` would panic.
fn print_line(line: impl std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

async fn run(cli: Cli) -> ExitCode {
    // Installed before anything else happens, so SIGTERM during start-up (the store opening,
    // NATS retried) is a clean stop too, not the default kill.
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(err) => {
            tracing::error!("cannot install signal handlers: {err}");
            return ExitCode::FAILURE;
        }
    };
    let stopped_by = std::sync::Arc::new(std::sync::OnceLock::new());
    let outcome = match cli.command {
        Some(Command::Schemas { dir }) => kv_service::write_schemas(&dir)
            .map(|written| {
                for path in written {
                    print_line(path.display());
                }
            })
            .map_err(|source| kv_service::Error::Write { path: dir, source }),
        Some(Command::Asyncapi { file }) => {
            std::fs::write(&file, kv_service::rendered_asyncapi(&cli.serve.queue_group))
                .map(|()| print_line(file.display()))
                .map_err(|source| kv_service::Error::Write { path: file, source })
        }
        Some(Command::Copy { from, to }) => {
            let timeout = std::time::Duration::from_millis(cli.serve.statement_timeout_ms);
            copy(&from, &to, timeout).await
        }
        Some(Command::Serve) | None => {
            let signal = stopped_by.clone();
            let shutdown = async move {
                let name = signals.first().await;
                tracing::info!("{name} received");
                let _ = signal.set(name);
            };
            kv_service::serve(&cli.serve, shutdown).await
        }
    };
    match outcome {
        Ok(()) => {
            if let Some(name) = stopped_by.get() {
                tracing::info!("stopped by {name}; exit status 0");
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("{}", chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// `error: cause: its cause`: the whole chain of an error, as one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// How often `kv-service copy` prints its progress, at most.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// `kv-service copy`: a progress line at most once a second, and one line at the end.
async fn copy(
    from: &str,
    to: &str,
    statement_timeout: std::time::Duration,
) -> Result<(), kv_service::Error> {
    let started = std::time::Instant::now();
    let mut shown = started;
    let copied = kv_service::copy(from, to, statement_timeout, |copied| {
        if shown.elapsed() >= PROGRESS_EVERY {
            shown = std::time::Instant::now();
            print_line(format_args!("copied {copied} keys so far"));
        }
    })
    .await?;
    print_line(format_args!(
        "copied {copied} live keys from {} to {} in {:.1} s",
        kv_service::config::redact_url(from),
        kv_service::config::redact_url(to),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// SIGINT and SIGTERM, caught from the moment they are installed.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The first to arrive, by name.
    async fn first(mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests {
    use kv_service::Error;
    use kv_service::store::StoreError;

    use super::chain;

    #[test]
    fn chain_names_every_cause_once() {
        let err = Error::Write {
            path: "/srv/schemas".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(chain(&err), "cannot write /srv/schemas: disk full");

        // A StoreError shows its sqlx cause in its message, once.
        let cause = sqlx::Error::PoolTimedOut.to_string();
        let err = Error::Open {
            database: "sqlite://kv.db".into(),
            source: StoreError::Database(sqlx::Error::PoolTimedOut),
        };
        assert_eq!(
            chain(&err),
            format!("cannot open database `sqlite://kv.db`: database error: {cause}")
        );

        let err = Error::CopyWrite(StoreError::Closed);
        assert_eq!(
            chain(&err),
            "cannot write the target: the store's writer has stopped"
        );
    }
}
