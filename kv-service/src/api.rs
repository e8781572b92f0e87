//! The four `rosey.db.kv.*` operations: request and reply types whose schemas carry the
//! contract's field rules, and one `#[nats_rpc]` handler each. Parsing, validation, the envelope
//! and error replies are nats-rpc's; what is left here is the domain.

use std::borrow::Cow;

use nats_rpc::{Context, Deadline, ErrorCode, INTERNAL_MESSAGE, RpcError, codes, nats_rpc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::store::{self, Store, StoreError};

/// Longest plugin name, in characters (all ASCII).
const MAX_PLUGIN_NAME_CHARS: usize = 100;
/// `plugin_name` rule, shared by every request (a regex literal: a unit test holds its bound to
/// [`MAX_PLUGIN_NAME_CHARS`]).
const PLUGIN_NAME_PATTERN: &str = "^[a-z0-9_-]{1,100}$";
/// [`PLUGIN_NAME_PATTERN`] as code, for plugin names that arrive outside a request body (the
/// per-plugin subjects' token); a unit test holds the two in agreement.
fn is_plugin_name(name: &str) -> bool {
    (1..=MAX_PLUGIN_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub use crate::value::MAX_VALUE_BYTES;
use crate::value::MAX_VALUE_DEPTH;
/// Longest key, in characters (Unicode scalar values, as JSON Schema's `maxLength` counts).
pub const MAX_KEY_CHARS: u32 = 255;
/// Longest time to live, in seconds (the largest signed 32-bit integer, as the original
/// service's).
pub const MAX_TTL_SECONDS: u32 = 2_147_483_647;
/// Most keys one `list` returns.
pub const MAX_LIST_LIMIT: u32 = 10_000;
/// `list` limit when the request gives none.
pub const DEFAULT_LIMIT: u32 = 1000;

// The schemas' descriptions of the limited fields, written from the limits (the docs' tables
// are held to the same constants by a test).
fn key_rule() -> String {
    format!("1 to {MAX_KEY_CHARS} characters.")
}

fn value_rule() -> String {
    format!("Any JSON value, `null` included; at most {MAX_VALUE_BYTES} bytes as compact JSON.")
}

fn limit_rule() -> String {
    format!("Most keys to return, 1 to {MAX_LIST_LIMIT}; default {DEFAULT_LIMIT}.")
}

/// `VALUE_TOO_LARGE`: the one domain error code.
const VALUE_TOO_LARGE: ErrorCode = ErrorCode::new(
    "VALUE_TOO_LARGE",
    413,
    "set: the value's compact JSON encoding is over 65536 bytes; the message gives its size",
);

/// Upsert one key, optionally with a time to live.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct SetRequest {
    /// The calling plugin's namespace.
    #[schemars(regex(pattern = PLUGIN_NAME_PATTERN))]
    pub plugin_name: String,
    /// The key, 1 to [`MAX_KEY_CHARS`] characters.
    #[schemars(description = key_rule(), length(min = 1, max = MAX_KEY_CHARS))]
    pub key: String,
    /// Any JSON value, `null` included; at most [`MAX_VALUE_BYTES`] as compact JSON.
    // `tsType`: json-schema-to-typescript types a schema without `type` as an object, where any
    // JSON value is meant; validators and other generators ignore the keyword.
    #[schemars(description = value_rule(), extend("tsType" = "unknown"))]
    pub value: Box<RawValue>,
    /// Seconds until the key expires; absent or `null` means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_TTL_SECONDS))]
    pub ttl_seconds: Option<u32>,
}

/// Read one key.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct GetRequest {
    /// The calling plugin's namespace.
    #[schemars(regex(pattern = PLUGIN_NAME_PATTERN))]
    pub plugin_name: String,
    /// The key, 1 to [`MAX_KEY_CHARS`] characters.
    #[schemars(description = key_rule(), length(min = 1, max = MAX_KEY_CHARS))]
    pub key: String,
}

/// Remove one key.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct DeleteRequest {
    /// The calling plugin's namespace.
    #[schemars(regex(pattern = PLUGIN_NAME_PATTERN))]
    pub plugin_name: String,
    /// The key, 1 to [`MAX_KEY_CHARS`] characters.
    #[schemars(description = key_rule(), length(min = 1, max = MAX_KEY_CHARS))]
    pub key: String,
}

