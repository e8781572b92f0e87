//! Request validation: the pipeline from payload bytes to the request type, with the
//! contract's error codes and messages. Each endpoint's request schema (the very one
//! [`crate::EndpointSchemas`] publishes) is compiled once, at registration (jsonschema, no
//! resolvers: every `$ref` is local); bodies are read as a [`Document`].

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

use jsonschema::json::{Json, JsonNumber, Node, Object};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::document::{Document, Documents, Input, Parsed, Unsupported};
use crate::error::{ErrorCode, codes};
use crate::schema::schema_of;

/// Longest client message derived from input, so an error reply never echoes a large payload.
const MAX_DETAIL: usize = 200;

/// Why a request was turned away before reaching the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

/// A required top-level field and which "empty" values count as missing for it: `null` and `""`
/// are missing exactly when the field's own schema rejects them (a `value` of any JSON type
/// accepts `null`, so a `null` value is a value).
#[derive(Debug)]
struct Required {
    name: String,
    null_is_missing: bool,
    empty_is_missing: bool,
}

/// A request schema compiled for validation, plus what the MISSING_FIELD rule needs.
#[derive(Debug)]
pub(crate) struct RequestValidator {
    /// The schema, compiled for `serde_json::Value` instances ([`RequestValidator::check`], and
    /// bodies that name a member twice).
    validator: jsonschema::Validator,
    /// The same schema, compiled for [`Document`]s: how request bodies are validated.
    documents: jsonschema::Validator<Documents>,
    required: Vec<Required>,
    /// Whether request bodies are read from their text rather than from the validated
    /// [`Document`] (see [`RequestValidator::decode`]); learnt from the first that must be.
    needs_text: AtomicBool,
    /// Top-level fields typed `integer`, with the type error they report: JSON Schema lets
    /// `1.0` pass as an integer, but a Rust integer does not deserialize from it, so it is
    /// refused here with the same message as any other wrong type.
    integers: Vec<(String, String)>,
}

/// The request schema could not be compiled (a bug in a `JsonSchema` impl, not bad input).
#[derive(Debug)]
pub struct SchemaError(String);

impl std::fmt::Display for SchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid request schema: {}", self.0)
    }
}

impl std::error::Error for SchemaError {}

impl RequestValidator {
    /// Compiles the schema of `T`.
    pub fn new<T: JsonSchema>() -> Result<Self, SchemaError> {
        Self::from_schema(&schema_of::<T>())
    }

    /// Compiles a request schema given as JSON.
    pub fn from_schema(schema: &Value) -> Result<Self, SchemaError> {
        let validator = compile(schema)?;
        let documents = jsonschema::options_for::<Documents>()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(schema)
            .map_err(|err| SchemaError(err.to_string()))?;
        let properties = schema.get("properties").and_then(Value::as_object);
        // schemars lists required fields in declaration order, the order the contract gives
        // MISSING_FIELD precedence in.
        let required_names: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let required = required_names
            .into_iter()
            .map(|name| {
                let field = properties
                    .and_then(|props| props.get(name))
                    .map(|field| compile(&with_defs(field, schema)))
                    .transpose()?;
                let rejects = |probe: Value| field.as_ref().is_some_and(|v| !v.is_valid(&probe));
                Ok(Required {
                    name: name.to_owned(),
                    null_is_missing: rejects(Value::Null),
                    empty_is_missing: rejects(Value::String(String::new())),
                })
            })
            .collect::<Result<_, SchemaError>>()?;
        let integers = properties
            .into_iter()
            .flatten()
            .filter(|(_, field)| is_integer_typed(field))
            .map(|(name, field)| (name.clone(), type_rule(field)))
            .collect();
        Ok(RequestValidator {
            validator,
            documents,
            needs_text: AtomicBool::new(false),
            required,
            integers,
        })
    }

