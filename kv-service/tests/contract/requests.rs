//! Requests and results: every JSON type round-trips, lists (order, prefix, limit, truncation),
//! keys (Unicode, length), unknown fields, delete's answer.

use super::*;

pub(super) async fn set_then_get_round_trips(backend: Backend) {
    let kv = Harness::start(backend).await;
    let set = kv
        .call(
            "set",
            json!({"plugin_name": "p", "key": "k", "value": {"theme": "dark"}}),
        )
        .await;
    assert_eq!(set, success(json!({})));
    let get = kv
        .call("get", json!({"plugin_name": "p", "key": "k"}))
        .await;
    assert_eq!(
        get,
        success(json!({"exists": true, "value": {"theme": "dark"}}))
    );
}

pub(super) async fn object_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    let values = [
        json!({}),
        json!({"a": 1, "b": "two", "c": [3], "d": null, "e": false}),
        json!({"unicode ключ 🔑": "значение", "": "empty member name"}),
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("obj{i}");
        put(&kv, "p", &key, value.clone()).await;
        assert_eq!(get(&kv, "p", &key).await, found(value.clone()));
    }
}

pub(super) async fn array_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    let values = [
        json!([]),
        json!([1, "two", 3.5, true, false, null, {"k": "v"}, [[]]]),
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("arr{i}");
        put(&kv, "p", &key, value.clone()).await;
        assert_eq!(get(&kv, "p", &key).await, found(value.clone()));
    }
}

pub(super) async fn string_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    let values = [
        "",
        "hello",
        "with \"quotes\" and \\ backslash",
        "tabs\tand\nnewlines\r\n",
        "émoji 😀 and CJK 中文",
        "null",
        "123",
        "\u{0}\u{1f}",
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("s{i}");
        put(&kv, "p", &key, json!(value)).await;
        assert_eq!(
            get(&kv, "p", &key).await,
            found(json!(value)),
            "string {value:?}"
        );
    }
}

pub(super) async fn integer_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    let values = [
        json!(0),
        json!(42),
        json!(-7),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("i{i}");
        put(&kv, "p", &key, value.clone()).await;
        let reply = get(&kv, "p", &key).await;
        assert_eq!(reply, found(value.clone()));
        assert!(reply["data"]["value"].is_i64() || reply["data"]["value"].is_u64());
    }
}

pub(super) async fn float_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    let values = [
        json!(3.25),
        json!(-0.5),
        json!(1e-7),
        json!(6.02e23),
        json!(0.1),
    ];
    for (i, value) in values.iter().enumerate() {
        let key = format!("f{i}");
        put(&kv, "p", &key, value.clone()).await;
        let reply = get(&kv, "p", &key).await;
        assert_eq!(reply, found(value.clone()));
        assert!(reply["data"]["value"].is_f64(), "{value} stays a float");
    }
}

pub(super) async fn boolean_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    put(&kv, "p", "t", json!(true)).await;
    put(&kv, "p", "f", json!(false)).await;
    assert_eq!(get(&kv, "p", "t").await, found(json!(true)));
    assert_eq!(get(&kv, "p", "f").await, found(json!(false)));
}

pub(super) async fn null_value_is_stored_and_returned(backend: Backend) {
    let kv = Harness::start(backend).await;
    put(&kv, "p", "n", Value::Null).await;
    let reply = get(&kv, "p", "n").await;
    // `"value": null` present, exists true: not the same as a missing key.
    assert_eq!(reply, success(json!({"exists": true, "value": null})));
    assert!(reply["data"].as_object().unwrap().contains_key("value"));
    let raw = kv
        .raw_payload(
            &subject("get"),
            json!({"plugin_name": "p", "key": "n"}).to_string(),
        )
        .await;
    assert_eq!(raw_value_text(&raw), "null");
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["n"], false)
    );
}

pub(super) async fn nested_values_round_trip(backend: Backend) {
    let kv = Harness::start(backend).await;
    let value = json!({
        "level1": {
            "level2": {
                "level3": [1, {"level4": [null, true, "deep", {"level5": {"x": -1.5}}]}]
            }
        },
        "list": [[1, 2], [3, [4, [5, []]]]]
    });
    put(&kv, "p", "nested", value.clone()).await;
    assert_eq!(get(&kv, "p", "nested").await, found(value));
}