/// List one plugin's live keys by literal prefix.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct ListRequest {
    /// The calling plugin's namespace.
    #[schemars(regex(pattern = PLUGIN_NAME_PATTERN))]
    pub plugin_name: String,
    /// Byte prefix matched literally and case-sensitively (`%` and `_` are ordinary); default `""`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = ""))]
    pub prefix: Option<String>,
    /// Most keys to return, 1 to [`MAX_LIST_LIMIT`]; default [`DEFAULT_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        description = limit_rule(),
        range(min = 1, max = MAX_LIST_LIMIT),
        extend("default" = DEFAULT_LIMIT)
    )]
    pub limit: Option<u32>,
}

/// [`SetRequest`] on a per-plugin subject, `rosey.db.kv.<plugin_name>.set`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct PluginSetRequest {
    /// Optional: the plugin is the subject's token; if given, it must be the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PLUGIN_NAME_PATTERN))]
    pub plugin_name: Option<String>,
    /// The key, 1 to [`MAX_KEY_CHARS`] characters.
    #[schemars(description = key_rule(), length(min = 1, max = MAX_KEY_CHARS))]
    pub key: String,
    /// Any JSON value, `null` included; at most [`MAX_VALUE_BYTES`] as compact JSON.
    #[schemars(description = value_rule(), extend("tsType" = "unknown"))]
    pub value: Box<RawValue>,
    /// Seconds until the key expires; absent or `null` means never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_TTL_SECONDS))]
    pub ttl_seconds: Option<u32>,
}

/// A get or delete on a per-plugin subject, `rosey.db.kv.<plugin_name>.get|delete`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct PluginKeyRequest {
    /// Optional: the plugin is the subject's token; if given, it must be the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PLUGIN_NAME_PATTERN))]
    pub plugin_name: Option<String>,
    /// The key, 1 to [`MAX_KEY_CHARS`] characters.
    #[schemars(description = key_rule(), length(min = 1, max = MAX_KEY_CHARS))]
    pub key: String,
}

/// [`ListRequest`] on a per-plugin subject, `rosey.db.kv.<plugin_name>.list`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
pub struct PluginListRequest {
    /// Optional: the plugin is the subject's token; if given, it must be the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = PLUGIN_NAME_PATTERN))]
    pub plugin_name: Option<String>,
    /// Byte prefix matched literally and case-sensitively (`%` and `_` are ordinary); default `""`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = ""))]
    pub prefix: Option<String>,
    /// Most keys to return, 1 to [`MAX_LIST_LIMIT`]; default [`DEFAULT_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        description = limit_rule(),
        range(min = 1, max = MAX_LIST_LIMIT),
        extend("default" = DEFAULT_LIMIT)
    )]
    pub limit: Option<u32>,
}

/// `data` of a successful set: `{}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetReply {}

/// `data` of a successful get: `{"exists": true, "value": V}` or `{"exists": false}`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetReply {
    /// Whether a live key was found.
    pub exists: bool,
    /// The stored value (present exactly when `exists` is true; may be `null`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "serde_json::Value", extend("tsType" = "unknown"))]
    pub value: Option<store::Value>,
}

/// `data` of a successful delete.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteReply {
    /// Whether a live key was removed.
    pub deleted: bool,
}

/// `data` of a successful list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListReply {
    /// Live matching keys in ascending UTF-8 byte order.
    #[schemars(with = "Vec<String>")]
    pub keys: Vec<store::ListedKey>,
    /// The length of `keys`.
    pub count: usize,
    /// More live keys match beyond `limit`.
    pub truncated: bool,
}

/// What can go wrong in get, delete and list once the request is valid: only storage.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct KvError(#[from] StoreError);