    /// Runs the whole pipeline up to the handler: UTF-8 and JSON → INVALID_JSON; not an object
    /// → VALIDATION_ERROR; required field absent, null or empty → MISSING_FIELD; any schema rule
    /// → VALIDATION_ERROR; then deserializes `T`.
    ///
    /// The body is parsed once, into a document (`document.rs`) that the schema validates and
    /// `T` is deserialized from; a `RawValue` member (like kv-service's `value`) is given its
    /// text from that parse. A type the document cannot give (a `RawValue` deeper in the body,
    /// enums, left to serde_json) is read from the text instead, and once one request has shown
    /// that, every later one is. Any error is the text's, so messages never depend on the path.
    pub fn decode<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, Rejection> {
        let text = std::str::from_utf8(payload).map_err(|err| {
            Rejection::new(
                codes::INVALID_JSON,
                format!(
                    "Invalid JSON: body is not valid UTF-8 (invalid byte at offset {})",
                    err.valid_up_to()
                ),
            )
        })?;
        let invalid = |err: serde_json::Error| {
            Rejection::new(codes::INVALID_JSON, format!("Invalid JSON: {err}"))
        };
        let document_failed = match Document::parse(text).map_err(invalid)? {
            Parsed::Document(document) => {
                self.check_node(&self.documents, &document)?;
                if self.needs_text.load(Ordering::Relaxed) {
                    false
                } else {
                    match T::deserialize(Input::body(&document, text)) {
                        Ok(request) => return Ok(request),
                        Err(err) => Unsupported::caused(&err),
                    }
                }
            }
            Parsed::RepeatedName => {
                // Read as `Value` reads it (the last member of a name wins), so that validation
                // never depends on the representation.
                let value: Value = serde_json::from_str(text).map_err(invalid)?;
                self.check(&value)?;
                false
            }
        };
        let request = serde_json::from_str(text).map_err(|err| {
            Rejection::new(
                codes::VALIDATION_ERROR,
                truncate(format!("Invalid request: {err}")),
            )
        })?;
        if document_failed {
            // The text gave what the document could not, for the type's shape (not for this
            // body's content): this type needs the text.
            self.needs_text.store(true, Ordering::Relaxed);
        }
        Ok(request)
    }

    /// Validates a parsed body, reporting the first failure in contract order.
    pub fn check(&self, value: &Value) -> Result<(), Rejection> {
        self.check_node(&self.validator, value)
    }

    /// [`RequestValidator::check`] on any representation.
    fn check_node<'i, F: Json<PreparedKey = String>>(
        &'i self,
        validator: &'i jsonschema::Validator<F>,
        instance: F::Node<'i>,
    ) -> Result<(), Rejection> {
        let Some(object) = instance.as_object() else {
            return Err(Rejection::new(
                codes::VALIDATION_ERROR,
                format!(
                    "Request body must be a JSON object, got {}",
                    type_name(instance.json_type())
                ),
            ));
        };
        for field in &self.required {
            let missing = match object.get(&field.name) {
                None => true,
                Some(member) if member.is_null() => field.null_is_missing,
                Some(member) if member.as_string().is_some_and(|s| s.is_empty()) => {
                    field.empty_is_missing
                }
                Some(_) => false,
            };
            if missing {
                return Err(missing_field(&field.name));
            }
        }
        if !validator.is_valid(instance.clone()) {
            let error = validator
                .iter_errors(instance.clone())
                .next()
                .expect("an invalid instance has at least one error");
            return Err(describe(&error));
        }
        for (name, rule) in &self.integers {
            // serde_json reads an in-range integer literal as i64/u64, so an integral f64 in
            // that range was written `1.0` or `1e0`; out-of-range literals are left to the
            // schema's range rules.
            let written_as_float = object
                .get(name)
                .and_then(|member| member.as_number())
                .is_some_and(|number| {
                    number.as_u64().is_none()
                        && number.as_i64().is_none()
                        && number
                            .as_f64()
                            .is_some_and(|float| float.fract() == 0.0 && float.abs() < 9.0e18)
                });
            if written_as_float {
                return Err(Rejection::new(
                    codes::VALIDATION_ERROR,
                    format!("Field '{name}' {rule}"),
                ));
            }
        }
        Ok(())
    }
}

/// `must be of type integer or null`: non-null types first, as a reader would say it.
fn must_be_of_type(mut names: Vec<&str>) -> String {
    names.sort_by_key(|name| *name == "null");
    format!("must be of type {}", names.join(" or "))
}