pub(super) async fn values_nest_up_to_125_levels_so_every_reply_stays_readable(backend: Backend) {
    let kv = Harness::start(backend).await;
    let deep = |levels: usize| format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
    let body = |levels: usize| {
        format!(
            r#"{{"plugin_name":"p","key":"deep","value":{}}}"#,
            deep(levels)
        )
    };
    assert_eq!(
        kv.raw("rosey.db.kv.set", body(125)).await.body,
        success(json!({}))
    );
    // The get reply nests two levels more (data, value): 127, which serde_json still reads.
    let reply = kv
        .raw_payload("rosey.db.kv.get", r#"{"plugin_name":"p","key":"deep"}"#)
        .await;
    let parsed: Value = serde_json::from_slice(&reply).expect("a default serde_json reads it");
    let mut inner = &parsed["data"]["value"];
    for _ in 0..125 {
        inner = &inner[0];
    }
    assert_eq!(inner, &json!(1));
    // One level more could be stored but not read back by such clients: refused up front.
    expect_failure(
        &kv,
        "set",
        body(126),
        "VALIDATION_ERROR",
        "Field 'value' must be nested at most 125 levels deep",
    )
    .await;
    // A request nested more than 127 levels (a value of 127, the object counting as one) is
    // not parsed at all.
    for depth in [127, 128] {
        let reply = kv.raw("rosey.db.kv.set", body(depth)).await.body;
        assert_eq!(reply["error"]["code"], "INVALID_JSON", "{depth}: {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Invalid JSON: recursion limit exceeded"),
            "{depth}: {reply}"
        );
    }
    assert_eq!(
        kv.raw("rosey.db.kv.get", r#"{"plugin_name":"p","key":"deep"}"#)
            .await
            .body["data"]["exists"],
        json!(true),
        "the refused sets left the stored value alone"
    );
}

pub(super) async fn big_integers_and_decimal_text_are_preserved_exactly(backend: Backend) {
    let kv = Harness::start(backend).await;
    let numbers = [
        "12345678901234567890",
        "123456789012345678901234567890",
        "-98765432109876543210",
        "0.1000000000000000055511151231257827",
        "1.50",
        "1E+2",
        "-0.0",
        "3.141592653589793238462643383279",
    ];
    for (i, number) in numbers.iter().enumerate() {
        let key = format!("n{i}");
        let body = format!(r#"{{"plugin_name":"p","key":"{key}","value":{number}}}"#);
        let reply = kv.raw(&subject("set"), body).await;
        assert_eq!(reply.body, success(json!({})), "set {number}");
        let raw = kv
            .raw_payload(
                &subject("get"),
                json!({"plugin_name": "p", "key": key}).to_string(),
            )
            .await;
        let text = String::from_utf8(raw.to_vec()).expect("UTF-8 reply");
        assert!(
            text.contains(number),
            "reply {text} must contain {number} verbatim"
        );
        assert_eq!(raw_value_text(&raw), *number, "value text of {number}");
    }
    // And the big integer still compares equal as a JSON number.
    let reply = get(&kv, "p", "n0").await;
    assert_eq!(reply, found(json!(12345678901234567890_u64)));
}

pub(super) async fn whitespace_is_compacted_but_string_contents_are_kept(backend: Backend) {
    let kv = Harness::start(backend).await;
    // Whitespace between tokens goes; whitespace, escaped quotes and escaped backslashes inside
    // strings stay exactly as sent.
    let sent = "{ \"a\" :  [ 1 ,\n 2 ]\t, \"s\" : \"  x \\\" y  \", \"b\" : \"ends with \\\\\", \"c\" : \" } \" }";
    let expected = r#"{"a":[1,2],"s":"  x \" y  ","b":"ends with \\","c":" } "}"#;
    let body = format!(r#"{{"plugin_name":"p","key":"ws","value":{sent}}}"#);
    assert_eq!(kv.raw(&subject("set"), body).await.body, success(json!({})));
    let raw = kv
        .raw_payload(
            &subject("get"),
            json!({"plugin_name": "p", "key": "ws"}).to_string(),
        )
        .await;
    assert_eq!(raw_value_text(&raw), expected);
    assert_eq!(
        get(&kv, "p", "ws").await,
        found(json!({"a": [1, 2], "s": "  x \" y  ", "b": "ends with \\", "c": " } "}))
    );
}

pub(super) async fn list_returns_keys_in_ascending_utf8_byte_order(backend: Backend) {
    let kv = Harness::start(backend).await;
    for key in [
        "z", "é", "a", "~", "B", "aa", "😀", "中", "A", "0", "a b", "ÿ",
    ] {
        put(&kv, "p", key, json!(key)).await;
    }
    let expected = [
        "0", "A", "B", "a", "a b", "aa", "z", "~", "é", "ÿ", "中", "😀",
    ];
    // The literal above is byte order (no locale collation, no case folding).
    let mut by_bytes = expected.to_vec();
    by_bytes.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    assert_eq!(by_bytes, expected);
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&expected, false)
    );
}

pub(super) async fn list_limit_and_truncated(backend: Backend) {
    let kv = Harness::start(backend).await;
    let keys = ["k1", "k2", "k3", "k4", "k5"];
    for key in keys {
        put(&kv, "p", key, json!(key)).await;
    }
    let cases: [(u32, &[&str], bool); 5] = [
        (1, &keys[..1], true),
        (2, &keys[..2], true),
        (4, &keys[..4], true),
        (5, &keys[..], false), // limit equal to count → not truncated
        (6, &keys[..], false),
    ];
    for (limit, expected, truncated) in cases {
        assert_eq!(
            list(&kv, json!({"plugin_name": "p", "limit": limit})).await,
            listing(expected, truncated),
            "limit {limit}"
        );
    }
    // With a prefix, truncated counts only matching keys.
    put(&kv, "p", "other", json!(0)).await;
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "prefix": "k", "limit": 5})).await,
        listing(&keys, false)
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "prefix": "o", "limit": 1})).await,
        listing(&["other"], false)
    );
}