impl RpcError for KvError {
    const CATALOGUE: &'static [ErrorCode] = &[codes::INTERNAL_ERROR, codes::TIMEOUT];

    fn code(&self) -> &str {
        storage_code(&self.0)
    }

    fn message(&self) -> Cow<'_, str> {
        storage_message(&self.0)
    }
}

/// A storage failure's code: `TIMEOUT` when the request's deadline passed first (nothing was
/// done), else `INTERNAL_ERROR`.
fn storage_code(err: &StoreError) -> &'static str {
    match err {
        StoreError::DeadlinePassed(_) => codes::TIMEOUT.code,
        _ => codes::INTERNAL_ERROR.code,
    }
}

fn storage_message(err: &StoreError) -> Cow<'static, str> {
    match err {
        StoreError::DeadlinePassed(deadline) => Cow::Owned(deadline_message(deadline)),
        _ => Cow::Borrowed(INTERNAL_MESSAGE),
    }
}

fn deadline_message(deadline: &Deadline) -> String {
    deadline.error().message().into_owned()
}

/// What can go wrong in set once the request is valid.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("value nested {depth} levels deep is over the {MAX_VALUE_DEPTH}-level limit")]
    TooDeep { depth: usize },
    #[error("value of {size} bytes is over the {MAX_VALUE_BYTES}-byte limit")]
    ValueTooLarge { size: usize },
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl From<crate::value::Refused> for SetError {
    fn from(refused: crate::value::Refused) -> Self {
        match refused {
            crate::value::Refused::TooDeep { depth } => SetError::TooDeep { depth },
            crate::value::Refused::TooLarge { size } => SetError::ValueTooLarge { size },
        }
    }
}

impl RpcError for SetError {
    const CATALOGUE: &'static [ErrorCode] =
        &[VALUE_TOO_LARGE, codes::INTERNAL_ERROR, codes::TIMEOUT];

    fn code(&self) -> &str {
        match self {
            SetError::TooDeep { .. } => codes::VALIDATION_ERROR.code,
            SetError::ValueTooLarge { .. } => VALUE_TOO_LARGE.code,
            SetError::Storage(err) => storage_code(err),
        }
    }

    fn message(&self) -> Cow<'_, str> {
        match self {
            SetError::TooDeep { .. } => Cow::Owned(format!(
                "Field 'value' must be nested at most {MAX_VALUE_DEPTH} levels deep"
            )),
            SetError::ValueTooLarge { size } => Cow::Owned(format!(
                "Value size ({size} bytes) exceeds 64KB limit ({MAX_VALUE_BYTES} bytes)"
            )),
            SetError::Storage(err) => storage_message(err),
        }
    }
}

/// A per-plugin subject and its payload disagree about the plugin.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("the subject's plugin token is not a valid plugin name")]
    InvalidSubject,
    #[error("payload plugin_name differs from the subject's plugin `{plugin}`")]
    Mismatch { plugin: String },
}

/// A per-plugin endpoint's error: the scope check, then the operation's own errors.
#[derive(Debug, thiserror::Error)]
pub enum PluginError<E> {
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error(transparent)]
    Op(E),
}

impl From<KvError> for PluginError<KvError> {
    fn from(err: KvError) -> Self {
        PluginError::Op(err)
    }
}

impl From<SetError> for PluginError<SetError> {
    fn from(err: SetError) -> Self {
        PluginError::Op(err)
    }
}

impl<E: RpcError> RpcError for PluginError<E> {
    // VALIDATION_ERROR, the scope check's code, is a framework code and always listed.
    const CATALOGUE: &'static [ErrorCode] = E::CATALOGUE;

    fn code(&self) -> &str {
        match self {
            PluginError::Scope(_) => codes::VALIDATION_ERROR.code,
            PluginError::Op(err) => err.code(),
        }
    }

