//! Storage faults below SQLite, with real processes: the disk filling up under kv-service (a
//! small tmpfs), and a database whose directory is read-only. Replies are INTERNAL_ERROR with the
//! generic message, the service stays up, nothing acknowledged is lost, and writes work again
//! once the fault clears.
//!
//! Mounting needs root (CI runs as root); elsewhere these tests say so and pass without running.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{Running, ready};
use serde_json::{Value, json};
use test_support::NatsServer;
use test_support::call;
use test_support::envelope::{self, internal_error, ok};

/// A tmpfs of `size` mounted on a fresh folder, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` when not root (mounting is not allowed); on CI that is a failure, not a skip.
    fn mount(size: &str) -> Option<Tmpfs> {
        let uid = Command::new("id").arg("-u").output().unwrap().stdout;
        let root = uid.trim_ascii() == b"0";
        if !root {
            assert!(
                std::env::var_os("CI").is_none(),
                "disk fault tests need root to mount a tmpfs, and CI must run them"
            );
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        run(
            "mount",
            &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"],
            &path,
        );
        Some(Tmpfs { path, _dir: dir })
    }

    /// Remounts read-only (`false`) or read-write (`true`); needs no file open for writing.
    fn writable(&self, writable: bool) {
        let mode = if writable { "remount,rw" } else { "remount,ro" };
        run("mount", &["-o", mode], &self.path);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn run(program: &str, args: &[&str], path: &Path) {
    let status = Command::new(program).args(args).arg(path).status().unwrap();
    assert!(
        status.success(),
        "{program} {args:?} {} failed",
        path.display()
    );
}

/// Writes zeros to `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0_u8; 64 * 1024];
    let mut written = 0_u64;
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(err) => {
                assert_eq!(err.raw_os_error(), Some(28), "ENOSPC expected, got {err}");
                break;
            }
        }
    }
    written
}

async fn set(client: &async_nats::Client, key: &str, value: &str) -> Value {
    call(
        client,
        "set",
        json!({"plugin_name": "disk", "key": key, "value": value}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_internal_error_and_recovers_when_space_returns() {
    let Some(tmpfs) = Tmpfs::mount("8m") else {
        return;
    };
    let nats = NatsServer::start();
    let db_dir = tempfile::tempdir_in(&tmpfs.path).unwrap();
    let service = Running::start_in(&nats.url(), db_dir, &[]);
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;
    assert_eq!(set(&client, "before", "kept").await, ok());

    let filler = tmpfs.path.join("filler");
    let filled = fill(&filler);
    println!("filled the tmpfs with {filled} bytes");

    // 60 KB values until the WAL can grow no more: every reply is a success (committed) or
    // the generic INTERNAL_ERROR, and some are the latter.
    let big = "x".repeat(60_000);
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for n in 0..400 {
        let key = format!("big-{n}");
        let reply = set(&client, &key, &big).await;
        if reply == ok() {
            acknowledged.push(key);
        } else {
            assert_eq!(
                reply,
                internal_error(),
                "a disk fault is INTERNAL_ERROR, nothing else"
            );
            failed += 1;
            if failed == 5 {
                break;
            }
        }
    }
    assert_eq!(failed, 5, "the full disk never failed a write");
    println!(
        "disk full: {} sets acknowledged before the first failure, then INTERNAL_ERROR",
        acknowledged.len()
    );
    // Still serving: reads answer, a failed write left no trace.
    assert_eq!(
        call(
            &client,
            "get",
            json!({"plugin_name": "disk", "key": "before"})
        )
        .await,
        envelope::found(json!("kept"))
    );

    std::fs::remove_file(&filler).unwrap();
    let cleared = Instant::now();
    loop {
        let reply = set(&client, "after", "written").await;
        if reply == ok() {
            break;
        }
        assert_eq!(reply, internal_error());
        assert!(
            cleared.elapsed() < Duration::from_secs(10),
            "writes did not recover within 10 s of the space returning"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "writes recovered {:?} after the space returned",
        cleared.elapsed()
    );

    // Everything acknowledged survives a restart on the same database.
    service.signal("-TERM");
    let mut service = service;
    let (status, log) = service.wait(Duration::from_secs(15));
    assert!(status.success(), "{log}");
    assert!(!log.contains(&big[..100]), "values never reach the log");
    // The operator's log says what the client was not told.
    assert!(log.contains("database or disk is full"), "{log}");
    let db_dir = service.kill9();
    let _again = Running::start_in(&nats.url(), db_dir, &[]);
    ready(&client).await;
    for key in acknowledged
        .iter()
        .map(String::as_str)
        .chain(["before", "after"])
    {
        let reply = call(&client, "get", json!({"plugin_name": "disk", "key": key})).await;
        assert_eq!(
            reply["data"]["exists"],
            json!(true),
            "{key} was acknowledged, then lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_directory_stops_start_with_a_clear_error_until_it_is_writable() {
    let Some(tmpfs) = Tmpfs::mount("8m") else {
        return;
    };
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut db_dir = tempfile::tempdir_in(&tmpfs.path).unwrap();
    // After a clean stop SQLite may have removed its WAL and shared-memory files (then it
    // cannot even open the database read-only); after kill -9 they are still there (then it
    // opens read-only and only a write shows the fault). Both must refuse to start.
    for (round, stop) in ["SIGTERM", "kill -9"].into_iter().enumerate() {
        let mut service = Running::start_in(&nats.url(), db_dir, &[]);
        ready(&client).await;
        let key = format!("kept-{round}");
        assert_eq!(set(&client, &key, "across the fault").await, ok());
        if stop == "SIGTERM" {
            service.signal("-TERM");
            let (status, log) = service.wait(Duration::from_secs(15));
            assert!(status.success(), "{log}");
        }
        db_dir = service.kill9();

        tmpfs.writable(false);
        let mut refused = Running::start_in(&nats.url(), db_dir, &[]);
        let (status, log) = refused.wait(Duration::from_secs(15));
        assert!(
            !status.success(),
            "after {stop}: must not serve a database it cannot write: {log}"
        );
        assert!(log.contains("cannot open database `sqlite://"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
        println!(
            "read-only after {stop}: {}",
            log.lines().last().unwrap_or_default()
        );
        db_dir = refused.kill9();

        tmpfs.writable(true);
        let service = Running::start_in(&nats.url(), db_dir, &[]);
        ready(&client).await;
        for earlier in 0..=round {
            assert_eq!(
                call(
                    &client,
                    "get",
                    json!({"plugin_name": "disk", "key": format!("kept-{earlier}")})
                )
                .await,
                envelope::found(json!("across the fault"))
            );
        }
        assert_eq!(set(&client, "new", "write").await, ok());
        db_dir = service.kill9();
    }
}