pub(super) async fn list_default_limit_is_1000(backend: Backend) {
    let kv = Harness::start(backend).await;
    let keys: Vec<String> = (0..1001).map(|i| format!("key-{i:04}")).collect();
    let replies: Vec<Value> = futures_util::stream::iter(keys.iter())
        .map(|key| kv.call("set", json!({"plugin_name": "p", "key": key, "value": key})))
        .buffer_unordered(128)
        .collect()
        .await;
    assert_eq!(replies.len(), 1001);
    for reply in &replies {
        assert_eq!(*reply, success(json!({})));
    }
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&keys[..1000], true)
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": 1001})).await,
        listing(&keys, false)
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": 10000})).await,
        listing(&keys, false)
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": 1000})).await,
        listing(&keys[..1000], true)
    );
}

pub(super) async fn list_prefix_treats_percent_and_underscore_literally(backend: Backend) {
    let kv = Harness::start(backend).await;
    for key in ["a%b", "axb", "a_c", "abc", "a\\d", "zzz"] {
        put(&kv, "p", key, json!(key)).await;
    }
    let cases: [(&str, &[&str]); 6] = [
        ("a%", &["a%b"]),
        ("a_", &["a_c"]),
        ("%", &[]),
        ("_", &[]),
        ("a\\", &["a\\d"]),
        ("a", &["a%b", "a\\d", "a_c", "abc", "axb"]),
    ];
    for (prefix, expected) in cases {
        assert_eq!(
            list(&kv, json!({"plugin_name": "p", "prefix": prefix})).await,
            listing(expected, false),
            "prefix {prefix:?}"
        );
    }
}

