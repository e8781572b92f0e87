//! Test support (feature `testing`): a private `nats-server` child on a free port, killed when
//! dropped, so tests never touch a server they did not start and never collide with each other.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `nats-server` process owned by the test; killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    config: Option<PathBuf>,
}

impl NatsServer {
    /// Starts `nats-server` (from `PATH`, else `/usr/sbin`) on a loopback port it picks itself
    /// (read back from its ports file, so parallel tests never share a server) and waits until
    /// it accepts connections.
    ///
    /// # Panics
    /// When the binary is missing or the server does not come up within 10 s: a test cannot run
    /// without it, and the message says how to install it.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Like [`NatsServer::start`], with a configuration file (`-c`); the port is still chosen
    /// here and given on the command line, which overrides the file.
    pub fn start_with_config(config: impl AsRef<Path>) -> Self {
        Self::start_with(Some(config.as_ref().to_path_buf()))
    }

    fn start_with(config: Option<PathBuf>) -> Self {
        // The server picks its own port (`-p -1`) and reports it in a ports file: a port found
        // free here could be taken by another test's server before ours binds it, and then
        // both tests would talk to one server (seen as a flaky test, requests answered by the
        // other test's service).
        let mut server = NatsServer {
            child: None,
            port: 0,
            config,
        };
        if let Err(err) = server.spawn() {
            panic!("could not start nats-server: {err}");
        }
        server
    }

