//! kv-service as a child process, the way operators run it, on a SQLite file in a folder of
//! its own (`test_support::Service` does the process handling).

use std::ops::{Deref, DerefMut};
use std::path::Path;

use test_support::Service;

pub const BIN: &str = env!("CARGO_BIN_EXE_kv-service");

pub struct Running {
    service: Service,
    pub dir: tempfile::TempDir,
}

impl Running {
    /// Starts kv-service on a fresh database.
    pub fn start(nats_url: &str) -> Running {
        Self::start_in(nats_url, tempfile::tempdir().unwrap(), &[])
    }

    /// Starts kv-service on the database in `dir` (kept), with extra environment.
    pub fn start_in(nats_url: &str, dir: tempfile::TempDir, env: &[(&str, &str)]) -> Running {
        let database = database_url(dir.path());
        let mut all = vec![("NATS_URL", nats_url), ("DATABASE_URL", database.as_str())];
        all.extend_from_slice(env);
        Running {
            service: Service::spawn(BIN, &[], &all),
            dir,
        }
    }

    /// SIGKILL, and the database folder back for a restart.
    pub fn kill9(mut self) -> tempfile::TempDir {
        self.service.kill9();
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }
}

impl Deref for Running {
    type Target = Service;

    fn deref(&self) -> &Service {
        &self.service
    }
}

impl DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Service {
        &mut self.service
    }
}

pub fn database_url(dir: &Path) -> String {
    test_support::sqlite_url(&dir.join("kv.db"))
}

pub async fn ready(client: &async_nats::Client) {
    test_support::wait_for_service(client, "kv-service").await;
}
