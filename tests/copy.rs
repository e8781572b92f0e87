//! `kv-service copy`, as an operator moving from SQLite to PostgreSQL (and back) runs it:
//! every live key arrives with its value, expiry and timestamps, expired keys stay behind,
//! running it twice changes nothing, and a source still being served is refused.

mod common;

use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use common::{BIN, client, instance, wait_for_instances};
use serde_json::{Value, json};
use sqlx::ConnectOptions;
use test_support::NatsServer;
use test_support::Postgres;
use test_support::call;
use test_support::envelope::{absent, found, ok};

/// `(stdout, stderr)` of a successful `kv-service copy`.
fn copy(from: &str, to: &str) -> (String, String) {
    let output = Command::new(BIN)
        .args(["copy", "--from", from, "--to", to])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    );
    assert!(
        output.status.success(),
        "copy {from} -> {to}: {stdout}{stderr}"
    );
    (stdout, stderr)
}

fn value(plugin: usize, i: usize) -> Value {
    json!({"plugin": plugin, "i": i, "big": 12345678901234567890_u64, "s": format!("é\u{0}{i}")})
}

/// `(key, expires_at, created_at, updated_at)` of every row of plugin `p0`, straight from a
/// SQLite file.
async fn sqlite_rows(url: &str) -> Vec<(String, Option<i64>, i64, i64)> {
    let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .unwrap()
        .read_only(true)
        .connect()
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT key, expires_at, created_at, updated_at FROM kv_rows WHERE plugin_name = 'p0' ORDER BY key",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_moves_every_live_key_from_sqlite_to_postgres_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = test_support::sqlite_url(&dir.path().join("kv.db"));
    let nats = NatsServer::start();
    let mut service = instance(&nats.url(), &sqlite, &[]);
    let kv = client(&nats.url()).await;
    wait_for_instances(&kv, 1).await;
    // 2,500 live keys in three plugins (some with a TTL, one with U+0000 in it), 5 expiring.
    let mut bodies = Vec::new();
    for i in 0..2500 {
        let (plugin, key) = (
            i % 3,
            format!("key-{i:04}{}", if i == 7 { "\u{0}x" } else { "" }),
        );
        let mut body =
            json!({"plugin_name": format!("p{plugin}"), "key": key, "value": value(plugin, i)});
        if i % 10 == 0 {
            body["ttl_seconds"] = json!(3600);
        }
        bodies.push(body);
    }
    // 500 at a time: within the service's in-flight bound (512), past which it sheds.
    for chunk in bodies.chunks(500) {
        let writes = chunk.iter().map(|body| call(&kv, "set", body.clone()));
        for reply in futures_util::future::join_all(writes).await {
            assert_eq!(reply, ok());
        }
    }
    for i in 0..5 {
        let body =
            json!({"plugin_name": "p0", "key": format!("short-{i}"), "value": i, "ttl_seconds": 1});
        assert_eq!(call(&kv, "set", body).await, ok());
    }

    // While it is served, the file is not a source: its writes would be missed.
    let busy = Command::new(BIN)
        .args(["copy", "--from", &sqlite, "--to", "sqlite::memory:"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert_eq!(busy.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot open the source")
            && stderr.contains("in use by another kv-service process"),
        "{stderr}"
    );
    service.signal("-TERM");
    tokio::task::spawn_blocking(move || service.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let postgres = Postgres::start();
    postgres.psql("postgres", "CREATE DATABASE kv");
    let target = format!(
        "postgres://postgres:s3cr3t-pw@127.0.0.1:{}/kv",
        postgres.port()
    );
    // The statement timeout given on the command line is the copy's (it was the default,
    // whatever was given): 1 ms is too short for PostgreSQL to answer anything.
    let hasty = Command::new(BIN)
        .args(["copy", "--from", &sqlite, "--to", &target])
        .args(["--statement-timeout-ms", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&hasty.stderr);
    assert_eq!(hasty.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("within 1ms"), "{stderr}");
    for run in 0..2 {
        let (stdout, stderr) = copy(&sqlite, &target);
        let last = stdout.lines().last().unwrap_or_default();
        assert!(
            last.starts_with(&format!(
                "copied 2500 live keys from {sqlite} to postgres://***@127.0.0.1:{}/kv in ",
                postgres.port()
            )),
            "run {run}: {stdout}"
        );
        assert!(!stdout.contains("s3cr3t-pw") && !stderr.contains("s3cr3t-pw"));
    }
    assert_eq!(
        postgres.psql("kv", "SELECT count(*) FROM kv"),
        "2500",
        "twice is once"
    );
    // Expiry and timestamps arrive as they were.
    let before = sqlite_rows(&sqlite).await;
    let after: Vec<String> = postgres
        .psql(
            "kv",
            "SELECT convert_from(key, 'UTF8'), expires_at, created_at, updated_at FROM kv \
             WHERE plugin_name = 'p0' ORDER BY key",
        )
        .lines()
        .map(str::to_owned)
        .collect();
    let live: Vec<String> = before
        .iter()
        .filter(|row| !row.0.starts_with("short-") && !row.0.contains('\u{0}'))
        .map(|(key, expires, created, updated)| {
            let expires = expires.map(|at| at.to_string()).unwrap_or_default();
            format!("{key}|{expires}|{created}|{updated}")
        })
        .collect();
    assert_eq!(after.len(), 834);
    assert_eq!(after, live, "p0's rows, field by field");

    // Served from PostgreSQL: everything as it was written.
    let nats = NatsServer::start();
    let _on_postgres = instance(&nats.url(), &postgres.url_of("kv"), &[]);
    let kv = client(&nats.url()).await;
    wait_for_instances(&kv, 1).await;
    check_every_key(&kv).await;

    // And back, into a new SQLite file, while PostgreSQL is still served.
    let back = test_support::sqlite_url(&dir.path().join("back.db"));
    let (stdout, _) = copy(&postgres.url_of("kv"), &back);
    assert!(stdout.contains("copied 2500 live keys"), "{stdout}");
    let nats = NatsServer::start();
    let _on_sqlite = instance(&nats.url(), &back, &[]);
    let kv = client(&nats.url()).await;
    wait_for_instances(&kv, 1).await;
    check_every_key(&kv).await;
}

async fn check_every_key(kv: &async_nats::Client) {
    for i in 0..2500 {
        let (plugin, key) = (
            i % 3,
            format!("key-{i:04}{}", if i == 7 { "\u{0}x" } else { "" }),
        );
        let get = json!({"plugin_name": format!("p{plugin}"), "key": key});
        assert_eq!(call(kv, "get", get).await, found(value(plugin, i)), "{key}");
    }
    for i in 0..5 {
        let get = json!({"plugin_name": "p0", "key": format!("short-{i}")});
        assert_eq!(call(kv, "get", get).await, absent());
    }
    let listing = call(kv, "list", json!({"plugin_name": "p1", "limit": 10000})).await;
    assert_eq!(listing["data"]["count"], 833);
}

/// A source SQLite file that is not there is a mistyped path, not an empty store: refused,
/// naming it, and not created (it was, and the copy reported 0 keys copied, exit 0).
#[test]
fn copy_refuses_a_source_file_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("typo.db");
    let output = Command::new(BIN)
        .args([
            "copy",
            "--from",
            &test_support::sqlite_url(&missing),
            "--to",
            &test_support::sqlite_url(&dir.path().join("target.db")),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot open the source")
            && stderr.contains(&format!(
                "the SQLite file {} does not exist",
                missing.display()
            )),
        "{stderr}"
    );
    assert!(!missing.exists(), "the mistyped source was created");
}

#[test]
fn copy_refuses_one_store_onto_itself() {
    let dir = tempfile::tempdir().unwrap();
    let url = test_support::sqlite_url(&dir.path().join("kv.db"));
    // An empty file is an empty SQLite database: a source that exists.
    std::fs::File::create(dir.path().join("kv.db")).unwrap();
    let output = Command::new(BIN)
        .args(["copy", "--from", &url, "--to", &url])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // The second open of one file is refused by its lock, which says why.
    assert!(
        stderr.contains("cannot open the target") && stderr.contains("in use"),
        "{stderr}"
    );

    let postgres = Postgres::start();
    let output = Command::new(BIN)
        .args(["copy", "--from", &postgres.url(), "--to", &postgres.url()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("are one store") && stderr.contains("nothing to copy"),
        "{stderr}"
    );
}
