//! Storage semantics: expiry with millisecond precision, upsert and timestamps, plugin isolation,
//! concurrency and persistence across a restart.

use super::*;

pub(super) async fn ttl_key_is_visible_then_invisible_to_get_list_and_delete(backend: Backend) {
    let kv = Harness::start(backend).await;
    put(&kv, "p", "keep", json!("forever")).await;
    put_ttl(&kv, "p", "temp", json!({"v": 1}), 1).await;
    let replied = Instant::now();
    assert_eq!(get(&kv, "p", "temp").await, found(json!({"v": 1})));
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["keep", "temp"], false)
    );

    sleep_until(replied + Duration::from_millis(1100)).await;
    assert_eq!(get(&kv, "p", "temp").await, absent());
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["keep"], false)
    );
    assert_eq!(delete(&kv, "p", "temp").await, deleted(false));
    // Not purged (purge interval is 300 s): the row is still in the file, just invisible.
    assert!(row_times(&kv, "p", "temp").await.is_some());
    assert_eq!(get(&kv, "p", "keep").await, found(json!("forever")));
}

pub(super) async fn ttl_has_millisecond_precision(backend: Backend) {
    let kv = Harness::start(backend).await;
    let wall_before = now_ms();
    let sent = Instant::now();
    put_ttl(&kv, "p", "k", json!("v"), 1).await;
    let replied = Instant::now();
    let wall_after = now_ms();

    // Stored expiry is exactly 1000 ms after the write, in milliseconds (not whole seconds).
    let (created, updated, expires) = row_times(&kv, "p", "k").await.expect("row exists");
    let expires = expires.expect("expires_at set");
    assert_eq!(created, updated);
    assert_eq!(expires - updated, 1000, "ttl 1 s = 1000 ms");
    assert!(
        (wall_before + 1000..=wall_after + 1000).contains(&expires),
        "expires_at {expires} within [{}, {}]",
        wall_before + 1000,
        wall_after + 1000
    );

    // Still live at ~800 ms…
    sleep_until(sent + Duration::from_millis(800)).await;
    let live = get(&kv, "p", "k").await;
    let live_at = sent.elapsed();
    assert_eq!(live, found(json!("v")), "live at {live_at:?}");
    // …gone by ~1100 ms.
    sleep_until(replied + Duration::from_millis(1100)).await;
    assert_eq!(
        get(&kv, "p", "k").await,
        absent(),
        "gone at {:?}",
        sent.elapsed()
    );
    println!("ttl precision: live at {live_at:?}, gone at ~1100 ms");
}

pub(super) async fn reset_without_ttl_clears_the_expiry(backend: Backend) {
    let kv = Harness::start(backend).await;
    put_ttl(&kv, "p", "k", json!("old"), 1).await;
    put(&kv, "p", "k", json!("new")).await;
    let replied = Instant::now();
    let (_, _, expires) = row_times(&kv, "p", "k").await.expect("row");
    assert_eq!(expires, None, "set without ttl clears expires_at");
    // `"ttl_seconds": null` also means never.
    put_ttl(&kv, "p", "n", json!(1), 1).await;
    let reply = kv
        .call(
            "set",
            json!({"plugin_name": "p", "key": "n", "value": 2, "ttl_seconds": null}),
        )
        .await;
    assert_eq!(reply, success(json!({})));

    sleep_until(replied + Duration::from_millis(1150)).await;
    assert_eq!(get(&kv, "p", "k").await, found(json!("new")));
    assert_eq!(get(&kv, "p", "n").await, found(json!(2)));
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["k", "n"], false)
    );
}

pub(super) async fn reset_with_a_new_ttl_replaces_the_old_one(backend: Backend) {
    let kv = Harness::start(backend).await;
    // Longer replaces shorter…
    put_ttl(&kv, "p", "longer", json!(1), 1).await;
    put_ttl(&kv, "p", "longer", json!(2), 30).await;
    // …and shorter replaces longer.
    put_ttl(&kv, "p", "shorter", json!(1), 3600).await;
    put_ttl(&kv, "p", "shorter", json!(2), 1).await;
    let replied = Instant::now();
    let (_, updated, expires) = row_times(&kv, "p", "longer").await.expect("row");
    assert_eq!(expires, Some(updated + 30_000));

    sleep_until(replied + Duration::from_millis(1150)).await;
    assert_eq!(get(&kv, "p", "longer").await, found(json!(2)));
    assert_eq!(get(&kv, "p", "shorter").await, absent());
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["longer"], false)
    );
}

pub(super) async fn ttl_maximum_2147483647_is_accepted(backend: Backend) {
    let kv = Harness::start(backend).await;
    put_ttl(&kv, "p", "k", json!("long"), 2_147_483_647).await;
    assert_eq!(get(&kv, "p", "k").await, found(json!("long")));
    let (_, updated, expires) = row_times(&kv, "p", "k").await.expect("row");
    assert_eq!(expires, Some(updated + 2_147_483_647_000));
}

pub(super) async fn list_truncated_counts_only_live_keys(backend: Backend) {
    let kv = Harness::start(backend).await;
    for key in ["a", "b", "c"] {
        put(&kv, "p", key, json!(key)).await;
    }
    put_ttl(&kv, "p", "d", json!("d"), 1).await;
    let replied = Instant::now();
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": 3})).await,
        listing(&["a", "b", "c"], true)
    );
    sleep_until(replied + Duration::from_millis(1100)).await;
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": 3})).await,
        listing(&["a", "b", "c"], false)
    );
}

