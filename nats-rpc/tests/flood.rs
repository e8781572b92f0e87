//! A flood far past what a service can process: every request is answered, never dropped. Its
//! own test binary, so it does not share the machine with the other tests (cargo runs test
//! binaries one at a time): it is about the service's reader, not about a starved machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use nats_rpc::{Service, nats_rpc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use test_support::NatsServer;

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
struct Echo {
    text: String,
}

/// Answers without ever waiting, after ~200 µs of work: what saturates a service's thread.
#[nats_rpc(subject = "test.busy")]
async fn busy(_state: &(), request: Echo) -> Result<Echo, nats_rpc::Error> {
    let until = Instant::now() + Duration::from_micros(200);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
    Ok(request)
}

/// A flood far past what the service can process, on a service that runs on one thread (as
/// kv-service does) with handlers that answer without waiting: every request is answered,
/// served or `OVERLOADED`, and none is dropped from an overflowing subscription buffer. (The
/// in-flight bound alone never sheds here: each request is done before the next is read, so
/// the backlog would sit in the subscription buffer, invisible, until async-nats dropped it.)
#[test]
fn a_flood_past_capacity_is_answered_never_dropped() {
    const SENT: usize = 40_000;
    let server = NatsServer::start();
    let url = server.url();
    let (ready, is_ready) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let nats = nats_rpc::connect_options()
                .connect(url)
                .await
                .expect("connect");
            let service = Service::builder("flooded", "1.0.0")
                .endpoint::<busy>()
                .max_in_flight(64)
                .serve(nats, Arc::new(()))
                .await
                .expect("serve");
            ready.send(()).expect("test waits");
            let _ = stopped.await;
            let _ = service.shutdown().await;
        });
    });
    is_ready.recv().expect("service up");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (answered, served, overloaded) = runtime.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(1 << 20)
            .connect(server.url())
            .await
            .expect("connect");
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(format!("{inbox}.*")).await.expect("sub");
        client.flush().await.expect("flush");
        let body = Bytes::from_static(br#"{"text":"flood"}"#);
        // 20,000 requests/s for 2 s: four times what the service can do, more than its
        // subscription buffer (16,384) can hold, and within what its reader sheds in a debug
        // build.
        for i in 0..SENT {
            client
                .publish_with_reply("test.busy", format!("{inbox}.{i}"), body.clone())
                .await
                .expect("publish");
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        client.flush().await.expect("flush");
        let mut seen = vec![false; SENT];
        let (mut answered, mut served, mut overloaded) = (0, 0, 0);
        // Until every request is answered, or no reply has come for 5 s.
        while answered < SENT {
            let Ok(Some(reply)) =
                tokio::time::timeout(Duration::from_secs(5), replies.next()).await
            else {
                break;
            };
            let index: usize = reply.subject.rsplit('.').next().unwrap().parse().unwrap();
            assert!(
                !std::mem::replace(&mut seen[index], true),
                "request {index} answered twice"
            );
            answered += 1;
            let body: Value = serde_json::from_slice(&reply.payload).expect("JSON reply");
            match body["error"]["code"].as_str() {
                None => served += 1,
                Some("OVERLOADED") => overloaded += 1,
                Some(other) => panic!("unexpected {other}: {body}"),
            }
        }
        (answered, served, overloaded)
    });
    let _ = stop.send(());
    service.join().expect("service thread");
    assert_eq!(
        answered,
        SENT,
        "{} of {SENT} requests got no reply ({served} served, {overloaded} OVERLOADED)",
        SENT - answered
    );
    assert!(
        served > 0 && overloaded > 0,
        "{served} served, {overloaded} OVERLOADED"
    );
}