pub(super) async fn list_prefix_is_case_sensitive(backend: Backend) {
    let kv = Harness::start(backend).await;
    for key in ["Apple", "apple", "APPLE", "apricot", "Banana"] {
        put(&kv, "p", key, json!(key)).await;
    }
    let cases: [(&str, &[&str]); 4] = [
        ("ap", &["apple", "apricot"]),
        ("A", &["APPLE", "Apple"]),
        ("Ap", &["Apple"]),
        ("b", &[]),
    ];
    for (prefix, expected) in cases {
        assert_eq!(
            list(&kv, json!({"plugin_name": "p", "prefix": prefix})).await,
            listing(expected, false),
            "prefix {prefix:?}"
        );
    }
}

pub(super) async fn list_with_empty_absent_or_null_prefix_lists_everything(backend: Backend) {
    let kv = Harness::start(backend).await;
    for key in ["b", "a", "c"] {
        put(&kv, "p", key, json!(key)).await;
    }
    let all = listing(&["a", "b", "c"], false);
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "prefix": ""})).await,
        all
    );
    assert_eq!(list(&kv, json!({"plugin_name": "p"})).await, all);
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "prefix": null})).await,
        all
    );
    assert_eq!(
        list(&kv, json!({"plugin_name": "p", "limit": null})).await,
        all
    );
    // A plugin with no keys.
    assert_eq!(
        list(&kv, json!({"plugin_name": "empty"})).await,
        listing::<&str>(&[], false)
    );
}

pub(super) async fn list_prefix_with_unicode(backend: Backend) {
    let kv = Harness::start(backend).await;
    for key in [
        "日本語",
        "日本",
        "日曜日",
        "中文",
        "日",
        "😀a",
        "😀b",
        "😁",
        "é1",
        "e1",
    ] {
        put(&kv, "p", key, json!(key)).await;
    }
    let cases: [(&str, &[&str]); 5] = [
        ("日本", &["日本", "日本語"]),
        ("日", &["日", "日曜日", "日本", "日本語"]), // 曜 U+66DC < 本 U+672C
        ("😀", &["😀a", "😀b"]),
        ("é", &["é1"]),
        ("e", &["e1"]),
    ];
    for (prefix, expected) in cases {
        assert_eq!(
            list(&kv, json!({"plugin_name": "p", "prefix": prefix})).await,
            listing(expected, false),
            "prefix {prefix:?}"
        );
    }
}

pub(super) async fn list_prefix_at_the_top_code_points(backend: Backend) {
    let kv = Harness::start(backend).await;
    let top = "\u{10FFFF}";
    let keys = [
        top.to_string(),
        format!("{top}x"),
        format!("{top}{top}"),
        "\u{10FFFE}".to_owned(),
        "\u{D7FF}a".to_owned(),
        "\u{E000}".to_owned(),
        format!("a{top}"),
        "b".to_owned(),
    ];
    for key in &keys {
        put(&kv, "p", key, json!(1)).await;
    }
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            top.to_owned(),
            vec![keys[0].clone(), keys[1].clone(), keys[2].clone()],
        ),
        (format!("{top}{top}"), vec![keys[2].clone()]),
        ("\u{D7FF}".to_owned(), vec![keys[4].clone()]),
        (format!("a{top}"), vec![keys[6].clone()]),
        ("a".to_owned(), vec![keys[6].clone()]),
    ];
    for (prefix, expected) in cases {
        assert_eq!(
            list(&kv, json!({"plugin_name": "p", "prefix": prefix})).await,
            listing(&expected, false),
            "prefix {prefix:?}"
        );
    }
}

pub(super) async fn unicode_keys_set_get_list(backend: Backend) {
    let kv = Harness::start(backend).await;
    let keys = ["🔑🎉", "键值存储", "キー", "clé-ü", "ключ", "👨‍👩‍👧"];
    for (i, key) in keys.iter().enumerate() {
        put(&kv, "p", key, json!({"i": i})).await;
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            get(&kv, "p", key).await,
            found(json!({"i": i})),
            "key {key}"
        );
    }
    let mut sorted = keys.to_vec();
    sorted.sort();
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&sorted, false)
    );
    assert_eq!(delete(&kv, "p", "键值存储").await, deleted(true));
    assert_eq!(get(&kv, "p", "键值存储").await, absent());
}