    fn message(&self) -> Cow<'_, str> {
        match self {
            PluginError::Scope(ScopeError::InvalidSubject) => Cow::Owned(format!(
                "The subject's plugin token must match {PLUGIN_NAME_PATTERN} \
                 (rosey.db.kv.<plugin_name>.<op>)"
            )),
            PluginError::Scope(ScopeError::Mismatch { plugin }) => Cow::Owned(format!(
                "Field 'plugin_name' must be '{plugin}', the plugin named by the subject"
            )),
            PluginError::Op(err) => err.message(),
        }
    }
}

// Every handler takes the request's context for its deadline: a write not yet committed when
// it passes is dropped (TIMEOUT, nothing done), a read is abandoned.

#[nats_rpc(subject = "rosey.db.kv.set")]
pub async fn set(
    store: &Store,
    request: SetRequest,
    context: Context<'_>,
) -> Result<SetReply, SetError> {
    let SetRequest {
        plugin_name,
        key,
        value,
        ttl_seconds,
    } = request;
    set_key(
        store,
        plugin_name,
        key,
        value,
        ttl_seconds,
        context.deadline(),
    )
    .await
}

#[nats_rpc(subject = "rosey.db.kv.get")]
pub async fn get(
    store: &Store,
    request: GetRequest,
    context: Context<'_>,
) -> Result<GetReply, KvError> {
    get_key(
        store,
        &request.plugin_name,
        &request.key,
        context.deadline(),
    )
    .await
}

#[nats_rpc(subject = "rosey.db.kv.delete")]
pub async fn delete(
    store: &Store,
    request: DeleteRequest,
    context: Context<'_>,
) -> Result<DeleteReply, KvError> {
    delete_key(
        store,
        &request.plugin_name,
        &request.key,
        context.deadline(),
    )
    .await
}

#[nats_rpc(subject = "rosey.db.kv.list")]
pub async fn list(
    store: &Store,
    request: ListRequest,
    context: Context<'_>,
) -> Result<ListReply, KvError> {
    let deadline = context.deadline();
    list_keys(
        store,
        &request.plugin_name,
        request.prefix,
        request.limit,
        deadline,
    )
    .await
}

/// Per-plugin subjects (`rosey.db.kv.<plugin_name>.<op>`, served with `--plugin-subjects`): the
/// plugin is the subject's token, which the NATS server's publish permissions vouch for, so an
/// operator can give each plugin credentials for its own subjects only. A `plugin_name` in the
/// payload is optional and, when present, must name the same plugin.
#[nats_rpc(subject = "rosey.db.kv.*.set", name = "plugin_set")]
pub async fn plugin_set(
    store: &Store,
    request: PluginSetRequest,
    context: Context<'_>,
) -> Result<SetReply, PluginError<SetError>> {
    let plugin = plugin_of(context, request.plugin_name)?;
    let deadline = context.deadline();
    Ok(set_key(
        store,
        plugin,
        request.key,
        request.value,
        request.ttl_seconds,
        deadline,
    )
    .await?)
}

/// `rosey.db.kv.<plugin_name>.get`; see [`fn@plugin_set`].
#[nats_rpc(subject = "rosey.db.kv.*.get", name = "plugin_get")]
pub async fn plugin_get(
    store: &Store,
    request: PluginKeyRequest,
    context: Context<'_>,
) -> Result<GetReply, PluginError<KvError>> {
    let plugin = plugin_of(context, request.plugin_name)?;
    Ok(get_key(store, &plugin, &request.key, context.deadline()).await?)
}

/// `rosey.db.kv.<plugin_name>.delete`; see [`fn@plugin_set`].
#[nats_rpc(subject = "rosey.db.kv.*.delete", name = "plugin_delete")]
pub async fn plugin_delete(
    store: &Store,
    request: PluginKeyRequest,
    context: Context<'_>,
) -> Result<DeleteReply, PluginError<KvError>> {
    let plugin = plugin_of(context, request.plugin_name)?;
    Ok(delete_key(store, &plugin, &request.key, context.deadline()).await?)
}

