//! The whole request/reply API as one AsyncAPI 3.0 document, generated from the endpoints'
//! schemas: per endpoint a request channel on its subject, an operation the service
//! `receive`s, and a `reply` naming both envelopes (success and error) in a reply channel.
//!
//! NATS facts the document has to be honest about:
//! - The reply goes to the requester's own reply subject (an inbox, set per request in the
//!   protocol's reply-to field, neither a header nor the payload), so the reply channel's
//!   address is `null` ("unknown", in AsyncAPI's words) and there is no `reply.address`.
//! - A wildcard token becomes a channel parameter: `*` one token, `>` the rest of the subject.
//! - The queue group is the NATS binding's `queue`.
//! - Error replies carry the NATS micro headers, described on the error message.
//!
//! Payloads are declared `application/schema+json;version=draft-07`: the official parser
//! checks schemas in that format (it skips 2020-12 ones without a word), and every keyword our
//! 2020-12 schemas use means the same in draft 7. The embedded copies drop `$schema` and `$id`.

use serde_json::{Map, Value, json};

use crate::micro::{ERROR_CODE_HEADER, ERROR_HEADER, RPC_CODE_HEADER};
use crate::schema::EndpointSchemas;

/// The AsyncAPI version the document follows.
pub const ASYNCAPI_VERSION: &str = "3.0.0";
/// The schema format every payload declares.
pub const SCHEMA_FORMAT: &str = "application/schema+json;version=draft-07";

/// What a document describes: one service and its endpoints.
#[derive(Debug, Clone, Copy)]
pub struct Api<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub description: &'a str,
    pub queue_group: &'a str,
    pub endpoints: &'a [EndpointSchemas],
}

/// The AsyncAPI 3.0 document of `api`.
pub fn document(api: &Api<'_>) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    for endpoint in api.endpoints {
        let name = endpoint.name;
        let reply = format!("{name}_reply");
        let (address, parameters) = address(endpoint.subject);
        let mut channel = json!({
            "address": address,
            "title": endpoint.subject,
            "description": format!(
                "Requests to `{}` (NATS request/reply: publish with a reply subject; exactly one \
                 reply comes back).",
                endpoint.subject
            ),
            "messages": { "request": { "$ref": format!("#/components/messages/{name}.request") } },
        });
        if !parameters.is_empty() {
            channel["parameters"] = Value::Object(parameters);
        }
        channels.insert(name.to_owned(), channel);
        channels.insert(
            reply.clone(),
            json!({
                "address": null,
                "title": format!("{} reply", endpoint.subject),
                "description": "The requester's reply subject: NATS sets it per request (an inbox), \
                                so its address is not known in advance.",
                "messages": {
                    "success": { "$ref": format!("#/components/messages/{name}.success") },
                    "error": { "$ref": format!("#/components/messages/{name}.error") },
                },
            }),
        );
        operations.insert(
            name.to_owned(),
            json!({
                "action": "receive",
                "title": format!("{} request", endpoint.subject),
                "summary": endpoint.request.get("description").cloned().unwrap_or(Value::Null),
                "channel": { "$ref": format!("#/channels/{name}") },
                "messages": [ { "$ref": format!("#/channels/{name}/messages/request") } ],
                "bindings": { "nats": { "queue": api.queue_group, "bindingVersion": "0.1.0" } },
                "reply": {
                    "channel": { "$ref": format!("#/channels/{reply}") },
                    "messages": [
                        { "$ref": format!("#/channels/{reply}/messages/success") },
                        { "$ref": format!("#/channels/{reply}/messages/error") },
                    ],
                },
            }),
        );
        messages.insert(
            format!("{name}.request"),
            message(endpoint, "request", &endpoint.request),
        );
        messages.insert(
            format!("{name}.success"),
            message(endpoint, "success reply", &endpoint.response),
        );
        let mut error = message(endpoint, "error reply", &endpoint.error);
        error["headers"] = error_headers(endpoint);
        messages.insert(format!("{name}.error"), error);
    }
    // `summary` must be a string when present.
    for operation in operations.values_mut() {
        if operation["summary"].is_null()
            && let Value::Object(operation) = operation
        {
            operation.remove("summary");
        }
    }
    json!({
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": api.name,
            "version": api.version,
            "description": format!(
                "{}. Every request gets exactly one reply: `{{\"success\":true,\"data\":…}}` or \
                 `{{\"success\":false,\"error\":{{\"code\":…,\"message\":…}}}}`. The service also \
                 answers NATS micro discovery (`$SRV.PING|INFO|STATS.{}`).",
                if api.description.is_empty() { api.name } else { api.description.trim_end_matches('.') },
                api.name
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "Whichever NATS server the service is connected to.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages },
    })
}

/// A subject as a channel address: each `*` becomes `{wildcardN}`, a final `>` `{rest}`.
fn address(subject: &str) -> (String, Map<String, Value>) {
    let mut parameters = Map::new();
    let mut wildcards = 0;
    let tokens: Vec<String> = subject
        .split('.')
        .map(|token| match token {
            "*" => {
                let name = format!("wildcard{wildcards}");
                wildcards += 1;
                parameters.insert(
                    name.clone(),
                    json!({ "description": "Any one subject token (NATS `*`)." }),
                );
                format!("{{{name}}}")
            }
            ">" => {
                parameters.insert(
                    "rest".into(),
                    json!({ "description": "One or more subject tokens (NATS `>`)." }),
                );
                "{rest}".into()
            }
            token => token.to_owned(),
        })
        .collect();
    (tokens.join("."), parameters)
}

fn message(endpoint: &EndpointSchemas, what: &str, schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Value::Object(object) = &mut schema {
        object.shift_remove("$schema");
        object.shift_remove("$id");
    }
    json!({
        "name": format!("{}.{}", endpoint.name, what.replace(' ', "_")),
        "title": format!("{} {what}", endpoint.subject),
        "contentType": "application/json",
        "payload": { "schemaFormat": SCHEMA_FORMAT, "schema": schema },
    })
}

/// The headers every error reply carries.
fn error_headers(endpoint: &EndpointSchemas) -> Value {
    let codes: Vec<&str> = endpoint.errors.iter().map(|code| code.code).collect();
    let statuses: Vec<String> = endpoint
        .errors
        .iter()
        .map(|code| format!("{} {}", code.status, code.code))
        .collect();
    json!({
        "schemaFormat": SCHEMA_FORMAT,
        "schema": {
            "type": "object",
            "properties": {
                ERROR_HEADER: {
                    "type": "string",
                    "description": "NATS micro (ADR-32): the error message, as in the body.",
                },
                ERROR_CODE_HEADER: {
                    "type": "string",
                    "pattern": "^[0-9]+$",
                    "description": format!(
                        "NATS micro (ADR-32): the code's status, a number: {}.",
                        statuses.join(", ")
                    ),
                },
                RPC_CODE_HEADER: {
                    "type": "string",
                    "enum": codes,
                    "description": "The error code, as in the body.",
                },
            },
            "required": [ERROR_HEADER, ERROR_CODE_HEADER, RPC_CODE_HEADER],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::address;

    #[test]
    fn wildcards_become_parameters() {
        assert_eq!(address("a.b").0, "a.b");
        let (address, parameters) = address("a.*.b.*.>");
        assert_eq!(address, "a.{wildcard0}.b.{wildcard1}.{rest}");
        let mut names: Vec<&String> = parameters.keys().collect();
        names.sort();
        assert_eq!(names, ["rest", "wildcard0", "wildcard1"]);
    }
}