pub(super) async fn key_of_255_characters_is_accepted_and_256_rejected(backend: Backend) {
    let kv = Harness::start(backend).await;
    let ok = "k".repeat(255);
    put(&kv, "p", &ok, json!("max")).await;
    assert_eq!(get(&kv, "p", &ok).await, found(json!("max")));
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&[&ok], false)
    );

    let long = "k".repeat(256);
    let message = "Field 'key' must be at most 255 characters long";
    for op in ["set", "get", "delete"] {
        let body = with(valid_body(op), "key", json!(long));
        expect_failure_json(&kv, op, body, "VALIDATION_ERROR", message).await;
    }
    assert_eq!(delete(&kv, "p", &ok).await, deleted(true));
}

pub(super) async fn key_length_counts_characters_not_bytes(backend: Backend) {
    let kv = Harness::start(backend).await;
    let emoji = "😀".repeat(255); // 1020 bytes, 255 characters
    put(&kv, "p", &emoji, json!("emoji")).await;
    assert_eq!(get(&kv, "p", &emoji).await, found(json!("emoji")));
    let accented = "é".repeat(255); // 510 bytes
    put(&kv, "p", &accented, json!("accented")).await;
    assert_eq!(get(&kv, "p", &accented).await, found(json!("accented")));

    let message = "Field 'key' must be at most 255 characters long";
    for long in ["😀".repeat(256), "é".repeat(256)] {
        let body = json!({"plugin_name": "p", "key": long, "value": 1});
        expect_failure_json(&kv, "set", body, "VALIDATION_ERROR", message).await;
    }
}

pub(super) async fn unknown_fields_are_ignored_on_all_ops(backend: Backend) {
    let kv = Harness::start(backend).await;
    let extra = json!({"nested": [1, 2]});
    let reply = kv
        .call(
            "set",
            json!({"plugin_name": "p", "key": "k", "value": 7, "future": extra, "ttl": "x", "success": false}),
        )
        .await;
    assert_eq!(reply, success(json!({})));
    let reply = kv
        .call(
            "get",
            json!({"plugin_name": "p", "key": "k", "future": null, "value": 9}),
        )
        .await;
    assert_eq!(reply, found(json!(7)));
    let reply = kv
        .call(
            "list",
            json!({"plugin_name": "p", "future": true, "offset": 5}),
        )
        .await;
    assert_eq!(reply, listing(&["k"], false));
    let reply = kv
        .call(
            "delete",
            json!({"plugin_name": "p", "key": "k", "future": 1.5, "force": "yes"}),
        )
        .await;
    assert_eq!(reply, deleted(true));
    assert_eq!(get(&kv, "p", "k").await, absent());
}

pub(super) async fn delete_returns_true_then_false(backend: Backend) {
    let kv = Harness::start(backend).await;
    put(&kv, "p", "k", json!("v")).await;
    put(&kv, "p", "other", json!("o")).await;
    assert_eq!(delete(&kv, "p", "k").await, deleted(true));
    assert_eq!(delete(&kv, "p", "k").await, deleted(false));
    assert_eq!(get(&kv, "p", "k").await, absent());
    assert_eq!(
        list(&kv, json!({"plugin_name": "p"})).await,
        listing(&["other"], false)
    );
    assert!(row_times(&kv, "p", "k").await.is_none(), "row really gone");
    // Set again after delete works and is a fresh row.
    put(&kv, "p", "k", json!("again")).await;
    assert_eq!(get(&kv, "p", "k").await, found(json!("again")));
}

pub(super) async fn delete_of_a_missing_key_is_false(backend: Backend) {
    let kv = Harness::start(backend).await;
    assert_eq!(delete(&kv, "p", "never-set").await, deleted(false));
    assert_eq!(delete(&kv, "nobody", "x").await, deleted(false));
    put(&kv, "p", "k", json!(null)).await;
    assert_eq!(
        delete(&kv, "p", "K").await,
        deleted(false),
        "keys are case-sensitive"
    );
    assert_eq!(
        delete(&kv, "p", "k").await,
        deleted(true),
        "a null value is a live key"
    );
}
