//! Breaking changes between two versions of a published JSON Schema, direction-aware: a
//! request schema breaks clients when something valid before is rejected now; a reply schema
//! breaks them when a reply valid now would be rejected by a client generated from the old one
//! (a new error code in a closed enum, a new member where `additionalProperties` is false, a
//! field removed or retyped). Both are one question, "is something valid under `from`
//! rejected by `to`?": `(old, new)` for requests, `(new, old)` for replies.
//!
//! The check covers the keywords published schemas use (`type`, `const`, `enum`,
//! `properties`, `required`, `additionalProperties`, string, number and array bounds,
//! `pattern`, `format`, `items`, `anyOf`/`oneOf`), compares everything else for equality, and
//! reports any keyword it does not understand that changed, so that nothing passes unseen.
//! (`json-schema-diff` ignores `oneOf` and compares `additionalProperties` only when both sides
//! set it, which misses the most common breaking change of a request.)

use serde_json::{Map, Value};

/// Which way a schema is used, and so which changes break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Clients send it: tightening breaks them.
    Request,
    /// Clients parse it: loosening breaks them.
    Reply,
}

/// One breaking change: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// A JSON pointer into the schema, e.g. `/properties/key/maxLength`.
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            if self.path.is_empty() {
                "/"
            } else {
                &self.path
            },
            self.reason
        )
    }
}

/// The breaking changes from `old` to `new` for a schema used in `direction`.
pub fn breaking_changes(old: &Value, new: &Value, direction: Direction) -> Vec<Break> {
    let mut found = Vec::new();
    let (from, to) = match direction {
        Direction::Request => (old, new),
        Direction::Reply => (new, old),
    };
    let mut check = Check {
        found: &mut found,
        direction,
    };
    check.schema(from, to, "");
    found
}

/// Keywords that never change what validates.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "tsType",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Keywords the check understands (the rest must stay equal).
const UNDERSTOOD: &[&str] = &[
    "type",
    "const",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "pattern",
    "format",
    "items",
    "anyOf",
    "oneOf",
];

struct Check<'a> {
    found: &'a mut Vec<Break>,
    direction: Direction,
}

