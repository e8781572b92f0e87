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
    /// Starts `nats-server` (from `PATH`, else `/usr/sbin`) on a free loopback port and waits
    /// until it accepts connections.
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
        let mut last_error = None;
        // A port found free can be taken before the server binds it; try a few.
        for _ in 0..5 {
            let port = free_port().expect("no free loopback port");
            let mut server = NatsServer {
                child: None,
                port,
                config: config.clone(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(err) => last_error = Some(err),
            }
        }
        panic!("could not start nats-server: {last_error:?}");
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

    fn spawn(&mut self) -> io::Result<()> {
        let mut command = Command::new(binary());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command.spawn().map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot run nats-server ({err}); install it: apt-get install -y nats-server"),
            )
        })?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
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

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
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
