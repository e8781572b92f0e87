//! A private `nats-server` child, and waits for NATS micro services to answer.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

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

fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// Waits until exactly `count` instances of the kv-service answer `$SRV.PING.kv-service` on
/// `client`'s server (instances stopped before are gone by then). Counted here, not through
/// nats-rpc's discovery, so a fault in the code under test cannot hide in its harness.
///
/// # Panics
/// When they do not within a minute.
pub async fn wait_for_instances(client: &async_nats::Client, count: usize) {
    for _ in 0..300 {
        if answering(client, "kv-service", Duration::from_millis(200)).await == Some(count) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{count} kv-service instances did not come up");
}

/// How many distinct instances of service `name` answer a ping within `window`.
async fn answering(client: &async_nats::Client, name: &str, window: Duration) -> Option<usize> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.ok()?;
    client
        .publish_with_reply(format!("$SRV.PING.{name}"), inbox, bytes::Bytes::new())
        .await
        .ok()?;
    client.flush().await.ok()?;
    let deadline = tokio::time::Instant::now() + window;
    let mut ids = std::collections::HashSet::new();
    while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, replies.next()).await {
        let Ok(reply) = serde_json::from_slice::<serde_json::Value>(&reply.payload) else {
            continue;
        };
        if let (true, Some(id)) = (reply["name"] == name, reply["id"].as_str()) {
            ids.insert(id.to_owned());
        }
    }
    Some(ids.len())
}
