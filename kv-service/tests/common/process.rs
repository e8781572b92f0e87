//! kv-service as a child process, the way operators run it.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_kv-service");

pub struct Running {
    pub child: Child,
    pub dir: tempfile::TempDir,
    /// stderr, drained continuously so a chatty log never blocks the service on a full pipe.
    log: Option<std::thread::JoinHandle<String>>,
}

impl Running {
    /// Starts kv-service on a fresh database.
    pub fn start(nats_url: &str) -> Running {
        Self::start_in(nats_url, tempfile::tempdir().unwrap(), &[])
    }

    /// Starts kv-service on the database in `dir` (kept), with extra environment.
    pub fn start_in(nats_url: &str, dir: tempfile::TempDir, env: &[(&str, &str)]) -> Running {
        let mut child = Command::new(BIN)
            .env("NATS_URL", nats_url)
            .env("DATABASE_URL", database_url(dir.path()))
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kv-service runs");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let log = std::thread::spawn(move || {
            let mut log = String::new();
            let _ = stderr.read_to_string(&mut log);
            log
        });
        Running {
            child,
            dir,
            log: Some(log),
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL, and the database folder back for a restart.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// Peak resident memory so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|line| line.starts_with("VmHWM:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    pub fn wait(&mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = self
                    .log
                    .take()
                    .map(|log| log.join().unwrap())
                    .unwrap_or_default();
                return (status, log);
            }
            assert!(
                Instant::now() < deadline,
                "kv-service still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn database_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("kv.db").display())
}

pub async fn ready(client: &async_nats::Client) {
    nats_rpc::testing::wait_for_service(client, "kv-service").await;
}

pub async fn call(client: &async_nats::Client, op: &str, body: Value) -> Value {
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(format!("rosey.db.kv.{op}"), body.to_string().into()),
    )
    .await
    .expect("a reply within 5 s")
    .expect("request");
    serde_json::from_slice(&reply.payload).unwrap()
}
