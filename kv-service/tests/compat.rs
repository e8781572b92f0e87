//! The breaking-change gate: the schemas (and the AsyncAPI document's operations) committed now
//! against those of a base — `$SCHEMA_BASE` if set, else the last release tag (`v*`), else the
//! merge base with `main`, or on `main` itself the previous commit — fail on a change that
//! breaks clients unless the version says so (at 0.x a minor bump, then a major one).
//! Direction-aware (`nats_rpc::compat`): requests break when they accept less, replies when
//! they can carry what old clients reject. It prints what changed and why it breaks.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use nats_rpc::compat::{Direction, breaking_changes};
use serde_json::Value;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The commit the gate compares with, and why that one.
fn base() -> Option<(String, String)> {
    if let Ok(base) = std::env::var("SCHEMA_BASE") {
        return Some((base, "$SCHEMA_BASE".into()));
    }
    if let Some(tag) = git(&["describe", "--tags", "--abbrev=0", "--match", "v*"]) {
        return Some((tag, "the last release tag".into()));
    }
    let head = git(&["rev-parse", "HEAD"])?;
    for branch in ["origin/main", "main"] {
        if let Some(merge_base) = git(&["merge-base", "HEAD", branch])
            && merge_base != head
        {
            return Some((merge_base, format!("the merge base with {branch}")));
        }
    }
    git(&["rev-parse", "HEAD^"]).map(|parent| (parent, "the previous commit on main".into()))
}

/// `name -> schema` of every JSON file in `schemas/` at `rev` (`None`: the working tree).
fn schemas_at(rev: Option<&str>) -> BTreeMap<String, Value> {
    let mut files = BTreeMap::new();
    match rev {
        None => {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let text = std::fs::read_to_string(&path).unwrap();
                files.insert(name, serde_json::from_str(&text).unwrap());
            }
        }
        Some(rev) => {
            let listing = git(&["ls-tree", "--name-only", rev, "schemas/"]).unwrap_or_default();
            for path in listing.lines().filter(|path| path.ends_with(".json")) {
                let text = git(&["show", &format!("{rev}:{path}")]).unwrap();
                let name = path.trim_start_matches("schemas/").to_owned();
                files.insert(name, serde_json::from_str(&text).unwrap());
            }
        }
    }
    files
}

/// The `[workspace.package] version` of the root Cargo.toml text.
fn version_of(manifest: &str) -> Option<(u64, u64, u64)> {
    let section = manifest.split("[workspace.package]").nth(1)?;
    let line = section
        .lines()
        .find(|line| line.trim_start().starts_with("version"))?;
    let version = line.split('"').nth(1)?;
    let mut parts = version.split(['.', '-', '+']).map(|part| part.parse().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// Whether going from `old` to `new` signals a breaking change.
fn signals_breaking(old: (u64, u64, u64), new: (u64, u64, u64)) -> bool {
    if old.0 == 0 && new.0 == 0 {
        new.1 > old.1
    } else {
        new.0 > old.0
    }
}

/// Every breaking change from `old` to `new` files, as `file: path: reason` lines.
fn report(old: &BTreeMap<String, Value>, new: &BTreeMap<String, Value>) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, old_schema) in old {
        let direction = if name.ends_with(".request.json") {
            Direction::Request
        } else {
            Direction::Reply
        };
        match new.get(name) {
            None => lines.push(format!("{name}: removed (clients of its endpoint lose it)")),
            Some(new_schema) => {
                for change in breaking_changes(old_schema, new_schema, direction) {
                    lines.push(format!("{name}: {change}"));
                }
            }
        }
    }
    lines
}

/// Operations (endpoints) in the old AsyncAPI document that the new one lacks.
fn removed_operations(old: &Value, new: &Value) -> Vec<String> {
    let names = |document: &Value| -> Vec<String> {
        document["operations"]
            .as_object()
            .map(|operations| operations.keys().cloned().collect())
            .unwrap_or_default()
    };
    let now = names(new);
    names(old)
        .into_iter()
        .filter(|name| !now.contains(name))
        .map(|name| format!("asyncapi.json: operation `{name}` removed"))
        .collect()
}

#[test]
fn no_breaking_schema_change_without_a_version_that_says_so() {
    let Some((base, why)) = base() else {
        println!("schema gate: no git history to compare with; nothing to check");
        return;
    };
    let old = schemas_at(Some(&base));
    let new = schemas_at(None);
    let mut breaking = report(&old, &new);
    let asyncapi = kv_service::ASYNCAPI_FILE;
    if let Some(text) = git(&["show", &format!("{base}:{asyncapi}")]) {
        let old_document: Value = serde_json::from_str(&text).unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(asyncapi);
        let new_document: Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        breaking.extend(removed_operations(&old_document, &new_document));
    }
    let old_version = git(&["show", &format!("{base}:Cargo.toml")])
        .and_then(|manifest| version_of(&manifest))
        .expect("the base has a workspace version");
    let new_version = version_of(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml")).unwrap(),
    )
    .expect("a workspace version");
    println!(
        "schema gate: {} schema files at {base} ({why}, version {old_version:?}) against {} now \
         (version {new_version:?}): {} breaking changes",
        old.len(),
        new.len(),
        breaking.len()
    );
    for line in &breaking {
        println!("  breaking: {line}");
    }
    assert!(
        breaking.is_empty() || signals_breaking(old_version, new_version),
        "{} breaking schema changes since {base} ({why}) without a version that signals them \
         (at 0.x bump the minor version in [workspace.package], then the major):\n  {}",
        breaking.len(),
        breaking.join("\n  ")
    );
}

#[test]
fn the_gate_reports_removed_files_and_operations_and_reads_versions() {
    let schema = serde_json::json!({"type": "object", "properties": {"key": {"type": "string", "maxLength": 255}}});
    let mut old = BTreeMap::new();
    old.insert("a.get.request.json".to_owned(), schema.clone());
    old.insert("a.get.response.json".to_owned(), schema.clone());
    let mut new = old.clone();
    new.remove("a.get.response.json");
    let mut tighter = schema.clone();
    tighter["properties"]["key"]["maxLength"] = 100.into();
    new.insert("a.get.request.json".to_owned(), tighter);
    let lines = report(&old, &new);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with(
        "a.get.request.json: /properties/key/maxLength: `maxLength` is 100 (was 255)"
    ));
    assert_eq!(
        lines[1],
        "a.get.response.json: removed (clients of its endpoint lose it)"
    );
    let old_api = serde_json::json!({"operations": {"get": {}, "set": {}}});
    let new_api = serde_json::json!({"operations": {"get": {}}});
    assert_eq!(
        removed_operations(&old_api, &new_api),
        ["asyncapi.json: operation `set` removed"]
    );
    assert_eq!(
        version_of("[workspace]\n[workspace.package]\nversion = \"0.1.0\"\n"),
        Some((0, 1, 0))
    );
    assert!(signals_breaking((0, 1, 0), (0, 2, 0)));
    assert!(!signals_breaking((0, 1, 0), (0, 1, 9)));
    assert!(signals_breaking((1, 4, 0), (2, 0, 0)));
    assert!(!signals_breaking((1, 4, 0), (1, 5, 0)));
}