/// The type rule of a field's schema, worded as [`describe`] words a type error.
fn type_rule(field: &Value) -> String {
    match field.get("type") {
        Some(Value::String(single)) => must_be_of_type(vec![single.as_str()]),
        Some(Value::Array(types)) => {
            must_be_of_type(types.iter().filter_map(Value::as_str).collect())
        }
        _ => "must be of type integer".to_owned(),
    }
}

/// `"type": "integer"` or `["integer", "null"]`, without `number`.
fn is_integer_typed(field: &Value) -> bool {
    let has = |wanted: &str| match field.get("type") {
        Some(Value::String(single)) => single == wanted,
        Some(Value::Array(types)) => types.iter().any(|t| t == wanted),
        _ => false,
    };
    has("integer") && !has("number")
}

fn compile(schema: &Value) -> Result<jsonschema::Validator, SchemaError> {
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(schema)
        .map_err(|err| SchemaError(err.to_string()))
}

/// A property's schema made standalone: the root's `$defs` copied in so local `$ref`s resolve.
fn with_defs(field: &Value, root: &Value) -> Value {
    match (field, root.get("$defs")) {
        (Value::Object(field), Some(defs)) => {
            let mut field = field.clone();
            field.insert("$defs".into(), defs.clone());
            Value::Object(field)
        }
        (field, _) => field.clone(),
    }
}

fn missing_field(name: &str) -> Rejection {
    Rejection::new(
        codes::MISSING_FIELD,
        format!("Required field '{name}' is missing"),
    )
}

/// Turns a schema violation into a message naming the field and the rule, never the value.
fn describe(error: &jsonschema::ValidationError<'_>) -> Rejection {
    use jsonschema::error::ValidationErrorKind as Kind;

    let field = field_name(&error.instance_path().to_string());
    let rule: Cow<'_, str> = match error.kind() {
        Kind::Type { kind } => must_be_of_type(type_names(kind)).into(),
        Kind::Minimum { limit } => format!("must be >= {limit}").into(),
        Kind::Maximum { limit } => format!("must be <= {limit}").into(),
        Kind::ExclusiveMinimum { limit } => format!("must be > {limit}").into(),
        Kind::ExclusiveMaximum { limit } => format!("must be < {limit}").into(),
        Kind::MinLength { limit } => format!("must be at least {limit} characters long").into(),
        Kind::MaxLength { limit } => format!("must be at most {limit} characters long").into(),
        Kind::MinItems { limit } => format!("must have at least {limit} items").into(),
        Kind::MaxItems { limit } => format!("must have at most {limit} items").into(),
        Kind::Pattern { pattern } => format!("must match the pattern {pattern}").into(),
        Kind::Enum { options } => format!("must be one of {options}").into(),
        Kind::Constant { expected_value } => format!("must equal {expected_value}").into(),
        Kind::MultipleOf { .. } => "must be a multiple of the schema's `multipleOf`".into(),
        Kind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            let path = if field.is_empty() {
                name.to_owned()
            } else {
                format!("{field}.{name}")
            };
            return missing_field(&path);
        }
        Kind::AdditionalProperties { unexpected } => {
            format!("must not have the member(s) {}", unexpected.join(", ")).into()
        }
        Kind::FalseSchema => "is not allowed".into(),
        Kind::AnyOf { context } | Kind::OneOfNotValid { context } => {
            match closest(context, error.instance_path().iter().count()) {
                Some(rejection) => return rejection,
                None => "does not match any of its allowed forms".into(),
            }
        }
        Kind::OneOfMultipleValid { .. } => "matches more than one of its allowed forms".into(),
        // Named by the rule's keyword only: the kind's own rendering carries the value.
        other => format!("does not satisfy the schema's `{}` rule", other.keyword()).into(),
    };
    violation(&field, rule)
}

