//! Fuzzes kv-service's whole request path: payload bytes -> `Responder::respond` -> one reply,
//! exactly as the service runs it for a NATS message (UTF-8/JSON parse, MISSING_FIELD and schema
//! validation, the handler on a real SQLite store, the envelope), without NATS.
//!
//! Input: the first byte picks the endpoint and the store, the rest is the payload.
//! - `byte & 0x7f` (modulo the table length) indexes [`targets`]: 0 set, 1 get, 2 delete, 3 list,
//!   4-7 the same on the per-plugin subjects `rosey.db.kv.fuzz.<op>`, 8 a per-plugin set on a
//!   subject whose plugin token is invalid.
//! - `byte & 0x80` picks the store: clear = the in-memory read mirror on (the production
//!   default), set = mirror off (every read goes to SQLite).
//!
//! Oracle (a failed assert is a crash libFuzzer reports):
//! - the reply payload is JSON without duplicate members (except inside a stored value, which
//!   is echoed as it was set: see [`reply_json`]), and exactly one envelope of the
//!   contract (docs/NATS_SUBJECTS.md): `{"success":true,"data":..}` matching the endpoint's
//!   published success schema, or `{"success":false,"error":{"code":..,"message":..}}` with a
//!   code from the endpoint's catalogue and a message of the documented form;
//! - never `INTERNAL_ERROR`: the store is healthy, so one means a panic or a storage failure
//!   (the log line, on stderr, says which);
//! - what a successful `set` wrote reads back (`get`, and `list` by the key as prefix), and a
//!   successful `delete` leaves the key gone.
//!
//! The stores are process-wide, so an input sees what earlier inputs wrote; both are replaced by
//! fresh ones every `KV_FUZZ_RESET_EVERY` inputs (default 10000), which keeps the database small.

#![no_main]

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};

use kv_service::api;
use kv_service::store::{Store, StoreOptions};
use libfuzzer_sys::fuzz_target;
use nats_rpc::{Endpoint, EndpointSchemas, Reply, Responder, codes};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

/// The endpoints under test, indexed by the input's first byte. Adding an endpoint is one line
/// here; append (do not reorder), so the seed corpus keeps its meaning. An endpoint on a wildcard
/// subject gets `fuzz` for each wildcard (`Target::of`), or a subject of your choosing
/// (`Target::on::<E>("rosey.db.kv.other.get")`).
fn targets() -> Vec<Target> {
    vec![
        Target::of::<api::set>().reads_back(),
        Target::of::<api::get>(),
        Target::of::<api::delete>().removes(),
        Target::of::<api::list>(),
        Target::of::<api::plugin_set>().reads_back(),
        Target::of::<api::plugin_get>(),
        Target::of::<api::plugin_delete>().removes(),
        Target::of::<api::plugin_list>(),
        Target::on::<api::plugin_set>("rosey.db.kv.Not-A-Plugin.set"),
    ]
}

/// Token put in place of each wildcard of an endpoint's subject by [`Target::of`].
const WILDCARD_TOKEN: &str = "fuzz";
/// Longest error message accepted: a reply never echoes the payload.
const MAX_MESSAGE: usize = 1000;

static HARNESS: LazyLock<Mutex<Harness>> = LazyLock::new(|| Mutex::new(Harness::new()));

fuzz_target!(|data: &[u8]| {
    HARNESS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .run(data);
});

/// One endpoint of the table: how to build its responder, and what its replies may be.
struct Target {
    name: &'static str,
    /// The (concrete) subject requests are sent on.
    subject: String,
    /// Error codes a healthy service may answer with: the catalogue minus INTERNAL_ERROR (and
    /// OVERLOADED, which only the NATS reader produces).
    codes: Vec<&'static str>,
    /// The endpoint's published success-reply schema, compiled.
    success: jsonschema::Validator,
    bind: fn(&Arc<Store>) -> Box<dyn Respond>,
    /// What the subject's first wildcard matched (the plugin, on `rosey.db.kv.*.<op>`).
    plugin: Option<String>,
    /// A check run after each success: what the request did is visible to get and list.
    after: Option<After>,
}

#[derive(Clone, Copy)]
enum After {
    /// A set: the value reads back.
    ReadsBack,
    /// A delete: the key is gone.
    Removes,
}