impl Check<'_> {
    fn report(&mut self, path: &str, reason: String) {
        let reason = match self.direction {
            Direction::Request => format!("{reason}: requests valid before are rejected now"),
            Direction::Reply => {
                format!(
                    "{reason}: replies sent now are rejected by clients built on the old schema"
                )
            }
        };
        self.found.push(Break {
            path: path.to_owned(),
            reason,
        });
    }

    /// Reports what `from` accepts and `to` rejects.
    fn schema(&mut self, from: &Value, to: &Value, path: &str) {
        let (from, to) = match (from, to) {
            (_, Value::Bool(true)) => return,
            (Value::Bool(true), Value::Object(to)) if is_open(to) => return,
            (Value::Bool(true), _) => {
                return self.report(
                    path,
                    "a schema that accepted anything is now constrained".into(),
                );
            }
            (Value::Object(from), Value::Object(to)) => (from, to),
            (from, to) if from == to => return,
            _ => return self.report(path, "the schema was replaced".into()),
        };
        self.types(from, to, path);
        self.values(from, to, path);
        self.objects(from, to, path);
        self.bounds(from, to, path);
        for keyword in ["pattern", "format"] {
            if to.get(keyword).is_some() && from.get(keyword) != to.get(keyword) {
                let was = from.get(keyword).map_or("none".into(), Value::to_string);
                self.report(
                    &format!("{path}/{keyword}"),
                    format!("`{keyword}` is {} (was {was})", to[keyword]),
                );
            }
        }
        if let (Some(from_items), Some(to_items)) = (from.get("items"), to.get("items")) {
            self.schema(from_items, to_items, &format!("{path}/items"));
        } else if let Some(items) = to.get("items") {
            self.schema(&Value::Bool(true), items, &format!("{path}/items"));
        }
        for keyword in ["anyOf", "oneOf"] {
            self.alternatives(from, to, keyword, path);
        }
        for (keyword, value) in to {
            let known =
                ANNOTATIONS.contains(&keyword.as_str()) || UNDERSTOOD.contains(&keyword.as_str());
            if !known && from.get(keyword) != Some(value) {
                self.report(
                    &format!("{path}/{keyword}"),
                    format!("`{keyword}` changed, and this check cannot tell whether that is safe"),
                );
            }
        }
    }

    fn types(&mut self, from: &Map<String, Value>, to: &Map<String, Value>, path: &str) {
        let Some(to_types) = to.get("type").map(type_set) else {
            return;
        };
        let from_types = from.get("type").map(type_set).unwrap_or_else(|| {
            ["null", "boolean", "object", "array", "number", "string"]
                .map(String::from)
                .to_vec()
        });
        let accepted = |ty: &String| {
            to_types.contains(ty) || (ty == "integer" && to_types.iter().any(|t| t == "number"))
        };
        let lost: Vec<&String> = from_types.iter().filter(|ty| !accepted(ty)).collect();
        if !lost.is_empty() {
            let lost: Vec<&str> = lost.iter().map(|ty| ty.as_str()).collect();
            self.report(
                &format!("{path}/type"),
                format!("no longer accepts {}", lost.join(", ")),
            );
        }
    }

    fn values(&mut self, from: &Map<String, Value>, to: &Map<String, Value>, path: &str) {
        let allowed = |schema: &Map<String, Value>| -> Option<Vec<Value>> {
            match (schema.get("const"), schema.get("enum")) {
                (Some(value), _) => Some(vec![value.clone()]),
                (None, Some(Value::Array(values))) => Some(values.clone()),
                _ => None,
            }
        };
        match (allowed(from), allowed(to)) {
            (_, None) => {}
            (None, Some(_)) => {
                self.report(path, "values are now restricted (`const`/`enum`)".into())
            }
            (Some(from_values), Some(to_values)) => {
                let lost: Vec<String> = from_values
                    .iter()
                    .filter(|value| !to_values.contains(value))
                    .map(Value::to_string)
                    .collect();
                if !lost.is_empty() {
                    let keyword = if to.contains_key("const") {
                        "const"
                    } else {
                        "enum"
                    };
                    self.report(
                        &format!("{path}/{keyword}"),
                        format!("no longer allows {}", lost.join(", ")),
                    );
                }
            }
        }
    }

    fn objects(&mut self, from: &Map<String, Value>, to: &Map<String, Value>, path: &str) {
        let empty = Map::new();
        let from_properties = from
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let to_properties = to
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let to_additional = to.get("additionalProperties");
        let from_additional = from.get("additionalProperties");
        for (name, from_property) in from_properties {
            let at = format!("{path}/properties/{}", escape(name));
            match to_properties.get(name) {
                Some(to_property) => self.schema(from_property, to_property, &at),
                None => match to_additional {
                    Some(Value::Bool(false)) => {
                        self.report(&at, format!("member `{name}` is no longer allowed"))
                    }
                    Some(extra @ Value::Object(_)) => self.schema(from_property, extra, &at),
                    _ if self.direction == Direction::Request => {
                        self.report(
                            &at,
                            format!("member `{name}` is gone (the service ignores it now)"),
                        );
                    }
                    _ => {}
                },
            }
        }
        // Members `from` allows beyond its named properties.
        if !matches!(from_additional, Some(Value::Bool(false))) {
            match to_additional {
                Some(Value::Bool(false)) => self.report(
                    &format!("{path}/additionalProperties"),
                    "other members are no longer allowed".into(),
                ),
                Some(to_extra @ Value::Object(_)) => {
                    let from_extra = from_additional.cloned().unwrap_or(Value::Bool(true));
                    self.schema(
                        &from_extra,
                        to_extra,
                        &format!("{path}/additionalProperties"),
                    );
                }
                _ => {}
            }
            // A member `to` names and `from` did not is a new optional one: clients send only
            // the documented members, so it constrains nothing they sent before.
        }
        let required = |schema: &Map<String, Value>| -> Vec<String> {
            schema
                .get("required")
                .and_then(Value::as_array)
                .map(|names| {
                    names
                        .iter()
                        .filter_map(|n| n.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let from_required = required(from);
        for name in required(to) {
            if !from_required.contains(&name) {
                let reason = match self.direction {
                    Direction::Request => format!("member `{name}` is now required"),
                    Direction::Reply => format!("member `{name}` may now be missing"),
                };
                self.report(&format!("{path}/required"), reason);
            }
        }
    }

    fn bounds(&mut self, from: &Map<String, Value>, to: &Map<String, Value>, path: &str) {
        // (keyword, true when a larger value accepts less)
        for (keyword, lower) in [
            ("minLength", true),
            ("maxLength", false),
            ("minimum", true),
            ("maximum", false),
            ("exclusiveMinimum", true),
            ("exclusiveMaximum", false),
            ("minItems", true),
            ("maxItems", false),
        ] {
            let Some(to_bound) = to.get(keyword).and_then(Value::as_f64) else {
                continue;
            };
            let tighter = match from.get(keyword).and_then(Value::as_f64) {
                None => true,
                Some(from_bound) if lower => to_bound > from_bound,
                Some(from_bound) => to_bound < from_bound,
            };
            if tighter {
                let was = from.get(keyword).map_or("none".into(), Value::to_string);
                self.report(
                    &format!("{path}/{keyword}"),
                    format!("`{keyword}` is {} (was {was})", to[keyword]),
                );
            }
        }
    }

    /// Every alternative of `from` must still be one of `to`'s (or `to` has none).
    fn alternatives(
        &mut self,
        from: &Map<String, Value>,
        to: &Map<String, Value>,
        keyword: &str,
        path: &str,
    ) {
        let Some(Value::Array(to_alternatives)) = to.get(keyword) else {
            return;
        };
        let from_alternatives = match from.get(keyword) {
            Some(Value::Array(alternatives)) => alternatives.clone(),
            _ => {
                return self.report(
                    &format!("{path}/{keyword}"),
                    format!("`{keyword}` now restricts the schema"),
                );
            }
        };
        for (index, alternative) in from_alternatives.iter().enumerate() {
            if !to_alternatives.contains(alternative) {
                self.report(
                    &format!("{path}/{keyword}/{index}"),
                    format!("alternative {alternative} is gone or changed"),
                );
            }
        }
    }
}

fn is_open(schema: &Map<String, Value>) -> bool {
    schema.keys().all(|key| ANNOTATIONS.contains(&key.as_str()))
}

fn type_set(value: &Value) -> Vec<String> {
    match value {
        Value::String(ty) => vec![ty.clone()],
        Value::Array(types) => types
            .iter()
            .filter_map(|t| t.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

/// JSON pointer escaping of one token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Direction, breaking_changes};

    fn breaks(old: serde_json::Value, new: serde_json::Value, direction: Direction) -> Vec<String> {
        breaking_changes(&old, &new, direction)
            .into_iter()
            .map(|change| change.to_string())
            .collect()
    }

    fn request(properties: serde_json::Value, required: &[&str]) -> serde_json::Value {
        json!({"type": "object", "properties": properties, "required": required})
    }

    #[test]
    fn identical_and_annotation_only_changes_are_safe_both_ways() {
        let schema = request(
            json!({"key": {"type": "string", "maxLength": 255}}),
            &["key"],
        );
        let mut described = schema.clone();
        described["properties"]["key"]["description"] = json!("now with words");
        described["title"] = json!("t");
        for direction in [Direction::Request, Direction::Reply] {
            assert!(breaks(schema.clone(), schema.clone(), direction).is_empty());
            assert!(breaks(schema.clone(), described.clone(), direction).is_empty());
        }
    }

    #[test]
    fn tightening_a_request_breaks_and_loosening_does_not() {
        let old = request(
            json!({"key": {"type": "string", "minLength": 1, "maxLength": 255}, "n": {"type": ["integer", "null"], "minimum": 1}}),
            &["key"],
        );
        let cases = [
            (
                json!({"key": {"type": "string", "minLength": 1, "maxLength": 100}, "n": {"type": ["integer", "null"], "minimum": 1}}),
                "/properties/key/maxLength",
            ),
            (
                json!({"key": {"type": "string", "minLength": 1, "maxLength": 255}, "n": {"type": "integer", "minimum": 1}}),
                "/properties/n/type: no longer accepts null",
            ),
            (
                json!({"key": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^a"}, "n": {"type": ["integer", "null"], "minimum": 1}}),
                "/properties/key/pattern",
            ),
            (
                json!({"key": {"type": "string", "minLength": 1, "maxLength": 255}, "n": {"type": ["integer", "null"], "minimum": 2}}),
                "/properties/n/minimum",
            ),
        ];
        for (properties, expected) in cases {
            let found = breaks(
                old.clone(),
                request(properties, &["key"]),
                Direction::Request,
            );
            assert!(
                found.len() == 1 && found[0].starts_with(expected),
                "{expected}: {found:?}"
            );
        }
        // A new required member, and closing the object.
        let mut required = old.clone();
        required["required"] = json!(["key", "n"]);
        assert!(
            breaks(old.clone(), required, Direction::Request)[0]
                .contains("member `n` is now required")
        );
        let mut closed = old.clone();
        closed["additionalProperties"] = json!(false);
        assert!(
            breaks(old.clone(), closed, Direction::Request)[0]
                .contains("other members are no longer allowed")
        );
        // Loosening is fine for requests.
        let looser = request(
            json!({"key": {"type": "string", "minLength": 1, "maxLength": 1000}, "n": {"type": ["integer", "null"]}, "new": {"type": "string"}}),
            &[],
        );
        assert!(breaks(old, looser, Direction::Request).is_empty());
    }

    #[test]
    fn loosening_a_reply_breaks_and_tightening_does_not() {
        let old = json!({
            "type": "object",
            "properties": {
                "success": {"const": false},
                "error": {"type": "object", "properties": {"code": {"enum": ["A", "B"]}, "message": {"type": "string"}},
                          "required": ["code", "message"], "additionalProperties": false}
            },
            "required": ["success", "error"],
            "additionalProperties": false
        });
        let mut new_code = old.clone();
        new_code["properties"]["error"]["properties"]["code"]["enum"] =
            json!(["A", "B", "TIMEOUT"]);
        let found = breaks(old.clone(), new_code.clone(), Direction::Reply);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("no longer allows \"TIMEOUT\"")
                && found[0].contains("clients built on the old schema"),
            "{found:?}"
        );
        // The same change on a request is a loosening.
        assert!(breaks(old.clone(), new_code, Direction::Request).is_empty());
        // A new member where additionalProperties is false.
        let mut member = old.clone();
        member["properties"]["error"]["properties"]["retry_after"] = json!({"type": "integer"});
        assert!(
            breaks(old.clone(), member, Direction::Reply)[0]
                .contains("member `retry_after` is no longer allowed")
        );
        // A member that may now be missing, and one retyped.
        let mut optional = old.clone();
        optional["properties"]["error"]["required"] = json!(["code"]);
        assert!(
            breaks(old.clone(), optional, Direction::Reply)[0]
                .contains("member `message` may now be missing")
        );
        let mut retyped = old.clone();
        retyped["properties"]["error"]["properties"]["message"] =
            json!({"type": ["string", "null"]});
        assert!(
            breaks(old.clone(), retyped, Direction::Reply)[0].contains("no longer accepts null")
        );
        // Fewer codes is safe for replies.
        let mut fewer = old.clone();
        fewer["properties"]["error"]["properties"]["code"]["enum"] = json!(["A"]);
        assert!(breaks(old, fewer, Direction::Reply).is_empty());
    }

    #[test]
    fn alternatives_and_unknown_keywords_are_not_waved_through() {
        let old = json!({"oneOf": [{"type": "string"}, {"type": "integer"}]});
        let narrower = json!({"oneOf": [{"type": "string"}]});
        assert!(breaks(old.clone(), narrower, Direction::Request)[0].contains("alternative"));
        let exotic = json!({"oneOf": [{"type": "string"}, {"type": "integer"}], "multipleOf": 2});
        assert!(breaks(old, exotic, Direction::Request)[0].contains("`multipleOf` changed"));
    }
}
