//! PostgreSQL faults with real processes: the database restarted or killed under load, one of
//! two instances killed under load, the database unreachable, locked, frozen or out of
//! connection slots. Every request gets a reply (INTERNAL_ERROR while the database cannot
//! answer, never a hang past the client's timeout), the service answers again within 5 s of
//! the database's return, and no acknowledged write is lost.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Outcome, client, instance, request, serving, wait_for_instances};
use serde_json::json;
use sqlx::{ConnectOptions, Connection};
use test_support::NatsServer;
use test_support::call;
use test_support::envelope::{found, internal_error, ok};
use test_support::{Postgres, free_port};

/// What 16 writers saw: the last acknowledged value per key, and every other outcome counted.
#[derive(Debug, Default)]
struct Tally {
    acknowledged: BTreeMap<String, u64>,
    acks: u64,
    internal: u64,
    timed_out: u64,
    other: Vec<String>,
    /// When each success arrived, to see when service came back.
    successes: Vec<Instant>,
}

/// 16 writers on `client` until `stop_at`, each on 30 keys of its own, each request given
/// `limit` to answer.
async fn write_until(client: &async_nats::Client, stop_at: Instant, limit: Duration) -> Tally {
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..16 {
        let (client, tally) = (client.clone(), tally.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0_u64;
            while Instant::now() < stop_at {
                let key = format!("w{writer}-{}", n % 30);
                let body = json!({"plugin_name": "faults", "key": key, "value": n});
                let outcome = request(&client, "set", body, limit).await;
                let mut tally = tally.lock().unwrap();
                match outcome {
                    Outcome::Reply(reply) if reply == ok() => {
                        tally.acknowledged.insert(key, n);
                        tally.acks += 1;
                        tally.successes.push(Instant::now());
                    }
                    Outcome::Reply(reply) if reply == internal_error() => tally.internal += 1,
                    Outcome::TimedOut => tally.timed_out += 1,
                    other => tally.other.push(format!("{other:?}")),
                }
                drop(tally);
                n += 1;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    Arc::into_inner(tally).unwrap().into_inner().unwrap()
}

/// Every acknowledged write is there: the last acknowledged value, or a later one that landed
/// without its reply. Returns the keys that lost theirs.
async fn lost(client: &async_nats::Client, acknowledged: &BTreeMap<String, u64>) -> Vec<String> {
    let mut lost = Vec::new();
    for (key, n) in acknowledged {
        let reply = call(client, "get", json!({"plugin_name": "faults", "key": key})).await;
        if reply["data"]["exists"] != true || reply["data"]["value"].as_u64() < Some(*n) {
            lost.push(format!("{key}: acknowledged {n}, now {reply}"));
        }
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_restarted_or_killed_under_load_loses_nothing_acknowledged() {
    for (how, crash) in [("fast shutdown", false), ("kill -9", true)] {
        let postgres = Arc::new(Mutex::new(Postgres::start()));
        let url = postgres.lock().unwrap().url();
        let nats = NatsServer::start();
        let _service = instance(&nats.url(), &url, &[("STATEMENT_TIMEOUT_MS", "1000")]);
        let kv = client(&nats.url()).await;
        wait_for_instances(&kv, 1).await;

        let limit = Duration::from_secs(3);
        let started = Instant::now();
        let writers = tokio::spawn({
            let kv = kv.clone();
            async move { write_until(&kv, started + Duration::from_secs(5), limit).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let server = postgres.clone();
        let returned = tokio::task::spawn_blocking(move || {
            let mut server = server.lock().unwrap();
            if crash {
                server.kill();
            } else {
                server.stop("-INT");
            }
            std::thread::sleep(Duration::from_secs(1));
            server.restart();
            Instant::now()
        })
        .await
        .unwrap();
        let tally = writers.await.unwrap();
        let back = tally
            .successes
            .iter()
            .filter(|at| **at > returned)
            .min()
            .map(|at| at.duration_since(returned));
        let lost = lost(&kv, &tally.acknowledged).await;
        println!(
            "database {how} under 16 writers: {} acknowledged, {} INTERNAL_ERROR, {} timed out \
             (of {limit:?}), {} lost; first success {back:?} after the database was back",
            tally.acks,
            tally.internal,
            tally.timed_out,
            lost.len()
        );
        assert!(
            tally.other.is_empty(),
            "{how}: unexpected replies {:?}",
            tally.other
        );
        assert_eq!(
            tally.timed_out, 0,
            "{how}: every request answered within {limit:?}"
        );
        assert!(
            tally.internal > 0,
            "{how}: the outage was answered INTERNAL_ERROR"
        );
        let back = back.unwrap_or_else(|| panic!("{how}: no success after the database returned"));
        assert!(
            back < Duration::from_secs(5),
            "{how}: served again after {back:?}"
        );
        assert!(lost.is_empty(), "{how}: acknowledged writes lost: {lost:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_of_two_instances_under_16_writers_loses_nothing() {
    let postgres = Postgres::start();
    let nats = NatsServer::start();
    let mut victim = instance(&nats.url(), &postgres.url(), &[]);
    let _survivor = instance(&nats.url(), &postgres.url(), &[]);
    let kv = client(&nats.url()).await;
    wait_for_instances(&kv, 2).await;

    let started = Instant::now();
    let writers = tokio::spawn({
        let kv = kv.clone();
        async move {
            write_until(
                &kv,
                started + Duration::from_secs(3),
                Duration::from_secs(1),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    victim.kill9();
    let killed = Instant::now();
    let tally = writers.await.unwrap();
    let after_kill = tally.successes.iter().filter(|at| **at > killed).count();
    let lost = lost(&kv, &tally.acknowledged).await;
    println!(
        "kill -9 of one of two instances under 16 writers: {} acknowledged ({after_kill} after \
         the kill), {} INTERNAL_ERROR, {} timed out, {} lost",
        tally.acks,
        tally.internal,
        tally.timed_out,
        lost.len()
    );
    assert!(tally.other.is_empty(), "{:?}", tally.other);
    assert_eq!(tally.internal, 0, "the database stayed healthy");
    assert!(
        after_kill > 100,
        "the other instance kept serving: {after_kill}"
    );
    // Only requests in flight to the killed instance can go unanswered (core NATS does not
    // redeliver): at most one per writer.
    assert!(tally.timed_out <= 16, "{} timed out", tally.timed_out);
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_at_start_exits_1_naming_it_without_the_password() {
    let nats = NatsServer::start();
    let url = format!("postgres://kv:s3cr3t-pw@127.0.0.1:{}/kv", free_port());
    let mut service = instance(&nats.url(), &url, &[("RUST_LOG", "trace")]);
    let started = Instant::now();
    let (status, log) = tokio::task::spawn_blocking(move || service.wait(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let shown = url.replace("kv:s3cr3t-pw", "***");
    assert!(
        log.contains(&format!("cannot open database `{shown}`")) && log.contains("refused"),
        "{log}"
    );
    assert!(
        !log.contains("s3cr3t-pw"),
        "the password reached the log: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_credentials_never_reach_the_log() {
    let postgres = Postgres::start();
    postgres.psql("postgres", "CREATE ROLE kv LOGIN PASSWORD 's3cr3t-pw'");
    postgres.psql("postgres", "CREATE DATABASE kv OWNER kv");
    let nats = NatsServer::start();
    let url = format!(
        "postgres://kv:s3cr3t-pw@127.0.0.1:{}/kv?password=s3cr3t-pw",
        postgres.port()
    );
    let mut service = instance(&nats.url(), &url, &[("RUST_LOG", "trace")]);
    let kv = client(&nats.url()).await;
    wait_for_instances(&kv, 1).await;
    assert_eq!(
        call(
            &kv,
            "set",
            json!({"plugin_name": "p", "key": "k", "value": 1})
        )
        .await,
        ok()
    );
    assert_eq!(
        call(&kv, "get", json!({"plugin_name": "p", "key": "k"})).await,
        found(json!(1))
    );
    service.signal("-TERM");
    let (status, log) = tokio::task::spawn_blocking(move || service.wait(Duration::from_secs(15)))
        .await
        .unwrap();
    assert!(status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "database=postgres://***@127.0.0.1:{}/kv?password=***",
            postgres.port()
        )),
        "the ready line names the database, redacted: {log}"
    );
    assert!(!log.contains("s3cr3t-pw"), "the password reached the log");
}

/// A connection of the test's own, to hold locks.
async fn locker(postgres: &Postgres) -> sqlx::PgConnection {
    postgres
        .url()
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_held_elsewhere_answer_internal_error_within_the_statement_timeout() {
    let postgres = Postgres::start();
    let (_nats, _service, kv) = serving(&postgres.url(), &[("STATEMENT_TIMEOUT_MS", "1000")]).await;
    let set = |key: &str, value: u64| json!({"plugin_name": "p", "key": key, "value": value});
    let get = |key: &str| json!({"plugin_name": "p", "key": key});
    assert_eq!(call(&kv, "set", set("locked", 1)).await, ok());
    let limit = Duration::from_secs(4);

    // A row locked by another session: writing it waits for the lock, up to the timeout.
    let mut other = locker(&postgres).await;
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT 1 FROM kv WHERE key = convert_to('locked', 'UTF8') FOR UPDATE")
        .execute(&mut other)
        .await
        .unwrap();
    let started = Instant::now();
    let outcome = request(&kv, "set", set("locked", 2), limit).await;
    let waited = started.elapsed();
    println!("set of a row locked elsewhere: {outcome:?} after {waited:?}");
    assert_eq!(outcome, Outcome::Reply(internal_error()));
    assert!(waited < Duration::from_millis(2500), "{waited:?}");
    // Reads do not wait for row locks.
    assert_eq!(call(&kv, "get", get("locked")).await, found(json!(1)));
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    assert_eq!(call(&kv, "set", set("locked", 3)).await, ok());

    // The whole table locked: reads wait too, up to the timeout, and recover after.
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("LOCK TABLE kv IN ACCESS EXCLUSIVE MODE")
        .execute(&mut other)
        .await
        .unwrap();
    for (op, body) in [("get", get("locked")), ("set", set("other", 4))] {
        let started = Instant::now();
        let outcome = request(&kv, op, body, limit).await;
        println!(
            "{op} on a table locked elsewhere: {outcome:?} after {:?}",
            started.elapsed()
        );
        assert_eq!(outcome, Outcome::Reply(internal_error()), "{op}");
        assert!(started.elapsed() < Duration::from_millis(2500), "{op}");
    }
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    assert_eq!(call(&kv, "get", get("locked")).await, found(json!(3)));
    assert_eq!(call(&kv, "set", set("other", 5)).await, ok());
    other.close().await.unwrap();
}

/// A frozen server (SIGSTOP) answers nothing, not even errors: the client-side timeout answers
/// INTERNAL_ERROR instead, and the service serves again once the server thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_database_is_answered_internal_error_and_recovers_when_it_thaws() {
    let postgres = Postgres::start();
    let (_nats, _service, kv) = serving(&postgres.url(), &[("STATEMENT_TIMEOUT_MS", "1000")]).await;
    assert_eq!(
        call(
            &kv,
            "set",
            json!({"plugin_name": "p", "key": "k", "value": 1})
        )
        .await,
        ok()
    );

    postgres.signal_all("-STOP");
    let limit = Duration::from_secs(4);
    for (op, body) in [
        ("set", json!({"plugin_name": "p", "key": "k", "value": 2})),
        ("get", json!({"plugin_name": "p", "key": "k"})),
        ("set", json!({"plugin_name": "p", "key": "k", "value": 3})),
    ] {
        let started = Instant::now();
        let outcome = request(&kv, op, body, limit).await;
        println!(
            "{op} on a frozen database: {outcome:?} after {:?}",
            started.elapsed()
        );
        assert_eq!(outcome, Outcome::Reply(internal_error()), "{op}");
    }
    postgres.signal_all("-CONT");
    let thawed = Instant::now();
    let mut back = None;
    while thawed.elapsed() < Duration::from_secs(10) {
        let outcome = request(
            &kv,
            "set",
            json!({"plugin_name": "p", "key": "k", "value": 4}),
            limit,
        )
        .await;
        if outcome == Outcome::Reply(ok()) {
            back = Some(thawed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("served again {back:?} after the database thawed");
    assert!(
        back.is_some_and(|back| back < Duration::from_secs(5)),
        "{back:?}"
    );
    assert_eq!(
        call(&kv, "get", json!({"plugin_name": "p", "key": "k"})).await,
        found(json!(4))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_free_connection_slot_at_start_is_a_clear_error() {
    let postgres = Postgres::start_with(&[
        ("max_connections", "6"),
        ("superuser_reserved_connections", "0"),
    ]);
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(locker(&postgres).await);
    }
    let nats = NatsServer::start();
    let mut service = instance(&nats.url(), &postgres.url(), &[]);
    let (status, log) = tokio::task::spawn_blocking(move || service.wait(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("PostgreSQL has no free connection slot")
            && log.contains("raise the server's max_connections or lower --read-connections"),
        "{log}"
    );
    // With slots free again it starts and serves.
    for conn in held.drain(..) {
        conn.close().await.unwrap();
    }
    let _service = instance(&nats.url(), &postgres.url(), &[]);
    let kv = client(&nats.url()).await;
    wait_for_instances(&kv, 1).await;
    assert_eq!(
        call(
            &kv,
            "set",
            json!({"plugin_name": "p", "key": "k", "value": 1})
        )
        .await,
        ok()
    );
}

/// A server configured with `synchronous_commit=off` could lose acknowledged writes in a
/// crash: kv-service says so and turns it on for its own sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_commit_off_on_the_server_is_turned_on_for_kv_service() {
    let postgres = Postgres::start_with(&[("synchronous_commit", "off")]);
    let (_nats, service, kv) = serving(&postgres.url(), &[]).await;
    assert!(
        service
            .log()
            .contains("the database has synchronous_commit=off; kv-service turns it on"),
        "{}",
        service.log()
    );
    assert_eq!(
        call(
            &kv,
            "set",
            json!({"plugin_name": "p", "key": "k", "value": 1})
        )
        .await,
        ok()
    );
    // The server's own default stays as its operator set it (the setting goes in the startup
    // packet of kv-service's sessions only), and an idle instance holds 1 + readers of them.
    assert_eq!(postgres.psql("postgres", "SHOW synchronous_commit"), "off");
    let sessions = postgres.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'kv-service'",
    );
    assert_eq!(sessions, "3", "the writer and two readers");
}