/// The failure of an `anyOf`/`oneOf` (an `Option` of a struct, an enum) told as the branch the
/// body came closest to: branches refused by a `const`/`enum` (an enum's tag that names another
/// variant) are passed over while another remains; if every branch refuses the same member's
/// type, the message lists the types; else the error deepest in the body is the one told.
/// `None` when the branches give nothing to tell.
fn closest(
    branches: &[Vec<jsonschema::ValidationError<'static>>],
    depth: usize,
) -> Option<Rejection> {
    use jsonschema::error::ValidationErrorKind as Kind;

    let depth_of = |error: &jsonschema::ValidationError<'_>| error.instance_path().iter().count();

    // A tag names another variant: a `const` refused on a member of the object itself, or on
    // the value itself (a unit enum whose variants have docs is a `oneOf` of `const`s). An
    // enum-typed field deeper in with a wrong value is that field's mistake to tell.
    let is_tag = |error: &jsonschema::ValidationError<'_>| {
        matches!(error.kind(), Kind::Constant { .. })
            && (depth_of(error) == depth || depth_of(error) == depth + 1)
    };
    let tag_mismatch =
        |errors: &Vec<jsonschema::ValidationError<'static>>| errors.iter().any(&is_tag);
    let matching: Vec<&jsonschema::ValidationError<'static>> = branches
        .iter()
        .filter(|errors| !tag_mismatch(errors))
        .filter_map(|errors| errors.first())
        .collect();
    let path = |error: &jsonschema::ValidationError<'_>| error.instance_path().to_string();
    if matching.is_empty() {
        // Every branch refuses its tag: the tag is what to fix, and these are its values.
        let tags: Vec<&jsonschema::ValidationError<'static>> = branches
            .iter()
            .filter_map(|errors| errors.iter().find(|error| is_tag(error)))
            .collect();
        if let Some(first) = tags.first()
            && tags.len() == branches.len()
            && tags.iter().all(|tag| path(tag) == path(first))
        {
            let values: Vec<Value> = tags
                .iter()
                .filter_map(|tag| match tag.kind() {
                    Kind::Constant { expected_value } => Some(Value::clone(expected_value)),
                    _ => None,
                })
                .collect();
            return Some(violation(
                &field_name(&path(first)),
                format!("must be one of {}", Value::Array(values)),
            ));
        }
    }
    let candidates = if matching.is_empty() {
        branches
            .iter()
            .filter_map(|errors| errors.first())
            .collect()
    } else {
        matching
    };
    let first = candidates.first()?;
    let same_member = candidates.iter().all(|error| path(error) == path(first));
    if same_member
        && candidates
            .iter()
            .all(|error| matches!(error.kind(), Kind::Type { .. }))
    {
        let mut types: Vec<&str> = candidates
            .iter()
            .flat_map(|error| match error.kind() {
                Kind::Type { kind } => type_names(kind),
                _ => Vec::new(),
            })
            .collect();
        types.sort_unstable();
        types.dedup();
        return Some(violation(&field_name(&path(first)), must_be_of_type(types)));
    }
    // The deepest error, and of equally deep ones the first that is not about the type (an
    // `Option`'s `null` branch refuses every object for its type: not the one to tell).
    let rank = |error: &jsonschema::ValidationError<'_>| {
        (depth_of(error), !matches!(error.kind(), Kind::Type { .. }))
    };
    let best = candidates.iter().map(|error| rank(error)).max()?;
    let deepest = candidates.iter().find(|error| rank(error) == best)?;
    Some(describe(deepest))
}

/// `Field 'a.b' <rule>`, or `Request <rule>` for the body itself: VALIDATION_ERROR.
fn violation(field: &str, rule: impl std::fmt::Display) -> Rejection {
    let subject = if field.is_empty() {
        "Request".to_owned()
    } else {
        format!("Field '{field}'")
    };
    Rejection::new(codes::VALIDATION_ERROR, format!("{subject} {rule}"))
}

/// The types a `type` rule allows, as its error lists them.
fn type_names(kind: &jsonschema::error::TypeKind) -> Vec<&str> {
    use jsonschema::error::TypeKind;
    match kind {
        TypeKind::Single(single) => vec![single.as_str()],
        TypeKind::Multiple(set) => set.iter().map(|t| t.as_str()).collect(),
    }
}

/// `/a/b~1c` (a JSON pointer) → `a.b/c`.
fn field_name(pointer: &str) -> String {
    pointer
        .split('/')
        .skip(1)
        .map(|segment| segment.replace("~1", "/").replace("~0", "~"))
        .collect::<Vec<_>>()
        .join(".")
}

