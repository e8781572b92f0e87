//! The kv-service binary as an operator runs it: a clear failure when NATS is unreachable,
//! the ready line, SIGTERM drains and exits 0, it keeps serving across a NATS restart, and the
//! `schemas` subcommand.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{BIN, Running, ready};
use serde_json::{Value, json};
use test_support::call;
use test_support::envelope;
use test_support::{NatsServer, free_port};

/// NATS refusing at start: retried with backoff (each failure logged) for
/// `NATS_CONNECT_TIMEOUT_SECS`, then exit 1 naming the URL; the database is not created.
#[test]
fn unreachable_nats_is_retried_then_fails_naming_the_url() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let mut service = Running::start_in(
        &url,
        tempfile::tempdir().unwrap(),
        &[("NATS_CONNECT_TIMEOUT_SECS", "2")],
    );
    let (status, log) = service.wait(Duration::from_secs(10));
    let elapsed = started.elapsed();
    assert_eq!(status.code(), Some(1), "exit status {status}: {log}");
    assert!(
        (Duration::from_millis(1900)..Duration::from_secs(5)).contains(&elapsed),
        "gave up after {elapsed:?}"
    );
    assert!(log.contains("retrying"), "each failure is logged: {log}");
    let last = log
        .lines()
        .rev()
        .find(|line| line.contains(&format!("cannot connect to NATS at {url} (tried")))
        .unwrap_or_else(|| panic!("the error names the URL and the attempts: {log}"));
    assert!(
        last.contains("--nats-connect-timeout"),
        "and the setting: {last}"
    );
    // The last failure is given once, at the end of the chain.
    assert_eq!(last.matches("os error").count(), 1, "{last}");
}

/// The bus coming up after the service (container start order): it connects once NATS is
/// there and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_starting_after_the_service_is_waited_for() {
    let mut nats = NatsServer::start();
    nats.stop();
    let service = Running::start(&nats.url());
    assert!(
        service.wait_for_log("retrying", Duration::from_secs(5)),
        "{}",
        service.log()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.restart();
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;
    let reply = call(&client, "get", json!({"plugin_name": "p", "key": "k"})).await;
    assert_eq!(reply["success"], true, "{reply}");
}

/// SIGTERM while NATS is still being retried at start: a clean stop, exit 0, saying so.
#[test]
fn sigterm_while_waiting_for_nats_stops_cleanly() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let mut service = Running::start(&url);
    assert!(
        service.wait_for_log("retrying", Duration::from_secs(5)),
        "{}",
        service.log()
    );
    let started = Instant::now();
    service.signal("-TERM");
    let (status, log) = service.wait(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}: {log}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        log.contains("stopped before serving") && log.contains("stopped by SIGTERM; exit status 0"),
        "{log}"
    );
}

/// Options are accepted after the subcommand too, and a bad one is refused at parse time,
/// before anything is created.
#[test]
fn options_go_after_the_subcommand_and_bad_ones_fail_before_any_side_effect() {
    let dir = tempfile::tempdir().unwrap();
    let database = test_support::sqlite_url(&dir.path().join("kv.db"));
    for args in [
        vec!["serve", "--max-in-flight", "0"],
        vec!["--max-in-flight", "0", "serve"],
        vec!["serve", "--queue-group", ""],
        vec!["serve", "--nats-connect-timeout", "0"],
        vec!["serve", "--nats-connect-timeout", "18446744073709551615"],
        vec!["serve", "--purge-interval", "18446744073709551615"],
        vec!["serve", "--request-timeout-ms", "3600001"],
        vec!["serve", "--worker-threads", "0"],
        vec!["serve", "--worker-threads", "100000"],
    ] {
        let output = Command::new(BIN)
            .args(&args)
            .env("DATABASE_URL", &database)
            .env("NATS_URL", "nats://127.0.0.1:1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("invalid value"), "{args:?}: {stderr}");
        assert!(
            !dir.path().join("kv.db").exists(),
            "{args:?} created the database"
        );
    }
    // A database URL of another scheme is refused, naming the scheme and not the password,
    // rather than opened as a SQLite file of that name.
    let output = Command::new(BIN)
        .current_dir(dir.path())
        .args(["serve", "--database-url", "mysql://kv:s3cret@db/kv"])
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "`mysql://` is not a database kv-service can use: give sqlite://path (a file) or \
             postgres://user:password@host/database"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing created"
    );
    let output = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(
        help.contains("--nats-url")
            && help.contains("--max-in-flight")
            && help.contains("RUST_LOG"),
        "{help}"
    );
}

/// `serve --nats-url X` (after the subcommand) is used, and the last log line says which
/// signal stopped it and that the exit status is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_its_options_and_says_what_stopped_it() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let database = test_support::sqlite_url(&dir.path().join("kv.db"));
    let url = nats.url();
    let mut service = test_support::Service::spawn(
        BIN,
        &[
            "serve",
            "--nats-url",
            url.as_str(),
            "--database-url",
            database.as_str(),
        ],
        &[("NATS_URL", "nats://127.0.0.1:1")],
    );
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;
    service.signal("-INT");
    let (status, log) = tokio::task::spawn_blocking(move || service.wait(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("stopped by SIGINT; exit status 0"), "{log}");
}

