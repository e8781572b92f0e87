//! The committed `schemas/` folder is exactly what `kv-service schemas` and `kv-service
//! asyncapi` write (refresh with `SCHEMAS=overwrite cargo test -p kv-service --test schemas`),
//! those schemas accept the contract's valid payloads and reject its invalid ones, and the
//! AsyncAPI document keeps the reply rules its official parser does not check.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::{Value, json};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn asyncapi_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(kv_service::ASYNCAPI_FILE)
}

fn load(name: &str) -> Value {
    let text =
        std::fs::read_to_string(dir().join(name)).unwrap_or_else(|err| panic!("{name}: {err}"));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{name}: {err}"))
}

fn validator(name: &str) -> jsonschema::Validator {
    jsonschema::validator_for(&load(name)).unwrap_or_else(|err| panic!("{name}: {err}"))
}

#[test]
fn committed_schemas_are_fresh() {
    let rendered = kv_service::rendered_schemas();
    let asyncapi = kv_service::rendered_asyncapi(nats_rpc::DEFAULT_QUEUE_GROUP);
    if std::env::var("SCHEMAS").as_deref() == Ok("overwrite") {
        kv_service::write_schemas(&dir()).expect("write schemas");
        std::fs::write(asyncapi_file(), &asyncapi).expect("write docs/asyncapi.json");
    }
    let mut stale = Vec::new();
    for (name, text) in &rendered {
        match std::fs::read_to_string(dir().join(name)) {
            Ok(committed) if &committed == text => {}
            Ok(_) => stale.push(format!("{name} differs")),
            Err(_) => stale.push(format!("{name} is missing")),
        }
    }
    if std::fs::read_to_string(asyncapi_file()).ok().as_ref() != Some(&asyncapi) {
        stale.push("docs/asyncapi.json differs".into());
    }
    let expected: BTreeSet<&str> = rendered.iter().map(|(name, _)| name.as_str()).collect();
    for entry in std::fs::read_dir(dir()).expect("schemas/ exists") {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !expected.contains(name.as_str()) {
            stale.push(format!("{name} is not generated any more"));
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/ is stale ({}); refresh with `SCHEMAS=overwrite cargo test -p kv-service --test schemas`",
        stale.join(", ")
    );
    assert_eq!(
        rendered.len(),
        24,
        "request, success and error schema for the four fixed and four per-plugin subjects"
    );
}

#[test]
fn request_schemas_accept_valid_and_reject_invalid_payloads() {
    let cases: [(&str, Vec<Value>, Vec<Value>); 4] = [
        (
            "rosey.db.kv.set.request.json",
            vec![
                json!({"plugin_name": "my-plugin", "key": "config", "value": {"theme": "dark"}}),
                json!({"plugin_name": "p", "key": "k", "value": null}),
                json!({"plugin_name": "p_1-x", "key": "k", "value": [1, "a"], "ttl_seconds": 3600}),
                json!({"plugin_name": "p", "key": "k", "value": 1, "ttl_seconds": null}),
                json!({"plugin_name": "p", "key": "k", "value": 1, "ttl_seconds": 2147483647}),
                json!({"plugin_name": "p", "key": "k", "value": 1, "unknown": true}),
            ],
            vec![
                json!({"key": "k", "value": 1}),
                json!({"plugin_name": "p", "value": 1}),
                json!({"plugin_name": "p", "key": "k"}),
                json!({"plugin_name": "p", "key": 123, "value": 1}),
                json!({"plugin_name": "P", "key": "k", "value": 1}),
                json!({"plugin_name": "p", "key": "", "value": 1}),
                json!({"plugin_name": "p", "key": "k".repeat(256), "value": 1}),
                json!({"plugin_name": "p", "key": "k", "value": 1, "ttl_seconds": 0}),
                json!({"plugin_name": "p", "key": "k", "value": 1, "ttl_seconds": -1}),
                json!({"plugin_name": "p", "key": "k", "value": 1, "ttl_seconds": 1.5}),
                json!({"plugin_name": "p", "key": "k", "value": 1, "ttl_seconds": "5"}),
                json!({"plugin_name": "p", "key": "k", "value": 1, "ttl_seconds": true}),
                json!({"plugin_name": "p", "key": "k", "value": 1, "ttl_seconds": 2147483648_u64}),
                json!([]),
            ],
        ),
        (
            "rosey.db.kv.get.request.json",
            vec![json!({"plugin_name": "p", "key": "k"})],
            vec![
                json!({"plugin_name": "p"}),
                json!({"plugin_name": "p", "key": null}),
                json!({"plugin_name": "a".repeat(101), "key": "k"}),
                json!("s"),
            ],
        ),
        (
            "rosey.db.kv.delete.request.json",
            vec![json!({"plugin_name": "p", "key": "😀"})],
            vec![json!({"key": "k"}), json!(5)],
        ),
        (
            "rosey.db.kv.list.request.json",
            vec![
                json!({"plugin_name": "p"}),
                json!({"plugin_name": "p", "prefix": "user:", "limit": 100}),
                json!({"plugin_name": "p", "prefix": "%_", "limit": 10000}),
                json!({"plugin_name": "p", "limit": 1}),
            ],
            vec![
                json!({"prefix": "x"}),
                json!({"plugin_name": "p", "limit": 0}),
                json!({"plugin_name": "p", "limit": 10001}),
                json!({"plugin_name": "p", "limit": "5"}),
                json!({"plugin_name": "p", "prefix": 5}),
                json!(null),
            ],
        ),
    ];
    for (name, valid, invalid) in cases {
        let schema = validator(name);
        for payload in valid {
            assert!(schema.is_valid(&payload), "{name} should accept {payload}");
        }
        for payload in invalid {
            assert!(!schema.is_valid(&payload), "{name} should reject {payload}");
        }
    }
}

#[test]
fn reply_schemas_accept_the_contract_replies() {
    let accepts = |name: &str, payload: Value| {
        assert!(
            validator(name).is_valid(&payload),
            "{name} should accept {payload}"
        );
    };
    let rejects = |name: &str, payload: Value| {
        assert!(
            !validator(name).is_valid(&payload),
            "{name} should reject {payload}"
        );
    };
    accepts(
        "rosey.db.kv.set.response.json",
        json!({"success": true, "data": {}}),
    );
    rejects(
        "rosey.db.kv.set.response.json",
        json!({"success": false, "data": {}}),
    );
    accepts(
        "rosey.db.kv.get.response.json",
        json!({"success": true, "data": {"exists": true, "value": {"theme": "dark"}}}),
    );
    accepts(
        "rosey.db.kv.get.response.json",
        json!({"success": true, "data": {"exists": true, "value": null}}),
    );
    accepts(
        "rosey.db.kv.get.response.json",
        json!({"success": true, "data": {"exists": false}}),
    );
    rejects(
        "rosey.db.kv.get.response.json",
        json!({"success": true, "data": {}}),
    );
    accepts(
        "rosey.db.kv.delete.response.json",
        json!({"success": true, "data": {"deleted": false}}),
    );
    accepts(
        "rosey.db.kv.list.response.json",
        json!({"success": true, "data": {"keys": ["a", "b"], "count": 2, "truncated": false}}),
    );
    rejects(
        "rosey.db.kv.list.response.json",
        json!({"success": true, "data": {"keys": ["a"]}}),
    );
    for op in ["set", "get", "delete", "list"] {
        let name = format!("rosey.db.kv.{op}.error.json");
        for code in [
            "INVALID_JSON",
            "MISSING_FIELD",
            "VALIDATION_ERROR",
            "INTERNAL_ERROR",
            "OVERLOADED",
        ] {
            accepts(
                &name,
                json!({"success": false, "error": {"code": code, "message": "m"}}),
            );
        }
        rejects(
            &name,
            json!({"success": false, "error": {"code": "NOPE", "message": "m"}}),
        );
        rejects(
            &name,
            json!({"success": false, "error": {"code": "INVALID_JSON"}}),
        );
    }
    accepts(
        "rosey.db.kv.set.error.json",
        json!({"success": false, "error": {"code": "VALUE_TOO_LARGE", "message": "Value size (65537 bytes) exceeds 64KB limit (65536 bytes)"}}),
    );
}

/// What @asyncapi/parser lets through unchecked (it validates `reply` only shallowly): every
/// operation receives on its request channel, its reply lists exactly the success and the
/// error message, both defined in its reply channel, whose address is unknown (`null`) and
/// which no `reply.address` contradicts; every `$ref` points at something that exists.
#[test]
fn asyncapi_replies_are_whole_and_every_reference_resolves() {
    let document: Value =
        serde_json::from_str(&std::fs::read_to_string(asyncapi_file()).unwrap()).unwrap();
    assert_eq!(document["asyncapi"], "3.0.0");
    let resolve = |reference: &Value| -> Value {
        let pointer = reference["$ref"]
            .as_str()
            .unwrap_or_else(|| panic!("not a reference: {reference}"));
        let pointer = pointer.strip_prefix('#').expect("a local reference");
        document
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{pointer} does not exist"))
            .clone()
    };
    let operations = document["operations"].as_object().unwrap();
    assert_eq!(operations.len(), 8);
    for (name, operation) in operations {
        assert_eq!(operation["action"], "receive", "{name}");
        assert_eq!(operation["bindings"]["nats"]["queue"], "q", "{name}");
        let channel = resolve(&operation["channel"]);
        assert!(
            channel["address"]
                .as_str()
                .unwrap()
                .starts_with("rosey.db.kv."),
            "{name}"
        );
        for message in operation["messages"].as_array().unwrap() {
            let reference = message["$ref"].as_str().unwrap();
            assert!(
                reference.starts_with(&format!("#/channels/{name}/messages/")),
                "{reference}"
            );
            resolve(&resolve(message));
        }
        let reply = &operation["reply"];
        assert!(
            reply.get("address").is_none(),
            "{name}: NATS replies go to the inbox"
        );
        let reply_channel_ref = reply["channel"]["$ref"].as_str().unwrap();
        let reply_channel = resolve(&reply["channel"]);
        assert_eq!(reply_channel["address"], Value::Null, "{name}");
        let listed: Vec<&str> = reply["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|message| message["$ref"].as_str().unwrap())
            .collect();
        assert_eq!(
            listed,
            [
                format!("{reply_channel_ref}/messages/success"),
                format!("{reply_channel_ref}/messages/error"),
            ],
            "{name}"
        );
        for message in reply["messages"].as_array().unwrap() {
            let defined = resolve(message);
            let payload = &resolve(&defined)["payload"];
            assert_eq!(
                payload["schemaFormat"],
                "application/schema+json;version=draft-07"
            );
            jsonschema::draft7::new(&payload["schema"])
                .unwrap_or_else(|err| panic!("{name}: not a draft-07 schema: {err}"));
        }
        let error = resolve(&reply_channel["messages"]["error"]);
        let headers = &error["headers"]["schema"]["properties"];
        for header in [
            "Nats-Service-Error",
            "Nats-Service-Error-Code",
            "Rpc-Error-Code",
        ] {
            assert!(headers.get(header).is_some(), "{name}: {header}");
        }
    }
    // Payloads are the published schemas, minus `$schema` and `$id`.
    let get = &document["components"]["messages"]["get.request"]["payload"]["schema"];
    let mut published = load("rosey.db.kv.get.request.json");
    let object = published.as_object_mut().unwrap();
    object.remove("$schema");
    object.remove("$id");
    assert_eq!(get, &published);
    let plugin_get = &document["channels"]["plugin_get"];
    assert_eq!(plugin_get["address"], "rosey.db.kv.{wildcard0}.get");
    assert!(plugin_get["parameters"]["wildcard0"].is_object());
}