/// `rosey.db.kv.<plugin_name>.list`; see [`fn@plugin_set`].
#[nats_rpc(subject = "rosey.db.kv.*.list", name = "plugin_list")]
pub async fn plugin_list(
    store: &Store,
    request: PluginListRequest,
    context: Context<'_>,
) -> Result<ListReply, PluginError<KvError>> {
    let plugin = plugin_of(context, request.plugin_name)?;
    let deadline = context.deadline();
    Ok(list_keys(store, &plugin, request.prefix, request.limit, deadline).await?)
}

// The four operations, shared by the contract endpoints and the per-plugin ones.

/// `set`: the value admitted by its rules (`value.rs`), then written.
async fn set_key(
    store: &Store,
    plugin_name: String,
    key: String,
    value: Box<RawValue>,
    ttl_seconds: Option<u32>,
    deadline: Option<Deadline>,
) -> Result<SetReply, SetError> {
    let value = crate::value::admit(value)?;
    store
        .set_within(plugin_name, key, value, ttl_seconds, deadline)
        .await?;
    Ok(SetReply {})
}

/// `get`.
async fn get_key(
    store: &Store,
    plugin_name: &str,
    key: &str,
    deadline: Option<Deadline>,
) -> Result<GetReply, KvError> {
    let value = store.get_within(plugin_name, key, deadline).await?;
    Ok(GetReply {
        exists: value.is_some(),
        value,
    })
}

/// `delete`.
async fn delete_key(
    store: &Store,
    plugin_name: &str,
    key: &str,
    deadline: Option<Deadline>,
) -> Result<DeleteReply, KvError> {
    let deleted = store.delete_within(plugin_name, key, deadline).await?;
    Ok(DeleteReply { deleted })
}

/// `list`, with the request's defaults applied.
async fn list_keys(
    store: &Store,
    plugin_name: &str,
    prefix: Option<String>,
    limit: Option<u32>,
    deadline: Option<Deadline>,
) -> Result<ListReply, KvError> {
    let prefix = prefix.as_deref().unwrap_or("");
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    let listing = store
        .list_within(plugin_name, prefix, limit, deadline)
        .await?;
    Ok(ListReply {
        count: listing.keys.len(),
        keys: listing.keys,
        truncated: listing.truncated,
    })
}

/// The plugin a per-plugin subject names, checked against the payload's `plugin_name`, if any.
fn plugin_of(context: Context<'_>, named: Option<String>) -> Result<String, ScopeError> {
    let token = context.subject().wildcard(0).unwrap_or_default();
    if !is_plugin_name(token) {
        return Err(ScopeError::InvalidSubject);
    }
    match named {
        Some(named) if named != token => Err(ScopeError::Mismatch {
            plugin: token.to_owned(),
        }),
        _ => Ok(token.to_owned()),
    }
}

/// Every endpoint's schemas (the four contract subjects, then the per-plugin ones), for
/// `kv-service schemas` and the docs.
pub fn schemas() -> Vec<nats_rpc::EndpointSchemas> {
    endpoints(
        nats_rpc::Service::builder(crate::peers::SERVICE, "0.0.0"),
        true,
    )
    .endpoints()
    .map(|endpoint| endpoint.schemas.clone())
    .collect()
}

/// The one list of kv-service's endpoints: the contract's four, and with `plugin_subjects` the
/// per-plugin four. Serving, the subjects a peer is compared on, the published schemas and the
/// AsyncAPI document all read it.
pub(crate) fn endpoints(
    builder: nats_rpc::ServiceBuilder<Store>,
    plugin_subjects: bool,
) -> nats_rpc::ServiceBuilder<Store> {
    let builder = builder
        .endpoint::<set>()
        .endpoint::<get>()
        .endpoint::<delete>()
        .endpoint::<list>();
    if !plugin_subjects {
        return builder;
    }
    builder
        .endpoint::<plugin_set>()
        .endpoint::<plugin_get>()
        .endpoint::<plugin_delete>()
        .endpoint::<plugin_list>()
}

#[cfg(test)]
mod tests {
    use crate::store::ListedKey;