impl Target {
    fn of<E: Endpoint<State = Store>>() -> Self {
        let subject = E::SUBJECT
            .split('.')
            .map(|token| match token {
                "*" | ">" => WILDCARD_TOKEN,
                token => token,
            })
            .collect::<Vec<_>>()
            .join(".");
        Self::on::<E>(&subject)
    }

    fn on<E: Endpoint<State = Store>>(subject: &str) -> Self {
        let schemas = EndpointSchemas::of::<E>();
        let success = jsonschema::validator_for(&schemas.response)
            .unwrap_or_else(|err| panic!("{}: success schema: {err}", E::NAME));
        let codes = nats_rpc::catalogue::<E::Error>()
            .into_iter()
            .map(|code| code.code)
            .filter(|code| *code != codes::INTERNAL_ERROR.code && *code != codes::OVERLOADED.code)
            .collect();
        let plugin = nats_rpc::Subject::new(subject, E::SUBJECT)
            .wildcard(0)
            .map(str::to_owned);
        Target {
            name: E::NAME,
            subject: subject.to_owned(),
            codes,
            success,
            bind: bind::<E>,
            plugin,
            after: None,
        }
    }

    /// After a success, `get` returns the value set and `list` lists the key.
    fn reads_back(self) -> Self {
        Target {
            after: Some(After::ReadsBack),
            ..self
        }
    }

    /// After a success, `get` finds no key.
    fn removes(self) -> Self {
        Target {
            after: Some(After::Removes),
            ..self
        }
    }
}

fn bind<E: Endpoint<State = Store>>(store: &Arc<Store>) -> Box<dyn Respond> {
    Box::new(Responder::<E>::new(store.clone()).expect("the request schema compiles"))
}

type Replying<'a> = Pin<Box<dyn Future<Output = Reply> + 'a>>;

/// `Responder<E>` with `E` erased, so one table holds every endpoint.
trait Respond: Send + Sync {
    fn answer<'a>(&'a self, subject: &'a str, payload: &'a [u8]) -> Replying<'a>;
}

impl<E: Endpoint> Respond for Responder<E> {
    fn answer<'a>(&'a self, subject: &'a str, payload: &'a [u8]) -> Replying<'a> {
        Box::pin(self.respond(subject, payload))
    }
}

/// One open store and every endpoint bound to it.
struct Bound {
    store: Arc<Store>,
    responders: Vec<Box<dyn Respond>>,
    get: Responder<api::get>,
    list: Responder<api::list>,
}