fn type_name(kind: jsonschema::JsonType) -> &'static str {
    use jsonschema::JsonType;
    match kind {
        JsonType::Null => "null",
        JsonType::Boolean => "boolean",
        JsonType::Number | JsonType::Integer => "number",
        JsonType::String => "string",
        JsonType::Array => "array",
        JsonType::Object => "object",
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}
#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use schemars::JsonSchema;
    use serde::Deserialize;
    use serde_json::value::RawValue;

    use super::RequestValidator;

    #[derive(Debug, PartialEq, Deserialize, JsonSchema)]
    struct Plain {
        name: String,
        count: Option<u32>,
    }

    #[derive(Debug, Deserialize, JsonSchema)]
    struct Raw {
        name: String,
        #[schemars(with = "serde_json::Value")]
        value: Box<RawValue>,
    }

    /// A type the document gives is built from it; a repeated member name, read through a
    /// `Value`, does not change that.
    #[test]
    fn plain_requests_are_built_from_the_document() {
        let validator = RequestValidator::new::<Plain>().unwrap();
        let plain: Plain = validator
            .decode(br#"{"name":"a","count":2,"x":1,"x":2}"#)
            .unwrap();
        assert_eq!(
            plain,
            Plain {
                name: "a".into(),
                count: Some(2)
            }
        );
        assert!(!validator.needs_text.load(Ordering::Relaxed));
        let plain: Plain = validator.decode(br#"{"name":"b\u00e9"}"#).unwrap();
        assert_eq!(plain.name, "bé");
        assert!(!validator.needs_text.load(Ordering::Relaxed));
    }

    /// A `RawValue` member comes from the one parse, byte for byte as sent; one deeper in comes
    /// from the text, and from then on the type is read from the text; errors are serde_json's
    /// either way.
    #[test]
    fn raw_values_come_from_the_text() {
        let validator = RequestValidator::new::<Raw>().unwrap();
        for _ in 0..2 {
            let raw: Raw = validator
                .decode(br#"{"name":"a","value":{"n":1.0e2, "s":"\u00e9"}}"#)
                .unwrap();
            assert_eq!(raw.name, "a");
            assert_eq!(raw.value.get(), r#"{"n":1.0e2, "s":"\u00e9"}"#);
            assert!(!validator.needs_text.load(Ordering::Relaxed));
        }
        #[derive(Debug, Deserialize, JsonSchema)]
        struct Outer {
            inner: Raw,
        }
        let outer = RequestValidator::new::<Outer>().unwrap();
        for _ in 0..2 {
            let read: Outer = outer
                .decode(br#"{"inner":{"name":"b","value":[1, 2]}}"#)
                .unwrap();
            assert_eq!(read.inner.value.get(), "[1, 2]");
            assert!(outer.needs_text.load(Ordering::Relaxed));
        }
        // A body whose member text cannot be found (a name with escapes) is read from its text
        // alone: the type does not need the text, the next body is read from the document.
        let raw: Raw = validator
            .decode(br#"{"name":"a","val\u0075e":[3]}"#)
            .unwrap();
        assert_eq!(raw.value.get(), "[3]");
        assert!(!validator.needs_text.load(Ordering::Relaxed));
        let duplicate = validator
            .decode::<Raw>(br#"{"name":"a","name":"b","value":1}"#)
            .unwrap_err();
        assert!(
            duplicate
                .message
                .starts_with("Invalid request: duplicate field `name`"),
            "{}",
            duplicate.message
        );
    }

    /// A body the schema lets through but the type refuses gets serde_json's error, and does
    /// not send later bodies to the text.
    #[test]
    fn a_refused_body_does_not_send_the_type_to_the_text() {
        let validator =
            RequestValidator::from_schema(&serde_json::json!({"type": "object"})).unwrap();
        let err = validator.decode::<Plain>(br#"{"name":5}"#).unwrap_err();
        assert_eq!(err.code, crate::error::codes::VALIDATION_ERROR);
        assert!(
            err.message
                .starts_with("Invalid request: invalid type: integer `5`"),
            "{}",
            err.message
        );
        assert!(!validator.needs_text.load(Ordering::Relaxed));
    }

    /// An integer past its type's width is refused by the schema, naming the field and the
    /// limit, not by serde with the value and no field.
    #[test]
    fn integers_past_their_width_name_the_field_and_the_limit() {
        #[derive(Debug, Deserialize, JsonSchema)]
        #[allow(dead_code)]
        struct Widths {
            small: Option<i32>,
            big: Option<u64>,
        }
        let validator = RequestValidator::new::<Plain>().unwrap();
        let refused = validator
            .decode::<Plain>(br#"{"name":"a","count":99999999999}"#)
            .unwrap_err();
        assert_eq!(refused.message, "Field 'count' must be <= 4294967295");
        let validator = RequestValidator::new::<Widths>().unwrap();
        for (body, message) in [
            (
                r#"{"small":-2147483649}"#,
                "Field 'small' must be >= -2147483648",
            ),
            (
                r#"{"small":2147483648}"#,
                "Field 'small' must be <= 2147483647",
            ),
            (r#"{"big":-1}"#, "Field 'big' must be >= 0"),
        ] {
            let refused = validator.decode::<Widths>(body.as_bytes()).unwrap_err();
            assert_eq!(refused.message, message, "{body}");
        }
        assert!(
            validator
                .decode::<Widths>(br#"{"small":-2147483648,"big":18446744073709551615}"#)
                .is_ok()
        );
    }

    /// The failure of an `anyOf`/`oneOf` (an `Option` of a struct, a tagged enum) is told as
    /// the field and rule of the branch the body came closest to, never with the value sent or
    /// the validator's debug text.
    #[test]
    fn alternatives_are_told_as_the_closest_branch_without_the_value() {
        #[derive(Debug, Deserialize, JsonSchema)]
        struct Inner {
            #[schemars(length(min = 1))]
            #[allow(dead_code)]
            x: String,
        }
        #[derive(Debug, Deserialize, JsonSchema)]
        struct WithOption {
            #[allow(dead_code)]
            opt: Option<Inner>,
        }
        /// Documented variants: schemars renders the enum as a `oneOf` of `const`s.
        #[derive(Debug, Deserialize, JsonSchema)]
        #[allow(dead_code)]
        enum Mode {
            /// Quick.
            Fast,
            /// Careful.
            Safe,
        }
        #[derive(Debug, Deserialize, JsonSchema)]
        #[serde(tag = "op")]
        #[allow(dead_code)]
        enum Tagged {
            Add { n: u32 },
            Neg { flag: bool },
            Set { mode: Mode },
        }
        let message = |validator: &RequestValidator, body: &str| {
            let message = validator
                .check(&serde_json::from_str(body).unwrap())
                .unwrap_err();
            assert!(!message.message.contains("secret"), "{message:?}");
            assert!(!message.message.contains("Error"), "{message:?}");
            message.message
        };
        let option = RequestValidator::new::<WithOption>().unwrap();
        assert_eq!(
            message(&option, r#"{"opt":{"x":""}}"#),
            "Field 'opt.x' must be at least 1 characters long"
        );
        assert_eq!(
            message(&option, r#"{"opt":"secret"}"#),
            "Field 'opt' must be of type object or null"
        );
        // A missing member of the struct, not the `null` branch's type.
        let refused = option.decode::<WithOption>(br#"{"opt":{}}"#).unwrap_err();
        assert_eq!(refused.message, "Required field 'opt.x' is missing");
        let tagged = RequestValidator::new::<Tagged>().unwrap();
        assert_eq!(
            message(&tagged, r#"{"op":"Add","n":"secret"}"#),
            "Field 'n' must be of type integer"
        );
        assert_eq!(
            message(&tagged, r#"{"op":"Neg","flag":"secret"}"#),
            "Field 'flag' must be of type boolean"
        );
        assert_eq!(
            message(&tagged, r#"{"op":"secret"}"#),
            r#"Field 'op' must be one of ["Add","Neg","Set"]"#
        );
        // A field of enum type with a wrong value is that field's mistake, not the tag's.
        assert_eq!(
            message(&tagged, r#"{"op":"Set","mode":"secret"}"#),
            r#"Field 'mode' must be one of ["Fast","Safe"]"#
        );
    }
}