pub(super) async fn upsert_replaces_value_keeps_created_at_and_moves_updated_at(backend: Backend) {
    let kv = Harness::start(backend).await;
    put(&kv, "p", "k", json!({"version": 1})).await;
    let (created1, updated1, expires1) = row_times(&kv, "p", "k").await.expect("row");
    assert_eq!(created1, updated1);
    assert_eq!(expires1, None);

    tokio::time::sleep(Duration::from_millis(30)).await;
    put(&kv, "p", "k", json!(["version", 2])).await;
    assert_eq!(get(&kv, "p", "k").await, found(json!(["version", 2])));
    let (created2, updated2, _) = row_times(&kv, "p", "k").await.expect("row");
    assert_eq!(created2, created1, "created_at survives an upsert");
    assert!(
        updated2 >= updated1 + 30,
        "updated_at moves: {updated1} -> {updated2}"
    );

    // Still one key, not two.
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["k"], false)
    );
}

pub(super) async fn plugins_are_isolated_for_get_list_and_delete(backend: Backend) {
    let kv = Harness::start(backend).await;
    put(&kv, "alpha", "shared", json!("alpha's")).await;
    put(&kv, "alpha", "only-alpha", json!(1)).await;
    put(&kv, "beta", "shared", json!("beta's")).await;

    // get
    assert_eq!(get(&kv, "alpha", "shared").await, found(json!("alpha's")));
    assert_eq!(get(&kv, "beta", "shared").await, found(json!("beta's")));
    assert_eq!(get(&kv, "beta", "only-alpha").await, absent());
    assert_eq!(get(&kv, "gamma", "shared").await, absent());
    // list
    assert_eq!(
        list(&kv, json!({"plugin_name": "alpha"})).await,
        listing(&["only-alpha", "shared"], false)
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "beta"})).await,
        listing(&["shared"], false)
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "gamma"})).await,
        listing::<&str>(&[], false)
    );
    // delete
    assert_eq!(delete(&kv, "beta", "only-alpha").await, deleted(false));
    assert_eq!(get(&kv, "alpha", "only-alpha").await, found(json!(1)));
    assert_eq!(delete(&kv, "beta", "shared").await, deleted(true));
    assert_eq!(get(&kv, "beta", "shared").await, absent());
    assert_eq!(get(&kv, "alpha", "shared").await, found(json!("alpha's")));
    // A plugin whose name is a prefix of another's sees nothing of it.
    put(&kv, "alph", "x", json!(0)).await;
    assert_eq!(
        list(&kv, json!({"plugin_name": "alph"})).await,
        listing(&["x"], false)
    );
}

pub(super) async fn five_hundred_concurrent_sets_all_land(backend: Backend) {
    let kv = Harness::start(backend).await;
    let keys: Vec<String> = (0..500).map(|i| format!("c{i:03}")).collect();
    let started = Instant::now();
    let replies = futures_util::future::join_all(keys.iter().enumerate().map(|(i, key)| {
        kv.call(
            "set",
            json!({"plugin_name": "conc", "key": key, "value": {"i": i}}),
        )
    }))
    .await;
    println!("500 concurrent sets took {:?}", started.elapsed());
    assert_eq!(replies.len(), 500);
    for (key, reply) in keys.iter().zip(&replies) {
        assert_eq!(*reply, success(json!({})), "set {key}");
    }
    assert_eq!(
        list(&kv, json!({"plugin_name": "conc", "limit": 1000})).await,
        listing(&keys, false)
    );
    for i in [0_usize, 1, 99, 250, 377, 498, 499] {
        assert_eq!(get(&kv, "conc", &keys[i]).await, found(json!({"i": i})));
    }
}

pub(super) async fn data_persists_across_a_service_restart(backend: Backend) {
    let mut kv = Harness::start(backend).await;
    put(&kv, "p", "a", json!({"kept": true})).await;
    put(&kv, "p", "big", json!(12345678901234567890_u64)).await;
    put(&kv, "p", "gone", json!(0)).await;
    put_ttl(&kv, "p", "ttl", json!("later"), 3600).await;
    put(&kv, "q", "other", json!(null)).await;
    assert_eq!(delete(&kv, "p", "gone").await, deleted(true));
    let before = row_times(&kv, "p", "ttl").await.expect("row");

    assert_eq!(
        kv.restart_service().await,
        Ok(()),
        "first run stops cleanly"
    );

    assert_eq!(get(&kv, "p", "a").await, found(json!({"kept": true})));
    assert_eq!(
        get(&kv, "p", "big").await,
        found(json!(12345678901234567890_u64))
    );
    assert_eq!(get(&kv, "p", "gone").await, absent());
    assert_eq!(get(&kv, "p", "ttl").await, found(json!("later")));
    assert_eq!(get(&kv, "q", "other").await, found(Value::Null));
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["a", "big", "ttl"], false)
    );
    assert_eq!(
        row_times(&kv, "p", "ttl").await,
        Some(before),
        "timestamps and expiry kept"
    );
    // And it still writes.
    put(&kv, "p", "after", json!(1)).await;
    assert_eq!(get(&kv, "p", "after").await, found(json!(1)));
}