#[test]
fn credentials_in_the_url_never_reach_the_log() {
    let url = format!("nats://alice:s3cr3t-pw@127.0.0.1:{}", free_port());
    // Even at trace level, where async-nats would print the URL with its password.
    let mut service = Running::start_in(
        &url,
        tempfile::tempdir().unwrap(),
        &[("RUST_LOG", "trace"), ("NATS_CONNECT_TIMEOUT_SECS", "1")],
    );
    let (status, log) = service.wait(Duration::from_secs(10));
    assert!(!status.success());
    assert!(!log.contains("s3cr3t-pw"), "secret leaked: {log}");
    assert!(log.contains("nats://***@127.0.0.1:"), "{log}");

    // A database password written unencoded, with the `?` a query starts at.
    let nats = NatsServer::start();
    let database = format!("postgres://kv:s3cr?t-pw@127.0.0.1:{}/kv", free_port());
    let mut service = Running::start_in(
        &nats.url(),
        tempfile::tempdir().unwrap(),
        &[("RUST_LOG", "trace"), ("DATABASE_URL", &database)],
    );
    let (status, log) = service.wait(Duration::from_secs(10));
    assert!(!status.success());
    assert!(!log.contains("t-pw"), "secret leaked: {log}");
    assert!(log.contains("postgres://***@127.0.0.1:"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_requests_in_flight_and_exits_zero() {
    let nats = NatsServer::start();
    let mut service = Running::start(&nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;
    let mut pending = Vec::new();
    for i in 0..300 {
        let client = client.clone();
        pending.push(tokio::spawn(async move {
            call(
                &client,
                "set",
                json!({"plugin_name": "p", "key": format!("k{i}"), "value": i}),
            )
            .await
        }));
    }
    // Every request has reached the server before the signal.
    tokio::time::sleep(Duration::from_millis(20)).await;
    client.flush().await.unwrap();
    service.signal("-TERM");
    let mut answered = 0;
    for request in pending {
        let reply = request.await.unwrap();
        assert!(
            reply == envelope::ok() || reply["error"]["code"] == "OVERLOADED",
            "{reply}"
        );
        answered += 1;
    }
    assert_eq!(answered, 300);
    let (status, log) = tokio::task::spawn_blocking(move || {
        let outcome = service.wait(Duration::from_secs(10));
        (outcome, service)
    })
    .await
    .map(|(outcome, _service)| outcome)
    .unwrap();
    assert!(status.success(), "exit status {status}: {log}");
    assert!(
        log.contains("kv-service ready")
            && log.contains("rosey.db.kv.set rosey.db.kv.get rosey.db.kv.delete rosey.db.kv.list"),
        "one ready line naming the subjects: {log}"
    );
    assert!(log.contains("stopped"), "{log}");
    // The drain gave the store back at once: it was closed (queued writes committed), not
    // left to its writer.
    assert!(
        log.contains("closed: every request taken was answered") && !log.contains("hold the store"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_across_a_nats_restart() {
    let mut nats = NatsServer::start();
    let _service = Running::start(&nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;
    assert_eq!(
        call(
            &client,
            "set",
            json!({"plugin_name": "p", "key": "before", "value": 1})
        )
        .await,
        envelope::ok()
    );
    nats.restart();
    let restarted = Instant::now();
    let fresh = async_nats::connect(nats.url()).await.unwrap();
    let mut answered = None;
    while restarted.elapsed() < Duration::from_secs(5) {
        let request = fresh.request(
            "rosey.db.kv.get",
            json!({"plugin_name": "p", "key": "before"})
                .to_string()
                .into(),
        );
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_millis(500), request).await {
            answered = Some(serde_json::from_slice::<Value>(&reply.payload).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "answered again {:?} after the NATS restart",
        restarted.elapsed()
    );
    assert_eq!(
        answered.expect("kv-service answers within 5 s of the server's return"),
        envelope::found(json!(1)),
        "the write acknowledged before the restart is still there"
    );
}

#[test]
fn schemas_subcommand_writes_every_schema() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["schemas", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    for (name, text) in kv_service::rendered_schemas() {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(&name)).unwrap(),
            text,
            "{name}"
        );
    }
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().lines().count(),
        24,
        "request, success and error schema of the four fixed and four per-plugin endpoints"
    );

    // Its report read by a reader that stops at once (`kv-service schemas | head -1`): the
    // schemas are all written and it exits 0, where `println!` panicked on the closed pipe.
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(BIN)
        .args(["schemas", dir.path().to_str().unwrap()])
        .stdout(writer)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(output.stderr.is_empty(), "{output:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_values_never_reach_the_log_even_at_trace_level() {
    let nats = NatsServer::start();
    let mut service = Running::start_in(
        &nats.url(),
        tempfile::tempdir().unwrap(),
        &[("RUST_LOG", "trace")],
    );
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;
    let marker = "value-marker-8d1f3c";
    call(
        &client,
        "set",
        json!({"plugin_name": "p", "key": "k", "value": marker}),
    )
    .await;
    call(&client, "get", json!({"plugin_name": "p", "key": "k"})).await;
    let too_large = call(
        &client,
        "set",
        json!({"plugin_name": "p", "key": "big", "value": format!("{marker}{}", "x".repeat(70_000))}),
    )
    .await;
    assert_eq!(too_large["error"]["code"], "VALUE_TOO_LARGE");
    let invalid = call(
        &client,
        "set",
        json!({"plugin_name": "P!", "key": "k", "value": marker}),
    )
    .await;
    assert_eq!(invalid["error"]["code"], "VALIDATION_ERROR");
    service.signal("-TERM");
    let (status, log) = tokio::task::spawn_blocking(move || service.wait(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(status.success());
    assert!(
        log.contains("kv-service ready"),
        "the log was captured: {log}"
    );
    let leaks: Vec<&str> = log.lines().filter(|line| line.contains(marker)).collect();
    assert!(
        leaks.is_empty(),
        "a stored value reached the log: {leaks:#?}"
    );
}

#[test]
fn help_never_shows_credentials_from_the_environment() {
    let output = Command::new(BIN)
        .arg("--help")
        .env("DATABASE_URL", "postgres://kv:db-s3cr3t@db/kv")
        .env("NATS_URL", "nats://alice:nats-s3cr3t@127.0.0.1:4222")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(
        help.contains("--database-url") && help.contains("[env: DATABASE_URL]"),
        "{help}"
    );
    assert!(!help.contains("s3cr3t"), "{help}");
}

#[test]
fn asyncapi_subcommand_writes_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api.json");
    let output = Command::new(BIN)
        .args(["asyncapi", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        kv_service::rendered_asyncapi("q")
    );
}

/// Every endpoint's schemas travel in `$SRV.INFO`: with all eight endpoints the reply must stay
/// well within NATS's default 1 MB payload limit, and the running service's AsyncAPI document
/// is the committed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_carries_the_schemas_within_nats_payload_limits() {
    let nats = NatsServer::start();
    let _service = Running::start_in(
        &nats.url(),
        tempfile::tempdir().unwrap(),
        &[("PLUGIN_SUBJECTS", "true")],
    );
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;
    let info = client
        .request("$SRV.INFO.kv-service", "".into())
        .await
        .unwrap();
    println!(
        "$SRV.INFO with 8 endpoints' schemas: {} bytes",
        info.payload.len()
    );
    assert!(
        info.payload.len() < 256 * 1024,
        "{} bytes",
        info.payload.len()
    );
    let info: Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info["metadata"]["store_backend"], "sqlite");
    assert_eq!(info["endpoints"].as_array().unwrap().len(), 8);
    // What is served is what is published: every endpoint's three schemas in `$SRV.INFO` are
    // the files committed in schemas/, and there is a file set for every endpoint and no more.
    let published = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
    let mut served_files = Vec::new();
    for endpoint in info["endpoints"].as_array().unwrap() {
        let subject = endpoint["subject"].as_str().unwrap();
        for (key, kind) in [
            ("request_schema", "request"),
            ("response_schema", "response"),
            ("error_schema", "error"),
        ] {
            let name = nats_rpc::EndpointSchemas::file_name(subject, kind);
            let served: Value =
                serde_json::from_str(endpoint["metadata"][key].as_str().unwrap()).unwrap();
            let file = std::fs::read_to_string(published.join(&name))
                .unwrap_or_else(|err| panic!("schemas/{name}: {err}"));
            let committed: Value = serde_json::from_str(&file).unwrap();
            assert_eq!(served, committed, "{name}");
            served_files.push(name);
        }
    }
    let mut committed_files: Vec<String> = std::fs::read_dir(&published)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    served_files.sort();
    committed_files.sort();
    assert_eq!(served_files, committed_files);
    let document = client
        .request("$SRV.ASYNCAPI.kv-service", "".into())
        .await
        .unwrap();
    let served: Value = serde_json::from_slice(&document.payload).unwrap();
    let committed: Value = serde_json::from_str(&kv_service::rendered_asyncapi("q")).unwrap();
    assert_eq!(served, committed);
}

/// SIGTERM while the NATS server is gone: nothing can be received or confirmed, so the drain
/// waits only for what is in flight, and the process still exits 0, promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nats_down_still_exits_zero_promptly() {
    let mut nats = NatsServer::start();
    let mut service = Running::start(&nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    ready(&client).await;
    nats.stop();
    assert!(
        service.wait_for_log("NATS connection lost", Duration::from_secs(10)),
        "{}",
        service.log()
    );
    let started = Instant::now();
    service.signal("-TERM");
    let (status, log) = tokio::task::spawn_blocking(move || service.wait(Duration::from_secs(15)))
        .await
        .unwrap();
    println!(
        "exited {status} {:?} after SIGTERM with NATS down",
        started.elapsed()
    );
    assert!(status.success(), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(log.contains("stopped"), "{log}");
}
