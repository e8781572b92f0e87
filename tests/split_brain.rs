//! The refusals that keep two stores from answering one service: a second process on a SQLite
//! file, and an instance whose store differs from the instances already serving its subjects.
//! Each refusal exits 1 with a message naming the fix, and leaves the running instance serving.
//! (One PostgreSQL store in two queue groups is refused too.)
//! A conflicting instance that appears later is logged as an error within 10 s.

mod common;

use std::time::{Duration, Instant};

use common::{client, instance, wait_for_instances};
use kv_service::store::{Store, StoreOptions};
use serde_json::json;
use test_support::NatsServer;
use test_support::call;
use test_support::envelope::{found, ok};
use test_support::{Postgres, Service};

fn sqlite_url(dir: &tempfile::TempDir, file: &str) -> String {
    test_support::sqlite_url(&dir.path().join(file))
}

/// Runs `service` to its end in a blocking thread: its exit status and log.
async fn refused(mut service: Service) -> String {
    let started = Instant::now();
    let (status, log) = tokio::task::spawn_blocking(move || service.wait(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1), "refused with exit status 1: {log}");
    assert!(!log.contains("kv-service ready"), "it never served: {log}");
    println!("refused after {:?}", started.elapsed());
    log
}

/// The instance that was serving still is, and holds what was written through it.
async fn still_serves(kv: &async_nats::Client, key: &str) {
    let body = json!({"plugin_name": "p", "key": key, "value": key});
    assert_eq!(call(kv, "set", body).await, ok());
    let get = json!({"plugin_name": "p", "key": key});
    assert_eq!(call(kv, "get", get).await, found(json!(key)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_one_sqlite_file_refuses_to_start() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir, "kv.db");
    let _first = instance(&nats.url(), &url, &[]);
    let kv = client(&nats.url()).await;
    wait_for_instances(&kv, 1).await;
    still_serves(&kv, "before").await;

    // On another NATS server, so only the file lock can stop it.
    let other_nats = NatsServer::start();
    let log = refused(instance(&other_nats.url(), &url, &[])).await;
    assert!(
        log.contains(&format!(
            "{} is in use by another kv-service process",
            dir.path().join("kv.db").display()
        )) && log.contains("DATABASE_URL=postgres://"),
        "{log}"
    );
    still_serves(&kv, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_on_another_store_refuses_to_join() {
    let postgres = Postgres::start();
    let other_database = postgres.create_database("other");
    let dir = tempfile::tempdir().unwrap();
    let store_id = |url: &str| {
        let url = url.to_owned();
        async move {
            let store = Store::open(&StoreOptions::new(url)).await.unwrap();
            let id = store.id().to_owned();
            store.close().await;
            id
        }
    };
    let ids = [
        store_id(&postgres.url()).await,
        store_id(&other_database).await,
        store_id(&sqlite_url(&dir, "a.db")).await,
    ];

    struct Case {
        running: String,
        joining: String,
        says: Vec<String>,
    }
    let cases = [
        // Two PostgreSQL databases.
        Case {
            running: postgres.url(),
            joining: other_database.clone(),
            says: vec![
                format!("from PostgreSQL store {}", ids[0]),
                format!("this instance's store is PostgreSQL store {}", ids[1]),
                "Start this instance with the DATABASE_URL the running instances use".into(),
            ],
        },
        // A SQLite instance beside a PostgreSQL one, and the other way round.
        Case {
            running: postgres.url(),
            joining: sqlite_url(&dir, "a.db"),
            says: vec![
                format!("this instance's store is SQLite store {}", ids[2]),
                "A SQLite file serves one instance".into(),
            ],
        },
        Case {
            running: sqlite_url(&dir, "a.db"),
            joining: postgres.url(),
            says: vec![
                format!("from SQLite store {} (a file of its own)", ids[2]),
                "DATABASE_URL=postgres://".into(),
            ],
        },
        // Two SQLite files.
        Case {
            running: sqlite_url(&dir, "a.db"),
            joining: sqlite_url(&dir, "b.db"),
            says: vec!["A SQLite file serves one instance".into()],
        },
    ];
    for case in cases {
        let nats = NatsServer::start();
        let _running = instance(&nats.url(), &case.running, &[]);
        let kv = client(&nats.url()).await;
        wait_for_instances(&kv, 1).await;
        let log = refused(instance(&nats.url(), &case.joining, &[])).await;
        assert!(
            log.contains("refusing to start: kv-service instance")
                && log.contains("already serves rosey.db.kv.")
                && log.contains("requests would be split between the two stores"),
            "{log}"
        );
        for words in &case.says {
            assert!(
                log.contains(words.as_str()),
                "{} beside {}: missing {words:?} in\n{log}",
                case.joining,
                case.running
            );
        }
        still_serves(&kv, "k").await;
    }
}

/// Two instances on one PostgreSQL store but in different queue groups would each carry out
/// every request (NATS gives each request to one member of every group): the second refuses,
/// naming both groups and the setting to use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_in_another_queue_group_refuses_to_join() {
    let postgres = Postgres::start();
    let nats = NatsServer::start();
    let _running = instance(&nats.url(), &postgres.url(), &[]);
    let kv = client(&nats.url()).await;
    wait_for_instances(&kv, 1).await;
    let log = refused(instance(
        &nats.url(),
        &postgres.url(),
        &[("QUEUE_GROUP", "other")],
    ))
    .await;
    assert!(
        log.contains("refusing to start: kv-service instance")
            && log.contains("in queue group `q`, and this instance's queue group is `other`")
            && log.contains("Start this instance with QUEUE_GROUP=q"),
        "{log}"
    );
    still_serves(&kv, "k").await;
}

/// Two instances that start at the same moment may both see nobody; and an instance from
/// before store identities names none. Here an impostor registers as kv-service on
/// `rosey.db.kv.get` with another store's identity while an instance serves: the instance logs
/// the conflict, naming it, within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_instance_that_appears_is_logged_within_10_s() {
    let postgres = Postgres::start();
    let nats = NatsServer::start();
    let serving = instance(&nats.url(), &postgres.url(), &[]);
    let kv = client(&nats.url()).await;
    wait_for_instances(&kv, 1).await;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreOptions::new(sqlite_url(&dir, "impostor.db")))
        .await
        .unwrap();
    let appeared = Instant::now();
    let impostor = nats_rpc::Service::builder("kv-service", "0.0.1")
        .metadata("store_id", "impostor-store")
        .metadata("store_backend", "postgres")
        .endpoint::<kv_service::api::get>()
        .serve(kv.clone(), store)
        .await
        .unwrap();
    let (seen, serving) = tokio::task::spawn_blocking(move || {
        let seen = serving.wait_for_log("conflicting instance", Duration::from_secs(10));
        (seen, serving)
    })
    .await
    .unwrap();
    let log = serving.log();
    println!("conflict logged after {:?}", appeared.elapsed());
    assert!(seen, "no conflict logged within 10 s:\n{log}");
    let line = log
        .lines()
        .find(|line| line.contains("conflicting instance"))
        .unwrap();
    assert!(
        line.contains("ERROR")
            && line.contains(&format!("instance {}", impostor.id()))
            && line.contains("PostgreSQL store impostor-store"),
        "{line}"
    );
    // The next look finds it again and stays quiet: one error per instance, not one per look.
    tokio::time::sleep(kv_service::peers::WATCH_EVERY + Duration::from_millis(1500)).await;
    let log = serving.log();
    assert_eq!(log.matches("conflicting instance").count(), 1, "{log}");
    let _ = impostor.shutdown().await;
}