    /// The client URL, e.g. `nats://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on (kept across [`NatsServer::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`NatsServer::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(err) if Instant::now() > deadline => {
                    panic!("nats-server did not restart on port {}: {err}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Runs the server on `self.port`, or on a port of its own choosing when that is 0 (then
    /// read back from its ports file into `self.port`).
    fn spawn(&mut self) -> io::Result<()> {
        let mut command = Command::new(binary());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let ports_dir = std::env::temp_dir().join(format!(
            "nats-rpc-test-ports-{}-{}",
            std::process::id(),
            PORTS_DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let choose = self.port == 0;
        let port = if choose {
            std::fs::create_dir_all(&ports_dir)?;
            command.arg("--ports_file_dir").arg(&ports_dir);
            "-1".to_owned()
        } else {
            self.port.to_string()
        };
        command
            .args(["-a", "127.0.0.1", "-p", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command.spawn().map_err(|err| {
            io::Error::new(
                err.kind(),
                format!(
                    "cannot run nats-server ({err}); install it: apt-get install -y nats-server"
                ),
            )
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        if choose {
            let file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
            loop {
                if let Some(status) = child.try_wait()? {
                    let _ = std::fs::remove_dir_all(&ports_dir);
                    return Err(io::Error::other(format!("nats-server exited: {status}")));
                }
                let port = std::fs::read_to_string(&file).ok().and_then(|text| {
                    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
                    let url = ports["nats"][0].as_str()?;
                    url.rsplit(':').next()?.parse::<u16>().ok()
                });
                if let Some(port) = port {
                    self.port = port;
                    let _ = std::fs::remove_dir_all(&ports_dir);
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_dir_all(&ports_dir);
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "nats-server wrote no ports file within 10 s",
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!("nats-server exited: {status}")));
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nats-server did not accept connections within 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Distinguishes the ports-file folders of servers started by one process.
static PORTS_DIRS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until a service named `name` answers `$SRV.PING.<name>` (up to about 90 s, generous
/// for a service started under a profiler).
///
/// # Panics
/// When it never answers.
pub async fn wait_for_service(client: &async_nats::Client, name: &str) {
    let subject = format!("$SRV.PING.{name}");
    for _ in 0..400 {
        let ping = tokio::time::timeout(
            Duration::from_millis(200),
            client.request(subject.clone(), bytes::Bytes::new()),
        )
        .await;
        if let Ok(Ok(_)) = ping {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("service `{name}` did not answer {subject}");
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// Load generation for benchmarks: `in_flight` concurrent requesters on one connection, each
/// sending its next request as soon as the previous reply arrives, for `duration`.
pub mod load {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    /// What one load run measured.
    #[derive(Debug, Clone, Default)]
    pub struct Report {
        /// Replies received.
        pub requests: u64,
        /// Replies that were not success envelopes, plus requests that failed.
        pub errors: u64,
        /// Wall time of the run.
        pub elapsed: Duration,
        /// Every reply's round-trip time, sorted.
        pub latencies: Vec<Duration>,
    }

    impl Report {
        /// Replies per second.
        pub fn throughput(&self) -> f64 {
            self.requests as f64 / self.elapsed.as_secs_f64()
        }

        /// The `p`-th percentile latency (`p` in 0..=100).
        pub fn percentile(&self, p: f64) -> Duration {
            if self.latencies.is_empty() {
                return Duration::ZERO;
            }
            let rank = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
            self.latencies[rank.min(self.latencies.len() - 1)]
        }
    }

    /// Drives `subject` with `payload(i)` for the i-th request.
    pub async fn drive(
        client: &async_nats::Client,
        subject: &str,
        in_flight: usize,
        duration: Duration,
        payload: Arc<dyn Fn(u64) -> Bytes + Send + Sync>,
    ) -> Report {
        let counter = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let deadline = started + duration;
        let mut workers = Vec::with_capacity(in_flight);
        for _ in 0..in_flight {
            let client = client.clone();
            let subject = subject.to_owned();
            let counter = counter.clone();
            let payload = payload.clone();
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(4096);
                let mut errors = 0;
                while Instant::now() < deadline {
                    let index = counter.fetch_add(1, Ordering::Relaxed);
                    let body = payload(index);
                    let sent = Instant::now();
                    match client.request(subject.clone(), body).await {
                        Ok(reply) if reply.payload.starts_with(br#"{"success":true"#) => {
                            latencies.push(sent.elapsed());
                        }
                        Ok(_) => {
                            latencies.push(sent.elapsed());
                            errors += 1;
                        }
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            }));
        }
        let mut report = Report::default();
        for worker in workers {
            let (latencies, errors) = worker.await.expect("load worker");
            report.latencies.extend(latencies);
            report.errors += errors;
        }
        report.elapsed = started.elapsed();
        report.requests = report.latencies.len() as u64;
        report.latencies.sort_unstable();
        report
    }

    /// A bare async-nats responder answering every request on `subject` with `reply`: the floor
    /// any framework is measured against.
    pub async fn bare_responder(
        client: async_nats::Client,
        subject: &str,
        reply: Bytes,
    ) -> tokio::task::JoinHandle<()> {
        use futures_util::StreamExt;
        let mut subscriber = client
            .queue_subscribe(subject.to_owned(), "q".into())
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                if let Some(to) = message.reply {
                    let _ = client.publish(to, reply.clone()).await;
                }
            }
        })
    }

    /// Medians over several runs of one case: throughput and latency percentiles (µs).
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Summary {
        pub throughput: f64,
        pub p50_us: f64,
        pub p95_us: f64,
        pub p99_us: f64,
    }

    impl Summary {
        /// The medians of `runs`.
        pub fn of(runs: &[Report]) -> Summary {
            let med = |pick: &dyn Fn(&Report) -> f64| {
                median(&mut runs.iter().map(pick).collect::<Vec<_>>())
            };
            let us = |p: f64| move |r: &Report| r.percentile(p).as_secs_f64() * 1e6;
            Summary {
                throughput: med(&|r| r.throughput()),
                p50_us: med(&us(50.0)),
                p95_us: med(&us(95.0)),
                p99_us: med(&us(99.0)),
            }
        }
    }

    /// The median of `values` (0 when empty).
    pub fn median(values: &mut [f64]) -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        values.sort_by(|a, b| a.total_cmp(b));
        let mid = values.len() / 2;
        if values.len().is_multiple_of(2) {
            (values[mid - 1] + values[mid]) / 2.0
        } else {
            values[mid]
        }
    }
}