impl Bound {
    fn close(self, runtime: &tokio::runtime::Runtime) {
        let Bound { store, .. } = self; // responders dropped: the last reference is ours
        if let Ok(store) = Arc::try_unwrap(store) {
            runtime.block_on(store.close());
        }
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    targets: Vec<Target>,
    dir: tempfile::TempDir,
    /// `[mirror on, mirror off]`.
    stores: Vec<Bound>,
    inputs: u64,
    /// With `KV_FUZZ_STATS` set: replies per (endpoint, outcome), printed at each store reset.
    stats: Option<std::collections::BTreeMap<(&'static str, String), u64>>,
    reset_every: u64,
    generation: u64,
}

impl Harness {
    fn new() -> Self {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let reset_every = std::env::var("KV_FUZZ_RESET_EVERY")
            .ok()
            .and_then(|text| text.parse().ok())
            .filter(|every| *every > 0)
            .unwrap_or(10_000);
        let targets = targets();
        // The table is ordered for the seed corpus, so it cannot simply be `api::endpoints`; it
        // must still cover every endpoint kv-service serves.
        for served in api::schemas() {
            assert!(
                targets.iter().any(|target| target.name == served.name),
                "endpoint `{}` is served but not fuzzed: append it to `targets()`",
                served.name
            );
        }
        let mut harness = Harness {
            runtime,
            targets,
            dir: tempfile::Builder::new()
                .prefix("kv-fuzz-")
                .tempdir()
                .expect("a temporary directory"),
            stores: Vec::new(),
            inputs: 0,
            stats: std::env::var_os("KV_FUZZ_STATS").map(|_| Default::default()),
            reset_every,
            generation: 0,
        };
        harness.open_stores();
        harness
    }

    /// Opens a fresh pair of stores (new database files), closing and deleting the old ones.
    fn open_stores(&mut self) {
        if let Some(stats) = &self.stats {
            let lines: Vec<String> = stats
                .iter()
                .map(|((name, outcome), count)| format!("  {name:>14} {outcome:<17} {count}"))
                .collect();
            eprintln!(
                "kv-fuzz: replies after {} inputs:\n{}",
                self.inputs,
                lines.join("\n")
            );
        }
        for bound in self.stores.drain(..) {
            bound.close(&self.runtime);
        }
        for entry in std::fs::read_dir(self.dir.path()).expect("the database directory") {
            let _ = std::fs::remove_file(entry.expect("a directory entry").path());
        }
        self.generation += 1;
        for (which, mirror_budget_bytes) in [("mirrored", 48 << 20), ("sqlite", 0)] {
            let path = self
                .dir
                .path()
                .join(format!("{which}-{}.db", self.generation));
            let options = StoreOptions {
                read_connections: 2,
                mirror_budget_bytes,
                ..StoreOptions::new(format!("sqlite://{}", path.display()))
            };
            let store = self
                .runtime
                .block_on(Store::open(&options))
                .unwrap_or_else(|err| panic!("cannot open {}: {err}", options.url));
            assert_eq!(store.mirrored(), mirror_budget_bytes > 0, "{which} store");
            let store = Arc::new(store);
            self.stores.push(Bound {
                responders: self.targets.iter().map(|t| (t.bind)(&store)).collect(),
                get: Responder::new(store.clone()).expect("get schema"),
                list: Responder::new(store.clone()).expect("list schema"),
                store,
            });
        }
    }

    fn run(&mut self, data: &[u8]) {
        let Some((&selector, payload)) = data.split_first() else {
            return;
        };
        self.inputs += 1;
        if self.inputs.is_multiple_of(self.reset_every) {
            self.open_stores();
        }
        let index = usize::from(selector & 0x7f) % self.targets.len();
        let target = &self.targets[index];
        let bound = &self.stores[usize::from(selector >> 7)];
        let reply = self
            .runtime
            .block_on(bound.responders[index].answer(&target.subject, payload));
        let success = check_envelope(target, &reply, payload);
        if let Some(stats) = &mut self.stats {
            let outcome = reply.error().map_or("success", |(code, _)| code);
            *stats.entry((target.name, outcome.to_owned())).or_default() += 1;
        }
        match target.after {
            Some(After::ReadsBack) if success => {
                check_set_reads_back(&self.runtime, bound, target, payload);
            }
            Some(After::Removes) if success => {
                check_delete_removes(&self.runtime, bound, target, payload);
            }
            _ => {}
        }
    }
}

/// Asserts `reply` is exactly one contract envelope for `target`; returns whether it is a
/// success.
fn check_envelope(target: &Target, reply: &Reply, payload: &[u8]) -> bool {
    let body = reply.payload();
    let text = std::str::from_utf8(&body)
        .unwrap_or_else(|err| fail(target, payload, &format!("reply is not UTF-8: {err}")));
    let envelope = reply_json(text).unwrap_or_else(|err| {
        fail(
            target,
            payload,
            &format!("reply is not JSON ({err}): {text}"),
        )
    });
    let Value::Object(members) = &envelope else {
        fail(target, payload, &format!("reply is not an object: {text}"));
    };
    match members.get("success") {
        Some(Value::Bool(true)) => {
            if members.len() != 2 || !members.contains_key("data") {
                fail(
                    target,
                    payload,
                    &format!("success reply is not exactly success+data: {text}"),
                );
            }
            if let Some((code, message)) = reply.error() {
                fail(
                    target,
                    payload,
                    &format!("success payload on an error reply {code}: {message}"),
                );
            }
            if let Some(error) = target.success.iter_errors(&envelope).next() {
                fail(
                    target,
                    payload,
                    &format!(
                        "success reply breaks the published schema ({error} at {}): {text}",
                        error.instance_path()
                    ),
                );
            }
            true
        }
        Some(Value::Bool(false)) => {
            if members.len() != 2 {
                fail(
                    target,
                    payload,
                    &format!("error reply is not exactly success+error: {text}"),
                );
            }
            let Some(Value::Object(error)) = members.get("error") else {
                fail(
                    target,
                    payload,
                    &format!("error reply without an error object: {text}"),
                );
            };
            let (Some(Value::String(code)), Some(Value::String(message)), 2) =
                (error.get("code"), error.get("message"), error.len())
            else {
                fail(
                    target,
                    payload,
                    &format!("error is not exactly string code+message: {text}"),
                );
            };
            if reply.error() != Some((code.as_str(), message.as_str())) {
                fail(
                    target,
                    payload,
                    &format!("envelope disagrees with Reply::error(): {text}"),
                );
            }
            if code == codes::INTERNAL_ERROR.code {
                fail(
                    target,
                    payload,
                    "INTERNAL_ERROR from a healthy store: a panic or a storage failure (see the log above)",
                );
            }
            if !target.codes.contains(&code.as_str()) {
                fail(
                    target,
                    payload,
                    &format!("code {code} is not in {:?}: {text}", target.codes),
                );
            }
            check_message(target, payload, code, message);
            false
        }
        _ => fail(
            target,
            payload,
            &format!("reply has no boolean success: {text}"),
        ),
    }
}

/// The message forms the contract spells out.
fn check_message(target: &Target, payload: &[u8], code: &str, message: &str) {
    let ok = !message.is_empty()
        && message.len() <= MAX_MESSAGE
        && match code {
            "INVALID_JSON" => message.starts_with("Invalid JSON: "),
            "MISSING_FIELD" => message
                .strip_prefix("Required field '")
                .and_then(|rest| rest.strip_suffix("' is missing"))
                .is_some_and(|name| !name.is_empty()),
            "VALUE_TOO_LARGE" => message
                .strip_prefix("Value size (")
                .and_then(|rest| rest.strip_suffix(" bytes) exceeds 64KB limit (65536 bytes)"))
                .and_then(|size| size.parse::<usize>().ok())
                .is_some_and(|size| size > api::MAX_VALUE_BYTES),
            _ => true,
        };
    if !ok {
        fail(
            target,
            payload,
            &format!("{code} message breaks the contract's form: {message:?}"),
        );
    }
}

/// After a successful set: `get` returns the value (semantically equal JSON, at most 64 KiB as
/// stored) and `list` with the key as prefix lists the key first. A key with a TTL may already
/// have expired; a request with duplicate members is skipped (which one counts is not ours to
/// guess).
fn check_set_reads_back(
    runtime: &tokio::runtime::Runtime,
    bound: &Bound,
    target: &Target,
    payload: &[u8],
) {
    let Some((plugin, key, request)) = parse_request(target, payload) else {
        return;
    };
    let Some(sent) = request.get("value") else {
        fail(target, payload, "set succeeded without a value");
    };
    let expires = !matches!(request.get("ttl_seconds"), None | Some(Value::Null));
    let reply = get_back(runtime, bound, &plugin, &key);
    let text = reply.as_str();
    let got = strict_json(text).expect("checked JSON");
    match (&got["data"]["exists"], expires) {
        (Value::Bool(true), _) => {}
        (Value::Bool(false), true) => return,
        _ => fail(target, payload, &format!("get after set: {text}")),
    }
    // The stored text, as it is on the wire.
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        data: Data<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        value: &'a RawValue,
    }
    let stored: Envelope<'_> = serde_json::from_str(text).expect("a get reply with a value");
    let stored = stored.data.value.get();
    if stored.len() > api::MAX_VALUE_BYTES {
        fail(
            target,
            payload,
            &format!("stored {} bytes, over the limit", stored.len()),
        );
    }
    if strict_json(stored).as_ref() != Ok(sent) {
        fail(
            target,
            payload,
            &format!("get returns {stored}, not what was set"),
        );
    }
    let probe = json!({"plugin_name": plugin, "prefix": key, "limit": 1}).to_string();
    let reply = runtime.block_on(bound.list.respond(api::list::SUBJECT, probe.as_bytes()));
    let body = reply.payload();
    let listed =
        strict_json(std::str::from_utf8(&body).expect("checked UTF-8")).expect("checked JSON");
    let first = &listed["data"]["keys"][0];
    if first.as_str() != Some(key.as_str()) && !expires {
        fail(
            target,
            payload,
            &format!("list with prefix = the key set does not list it first: {listed}"),
        );
    }
}

/// After a successful delete, the key is gone.
fn check_delete_removes(
    runtime: &tokio::runtime::Runtime,
    bound: &Bound,
    target: &Target,
    payload: &[u8],
) {
    let Some((plugin, key, _)) = parse_request(target, payload) else {
        return;
    };
    let got = strict_json(&get_back(runtime, bound, &plugin, &key)).expect("checked JSON");
    if got["data"]["exists"] != Value::Bool(false) {
        fail(target, payload, &format!("get after delete: {got}"));
    }
}

/// `(plugin, key, members)` of a request that was accepted (the plugin named by the subject,
/// else by `plugin_name`), unless it has duplicate members.
/// The text of the `get` reply for `plugin` / `key`, through the same request path.
fn get_back(runtime: &tokio::runtime::Runtime, bound: &Bound, plugin: &str, key: &str) -> String {
    let probe = json!({"plugin_name": plugin, "key": key}).to_string();
    let reply = runtime.block_on(bound.get.respond(api::get::SUBJECT, probe.as_bytes()));
    String::from_utf8(reply.payload().to_vec()).expect("checked UTF-8")
}

fn parse_request(target: &Target, payload: &[u8]) -> Option<(String, String, Map<String, Value>)> {
    let Ok(Value::Object(request)) = strict_json(std::str::from_utf8(payload).ok()?) else {
        return None;
    };
    let plugin = match &target.plugin {
        Some(plugin) => plugin.clone(),
        None => request.get("plugin_name")?.as_str()?.to_owned(),
    };
    let key = request.get("key")?.as_str()?.to_owned();
    Some((plugin, key, request))
}

/// Parses a reply: duplicate members refused wherever kv-service writes the JSON itself, kept
/// (the last one wins, as serde_json does) inside a get's `data.value`. That is a stored value,
/// echoed as it was set, and the contract keeps a value's repeated names
/// (docs/NATS_SUBJECTS.md: `{"a":1,"a":2}` comes back exactly so): an earlier input may have
/// stored one, and any later get of its key returns it.
fn reply_json(text: &str) -> Result<Value, String> {
    strict_json_except(text, &["data", "value"])
}

/// Parses JSON refusing duplicate members, at any depth: each level is parsed on its own, with
/// the members below captured raw (serde_json's recursion limit counts one level, so a reply
/// nesting a stored value deeper than 128 still parses).
fn strict_json(text: &str) -> Result<Value, String> {
    strict_json_except(text, &[])
}

/// [`strict_json`], except the member at `echoed` (a path of member names from the top; empty
/// for none), which is parsed as serde_json parses it.
fn strict_json_except(text: &str, echoed: &[&str]) -> Result<Value, String> {
    match text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .as_bytes()
        .first()
    {
        Some(b'{') => {
            let Members(members) = serde_json::from_str(text).map_err(|err| err.to_string())?;
            let mut object = Map::new();
            for (name, raw) in members {
                if object.contains_key(&name) {
                    return Err(format!("duplicate member {name:?}"));
                }
                let value = match echoed {
                    [last] if *last == name => {
                        serde_json::from_str(raw.get()).map_err(|err| err.to_string())?
                    }
                    [next, rest @ ..] if *next == name => strict_json_except(raw.get(), rest)?,
                    _ => strict_json(raw.get())?,
                };
                object.insert(name, value);
            }
            Ok(Value::Object(object))
        }
        Some(b'[') => {
            let items: Vec<&RawValue> =
                serde_json::from_str(text).map_err(|err| err.to_string())?;
            items
                .into_iter()
                .map(|item| strict_json(item.get()))
                .collect::<Result<_, _>>()
                .map(Value::Array)
        }
        _ => serde_json::from_str(text).map_err(|err| err.to_string()),
    }
}

/// An object's members in order, duplicates kept, values unparsed.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Collect<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Collect<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Members<'a>, M::Error> {
                let mut members = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    members.push((name, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Collect(std::marker::PhantomData))
    }
}

fn fail(target: &Target, payload: &[u8], why: &str) -> ! {
    let endpoint = target.name;
    let shown = String::from_utf8_lossy(&payload[..payload.len().min(400)]);
    panic!(
        "{endpoint}: {why}\n  payload ({} bytes): {shown}{}",
        payload.len(),
        if payload.len() > 400 { "…" } else { "" }
    );
}
