//! A private PostgreSQL cluster per test. A cluster is a copy of one template made by `initdb`
//! once per machine (kept in the system's temp folder, keyed by the PostgreSQL version), started
//! with `postgres` on a free loopback port; as root, both run as the `postgres` user through
//! `setpriv`, which execs, so the child's PID is the postmaster's and killing it kills the
//! server. Dropping a [`Postgres`] stops the server and deletes its folder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A PostgreSQL server owned by the test, on its own copy of the template cluster.
#[derive(Debug)]
pub struct Postgres {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    settings: Vec<(String, String)>,
}

impl Postgres {
    /// Starts a fresh cluster (trust authentication, user `postgres`, database `postgres`,
    /// `fsync` and `synchronous_commit` on, as in production) and waits until it accepts
    /// connections.
    ///
    /// # Panics
    /// When PostgreSQL is not installed or does not come up: the message says how to install it.
    pub fn start() -> Postgres {
        Self::start_with(&[])
    }

    /// Like [`Postgres::start`], with extra server settings (`-c name=value`).
    pub fn start_with(settings: &[(&str, &str)]) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("kv-pg-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        run(
            Command::new("cp").arg("-a").arg(template()).arg(&data),
            "copy the template cluster",
        );
        if let Some((uid, gid)) = server_user() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown temp dir");
        }
        let settings: Vec<(String, String)> = settings
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let mut server = Postgres {
            child: None,
            port: 0,
            dir,
            settings,
        };
        let mut last = String::new();
        // A port found free can be taken before the server binds it; try a few.
        for _ in 0..5 {
            server.port = crate::free_port();
            match server.spawn(Duration::from_secs(60)) {
                Ok(()) => return server,
                Err(err) => last = err,
            }
        }
        panic!("could not start PostgreSQL: {last}");
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of database `database` on this server.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's PID (`None` while stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `sql` with psql on database `database` and returns what it printed, unaligned and
    /// tuples only (`a|b` per row).
    ///
    /// # Panics
    /// When psql fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(bin("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            output.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("UTF-8")
            .trim()
            .to_owned()
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url_of(name)
    }

    /// Kills the postmaster (SIGKILL, as a crash would) and waits for it; its backends notice
    /// and exit on their own.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with `signal` (`-INT`: fast shutdown; `-TERM`: smart; `-QUIT`:
    /// immediate) and waits for it.
    pub fn stop(&mut self, signal: &str) {
        if let Some(mut child) = self.child.take() {
            crate::signal(signal, child.id());
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. `-STOP`, `-CONT`) to the postmaster and every backend.
    pub fn signal_all(&self, signal: &str) {
        let Some(pid) = self.pid() else { return };
        crate::signal(signal, pid);
        let children = Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .output()
            .expect("pgrep runs");
        for child in String::from_utf8_lossy(&children.stdout).split_whitespace() {
            if let Ok(child) = child.parse() {
                crate::signal(signal, child);
            }
        }
    }

    /// Starts the server again on the same data and port, after [`Postgres::kill`] or
    /// [`Postgres::stop`] (crash recovery runs first if it was killed).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.spawn(Duration::from_secs(60)) {
                Ok(()) => return,
                // The killed server's backends may still hold its shared memory for a moment.
                Err(err) if Instant::now() > deadline => {
                    panic!("PostgreSQL did not restart on port {}: {err}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    fn spawn(&mut self, limit: Duration) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))
            .map_err(|err| err.to_string())?;
        let mut command = as_server_user(bin("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            // Restarts after a kill skip the slow per-file fsync of the data folder.
            .args(["-c", "recovery_init_sync_method=syncfs"]);
        for (name, value) in &self.settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|err| err.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|err| format!("cannot run postgres: {err}"))?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().map_err(|err| err.to_string())? {
                return Err(format!("postgres exited ({status}):\n{}", self.log()));
            }
            let ready = Command::new(bin("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map_err(|err| err.to_string())?;
            if ready.success() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("postgres not ready within {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate shutdown: the postmaster stops its backends and exits at once.
        self.stop("-QUIT");
    }
}

/// The template cluster, made by `initdb` the first time any test on this machine needs it.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let version = Command::new(bin("postgres"))
            .arg("--version")
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .replace(' ', "-")
            })
            .unwrap_or_else(|err| panic!("{}", missing(&err.to_string())));
        let user = server_user().map_or(String::from("self"), |(uid, _)| uid.to_string());
        let path = std::env::temp_dir().join(format!("kv-service-pg-template-{version}-{user}"));
        if path.join("PG_VERSION").is_file() {
            return path;
        }
        // Made beside its final name and renamed into place, so that concurrent test
        // processes never see half a cluster.
        let staging = std::env::temp_dir().join(format!(
            "kv-service-pg-template-{version}-{user}.{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging).expect("staging folder");
        if let Some((uid, gid)) = server_user() {
            std::os::unix::fs::chown(&staging, Some(uid), Some(gid)).expect("chown staging");
        }
        run(
            as_server_user(bin("initdb"))
                .arg("-D")
                .arg(&staging)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"])
                .args(["--locale=C.UTF-8", "--no-sync"]),
            "initdb",
        );
        if std::fs::rename(&staging, &path).is_err() {
            // Another process made it first.
            let _ = std::fs::remove_dir_all(&staging);
        }
        path
    })
}

/// `(uid, gid)` of the `postgres` user when running as root (PostgreSQL refuses root), else
/// `None`: the server runs as the current user.
fn server_user() -> Option<(u32, u32)> {
    if !running_as_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let entry = passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&"postgres"))
        .expect("running as root needs a `postgres` user (apt-get install -y postgresql)");
    Some((
        entry[2].parse().expect("uid"),
        entry[3].parse().expect("gid"),
    ))
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("Uid:"))?;
            line.split_whitespace().nth(2).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// `program`, run as the `postgres` user when we are root (`setpriv` execs it).
fn as_server_user(program: PathBuf) -> Command {
    if server_user().is_some() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL program: from `$KV_TEST_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
fn bin(program: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("KV_TEST_PG_BIN") {
            return PathBuf::from(dir);
        }
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.parse().ok()?;
                let dir = entry.path().join("bin");
                dir.join("initdb").is_file().then_some((version, dir))
            })
            .collect();
        found.sort();
        found
            .pop()
            .map(|(_, dir)| dir)
            .unwrap_or_else(|| panic!("{}", missing("no /usr/lib/postgresql/*/bin/initdb")))
    })
    .join(program)
}

fn missing(detail: &str) -> String {
    format!(
        "PostgreSQL server binaries not found ({detail}); install them with \
         `apt-get install -y postgresql`, or point KV_TEST_PG_BIN at their folder"
    )
}

fn run(command: &mut Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
