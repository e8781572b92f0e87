//! Schema export: the request, success-reply and error-reply JSON Schemas of an endpoint, as
//! clients read them (files, `$SRV.INFO`, the AsyncAPI document). The request schema is the one
//! [`crate::validate::RequestValidator`] validates against, rendered the same way.

use schemars::generate::SchemaSettings;
use schemars::transform::RecursiveTransform;
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use crate::endpoint::Endpoint;
use crate::error::{ErrorCode, catalogue};

/// The JSON Schema dialect every published schema declares.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The schema of `T`, rendered the same way for validation and for publishing.
pub fn schema_of<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .with_transform(RecursiveTransform(bound_integer_widths))
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Gives the integer widths schemars leaves open (`u32`, `i32`, `u64`, `i64`) their bounds,
/// where the type's own schema sets none: a request past them is then refused by the schema,
/// naming the field and the limit (`Field 'n' must be <= 4294967295`), rather than by serde
/// (`invalid value: integer …, expected u32`, which names neither). `usize`/`isize` are left
/// alone: their width is the platform's.
fn bound_integer_widths(schema: &mut Schema) {
    let (minimum, maximum): (Option<Value>, Value) =
        match schema.get("format").and_then(Value::as_str) {
            Some("uint32") => (None, u32::MAX.into()),
            Some("int32") => (Some(i32::MIN.into()), i32::MAX.into()),
            Some("uint64") => (None, u64::MAX.into()),
            Some("int64") => (Some(i64::MIN.into()), i64::MAX.into()),
            _ => return,
        };
    if schema.get("maximum").is_none() {
        schema.insert("maximum".to_owned(), maximum);
    }
    if let Some(minimum) = minimum
        && schema.get("minimum").is_none()
    {
        schema.insert("minimum".to_owned(), minimum);
    }
}

/// The three schemas a client of one endpoint needs.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSchemas {
    pub subject: &'static str,
    pub name: &'static str,
    /// The codes its error replies can carry (the framework's, then the handler's).
    pub errors: Vec<ErrorCode>,
    /// What a request must look like; the service validates against exactly this.
    pub request: Value,
    /// `{"success": true, "data": <response>}`.
    pub response: Value,
    /// `{"success": false, "error": {"code": <one of the catalogue>, "message": string}}`.
    pub error: Value,
}

impl EndpointSchemas {
    /// The file name a schema of this endpoint is published under, and its `$id`:
    /// `<subject>.<kind>.json`, with a `*` wildcard token written `any` and `>` written `rest`
    /// (file names cannot hold `*` everywhere), e.g. `rosey.db.kv.any.get.request.json`.
    pub fn file_name(subject: &str, kind: &str) -> String {
        let tokens: Vec<&str> = subject
            .split('.')
            .map(|token| match token {
                "*" => "any",
                ">" => "rest",
                token => token,
            })
            .collect();
        format!("{}.{kind}.json", tokens.join("."))
    }

    /// The schemas of endpoint `E`.
    pub fn of<E: Endpoint>() -> Self {
        let errors = catalogue::<E::Error>();
        EndpointSchemas {
            subject: E::SUBJECT,
            name: E::NAME,
            request: titled(schema_of::<E::Request>(), E::SUBJECT, "request", "request"),
            response: titled(
                success_schema::<E::Response>(),
                E::SUBJECT,
                "response",
                "success reply",
            ),
            error: titled(error_schema(&errors), E::SUBJECT, "error", "error reply"),
            errors,
        }
    }
}
/// Adds `$schema`, `$id` (the file name it is published under, see
/// [`EndpointSchemas::file_name`]) and a
/// title, first, so a reader sees what the file is before what it says.
fn titled(mut schema: Value, subject: &str, kind: &str, what: &str) -> Value {
    if let Value::Object(object) = &mut schema {
        let mut ordered = Map::new();
        ordered.insert("$schema".into(), DIALECT.into());
        ordered.insert(
            "$id".into(),
            EndpointSchemas::file_name(subject, kind).into(),
        );
        ordered.insert("title".into(), format!("{subject} {what}").into());
        for (key, value) in std::mem::take(object) {
            if key != "$schema" && key != "title" {
                ordered.insert(key, value);
            }
        }
        *object = ordered;
    }
    schema
}

fn success_schema<T: JsonSchema>() -> Value {
    let mut data = schema_of::<T>();
    let defs = match &mut data {
        Value::Object(object) => {
            object.remove("$schema");
            object.remove("$defs")
        }
        _ => None,
    };
    let mut schema = json!({
        "type": "object",
        "properties": {
            "success": { "const": true },
            "data": data,
        },
        "required": ["success", "data"],
        "additionalProperties": false,
    });
    if let Some(defs) = defs {
        schema["$defs"] = defs;
    }
    schema
}

fn error_schema(catalogue: &[ErrorCode]) -> Value {
    let codes: Vec<&str> = catalogue.iter().map(|code| code.code).collect();
    let descriptions: Vec<String> = catalogue
        .iter()
        .map(|code| format!("{} ({}): {}", code.code, code.status, code.description))
        .collect();
    json!({
        "type": "object",
        "properties": {
            "success": { "const": false },
            "error": {
                "type": "object",
                "properties": {
                    "code": {
                        "enum": codes,
                        "description": descriptions.join("\n"),
                    },
                    "message": { "type": "string" },
                },
                "required": ["code", "message"],
                "additionalProperties": false,
            },
        },
        "required": ["success", "error"],
        "additionalProperties": false,
    })
}