    #[test]
    fn list_replies_carry_their_keys_as_strings() {
        let keys = [
            "plain",
            "",
            "quote\"d",
            "back\\slash",
            "tab\there",
            "nul\u{0}",
            "\u{1f}\u{7f}",
            "é ü 😀",
            "%_",
        ];
        let plain = serde_json::json!({"keys": keys, "count": keys.len(), "truncated": true});
        // Keys rendered once (the mirror's) and keys as text (a database's) alike.
        let forms: [fn(&str) -> ListedKey; 2] = [ListedKey::rendered, |key| ListedKey::from(key)];
        for form in forms {
            let reply = super::ListReply {
                keys: keys.iter().map(|key| form(key)).collect(),
                count: keys.len(),
                truncated: true,
            };
            assert_eq!(
                serde_json::to_string(&reply).unwrap(),
                serde_json::to_string(&plain).unwrap()
            );
            let back: super::ListReply =
                serde_json::from_str(&serde_json::to_string(&reply).unwrap()).unwrap();
            assert_eq!(back, reply);
            assert_eq!(
                reply.keys.iter().map(ListedKey::key).collect::<Vec<_>>(),
                keys
            );
        }
        assert_ne!(ListedKey::rendered("a"), ListedKey::from("b"));
    }

    #[test]
    fn is_plugin_name_agrees_with_the_schema_pattern() {
        let schema = serde_json::json!({"type": "string", "pattern": super::PLUGIN_NAME_PATTERN});
        let pattern = jsonschema::validator_for(&schema).unwrap();
        let long = "a".repeat(super::MAX_PLUGIN_NAME_CHARS);
        let too_long = "a".repeat(super::MAX_PLUGIN_NAME_CHARS + 1);
        for name in [
            "chat",
            "a",
            "my-plugin_2",
            &long,
            &too_long,
            "",
            "Chat",
            "a.b",
            "a b",
            "é",
            "a*",
            "a\n",
        ] {
            assert_eq!(
                super::is_plugin_name(name),
                pattern.is_valid(&serde_json::json!(name)),
                "{name:?}"
            );
        }
    }

    /// The limits are written once, as constants; the texts that state them (the error
    /// catalogue's description, the plugin-author docs) are held to those constants here.
    #[test]
    fn the_texts_state_the_limits_the_code_enforces() {
        use super::{DEFAULT_LIMIT, MAX_KEY_CHARS, MAX_LIST_LIMIT, MAX_TTL_SECONDS};
        use crate::value::MAX_VALUE_BYTES;
        assert!(
            super::VALUE_TOO_LARGE
                .description
                .contains(&format!("over {MAX_VALUE_BYTES} bytes"))
        );
        let docs = include_str!("../../docs/NATS_SUBJECTS.md");
        for (field, rule) in [
            ("key", format!("1..={MAX_KEY_CHARS} characters")),
            (
                "value",
                format!("at most {MAX_VALUE_BYTES} bytes as compact JSON"),
            ),
            ("ttl_seconds", format!("1..={MAX_TTL_SECONDS};")),
            (
                "limit",
                format!("1..={MAX_LIST_LIMIT} | default {DEFAULT_LIMIT}"),
            ),
        ] {
            let row = docs
                .lines()
                .find(|line| line.starts_with(&format!("| `{field}` |")))
                .unwrap_or_else(|| panic!("docs/NATS_SUBJECTS.md has no row for `{field}`"));
            assert!(
                row.contains(&rule),
                "the `{field}` row does not say {rule:?}: {row}"
            );
        }
        // Each message with what follows its number, so a stale number that is the start of
        // the right one (25 for 255) is not taken for it.
        for message in [
            format!("`Field 'key' must be at most {MAX_KEY_CHARS} characters long`"),
            format!("`Field 'ttl_seconds' must be <= {MAX_TTL_SECONDS}`"),
            format!("`Field 'limit' must be <= {MAX_LIST_LIMIT}`"),
        ] {
            assert!(
                docs.contains(&message),
                "docs/NATS_SUBJECTS.md does not give {message}"
            );
        }
    }
}
