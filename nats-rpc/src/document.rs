//! The request body as the validator reads it: a JSON tree that borrows its strings from the
//! payload and keeps objects as member lists, in place of `serde_json::Value`.
//!
//! Why not `Value`: with schemars' `preserve_order` (on, so published schemas keep declaration
//! order) every `Value` object is an `IndexMap` that hashes each member name with SipHash, and
//! every string is copied out of the payload. For a request of a few members that is most of
//! the cost of validating it (about twice the typed parse). jsonschema validates any representation implementing its `json` traits, so
//! the validator reads this one instead, with the same compiled schema.
//!
//! A `Value` object keeps one member per name (the last one given); a member list keeps them
//! all. [`Document::parse`] reports a repeated name, and the caller validates such a (rare)
//! body as a `Value` instead, so validation never depends on which representation read it.
//!
//! A request field typed `RawValue` (like kv-service's `value`) needs its member's text as
//! sent. The document of an object body finds it without reading anything again: a member name
//! needing no unescaping is borrowed from the body, so where it ends and where the next one
//! begins bound the member's value, and only the few bytes of `:`, `,` and whitespace around
//! it are left to step over ([`Input::body`]).

use std::borrow::Cow;
use std::fmt;

use jsonschema::JsonType;
use jsonschema::json::{Array, Json, Node, NodeIdentity, Object};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// One JSON value of a request body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Document<'a> {
    Null,
    Bool(bool),
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<Document<'a>>),
    Object(Vec<(Cow<'a, str>, Document<'a>)>),
}

/// What [`Document::parse`] found.
pub(crate) enum Parsed<'a> {
    Document(Document<'a>),
    /// Some object names a member twice.
    RepeatedName,
}

impl<'a> Document<'a> {
    /// Parses `text` as serde_json parses a `Value` (the same errors, numbers read the same way,
    /// a non-finite float as `null`), borrowing every string that needs no unescaping.
    pub(crate) fn parse(text: &'a str) -> Result<Parsed<'a>, serde_json::Error> {
        let mut repeated = false;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let document = Seed {
            repeated: &mut repeated,
        }
        .deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(if repeated {
            Parsed::RepeatedName
        } else {
            Parsed::Document(document)
        })
    }

    /// The same value as a `serde_json::Value` (for error reports: a cold path).
    fn to_value(&self) -> Value {
        match self {
            Document::Null => Value::Null,
            Document::Bool(boolean) => Value::Bool(*boolean),
            Document::Number(number) => Value::Number(number.clone()),
            Document::String(string) => Value::String(string.as_ref().to_owned()),
            Document::Array(items) => Value::Array(items.iter().map(Document::to_value).collect()),
            Document::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(name, value)| (name.as_ref().to_owned(), value.to_value()))
                    .collect(),
            ),
        }
    }
}

/// Builds a [`Document`], noting a repeated member name.
struct Seed<'r> {
    repeated: &'r mut bool,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Document<'de>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Document<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Document<'de>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("any JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Document<'de>, E> {
        Ok(Document::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Document<'de>, E> {
        Ok(Document::Number(value.into()))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Document<'de>, E> {
        Ok(Document::Number(value.into()))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Document<'de>, E> {
        // As `Value` reads it.
        Ok(Number::from_f64(value).map_or(Document::Null, Document::Number))
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Document<'de>, E> {
        Ok(Document::String(Cow::Borrowed(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Document<'de>, E> {
        Ok(Document::String(Cow::Owned(value.to_owned())))
    }

    fn visit_string<E>(self, value: String) -> Result<Document<'de>, E> {
        Ok(Document::String(Cow::Owned(value)))
    }

    fn visit_unit<E>(self) -> Result<Document<'de>, E> {
        Ok(Document::Null)
    }

    fn visit_none<E>(self) -> Result<Document<'de>, E> {
        Ok(Document::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Document<'de>, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Document<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(Seed {
            repeated: &mut *self.repeated,
        })? {
            items.push(item);
        }
        Ok(Document::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document<'de>, A::Error> {
        let mut members: Vec<(Cow<'de, str>, Document<'de>)> = Vec::new();
        while let Some(name) = map.next_key_seed(Name)? {
            let value = map.next_value_seed(Seed {
                repeated: &mut *self.repeated,
            })?;
            members.push((name, value));
        }
        if !*self.repeated && names_repeat(&members) {
            *self.repeated = true;
        }
        Ok(Document::Object(members))
    }
}

/// A member name, borrowed when it needs no unescaping.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(value))
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(value.to_owned()))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(value))
    }
}

/// Whether two members share a name: pairwise for the few members of a request, sorted for a
/// long list (never quadratic in what a client sends).
fn names_repeat(members: &[(Cow<'_, str>, Document<'_>)]) -> bool {
    const PAIRWISE: usize = 16;
    if members.len() <= PAIRWISE {
        return members
            .iter()
            .enumerate()
            .any(|(index, (name, _))| members[..index].iter().any(|(other, _)| other == name));
    }
    let mut names: Vec<&str> = members.iter().map(|(name, _)| name.as_ref()).collect();
    names.sort_unstable();
    names.windows(2).any(|pair| pair[0] == pair[1])
}

/// A document as a serde `Deserializer`: a validated body becomes the request type without a
/// second parse. A `RawValue` member of the body is given its text; a `RawValue` deeper in and
/// enums (left to serde_json, which knows their shapes) are refused with [`Unsupported`], and a
/// member's text that cannot be found (its name or the next has escapes) with an error of its
/// own; on any error the caller reads the text instead, so every request type and every error
/// message is exactly what serde_json makes of the text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Input<'de> {
    document: &'de Document<'de>,
    place: Place<'de>,
}

/// Where a document stands in the body, as far as finding its text goes.
#[derive(Debug, Clone, Copy)]
enum Place<'de> {
    /// The body, parsed from this text.
    Body(&'de str),
    /// The value of `members[index]`, a member of the body (see [`member_text`]); its text is
    /// found only if a `RawValue` asks for it.
    Member {
        body: &'de str,
        members: &'de [(Cow<'de, str>, Document<'de>)],
        index: usize,
    },
    /// Deeper in.
    Within,
}

impl<'de> Input<'de> {
    /// A request body and the text it was parsed from.
    pub(crate) fn body(document: &'de Document<'de>, text: &'de str) -> Input<'de> {
        Input {
            document,
            place: Place::Body(text),
        }
    }

    /// A value whose text is not known.
    fn of(document: &'de Document<'de>) -> Input<'de> {
        Input {
            document,
            place: Place::Within,
        }
    }
}

impl<'de> Deserializer<'de> for Input<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.document {
            Document::Null => visitor.visit_unit(),
            Document::Bool(boolean) => visitor.visit_bool(*boolean),
            Document::Number(number) => {
                if let Some(unsigned) = number.as_u64() {
                    visitor.visit_u64(unsigned)
                } else if let Some(signed) = number.as_i64() {
                    visitor.visit_i64(signed)
                } else {
                    visitor.visit_f64(number.as_f64().unwrap_or(f64::NAN))
                }
            }
            Document::String(Cow::Borrowed(string)) => visitor.visit_borrowed_str(string),
            Document::String(Cow::Owned(string)) => visitor.visit_str(string),
            Document::Array(items) => visitor.visit_seq(Items(items.iter())),
            Document::Object(members) => visitor.visit_map(Fields {
                members,
                next: 0,
                body: match self.place {
                    Place::Body(text) => Some(text),
                    Place::Member { .. } | Place::Within => None,
                },
                value: None,
            }),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.document {
            Document::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        if name == RAW_VALUE {
            let text = match self.place {
                Place::Member {
                    body,
                    members,
                    index,
                } => member_text(body, members, index)
                    // Not found this time (a name with escapes): this body is read from its
                    // text, the next one need not be.
                    .ok_or_else(|| de::Error::custom("a member's text not found"))?,
                Place::Body(_) | Place::Within => return Err(de::Error::custom(Unsupported)),
            };
            // As serde_json hands a `RawValue` to its `Deserialize` impl: a map of one member,
            // named `RAW_VALUE`, whose value is the text.
            let raw = de::value::BorrowedStrDeserializer::<serde_json::Error>::new;
            return visitor.visit_map(de::value::MapDeserializer::new(std::iter::once((
                raw(RAW_VALUE),
                raw(text),
            ))));
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom(Unsupported))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier
    }
}

/// Where a name starts in `body`, if it is borrowed from it (one with escapes is not).
#[allow(clippy::ptr_arg)] // Whether the name is borrowed is the point.
fn offset_in(body: &str, name: &Cow<'_, str>) -> Option<usize> {
    let Cow::Borrowed(name) = name else {
        return None;
    };
    let offset = (name.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    (offset + name.len() <= body.len()).then_some(offset)
}

/// The text of the value of `members[index]`, a member of the object `body` is the text of: from
/// the end of its name to the start of the next name (or the body's closing brace), less the
/// `:`, the `,` and whitespace. `None` when a name involved is not borrowed from `body`.
/// (`trim_ascii` also drops form feeds, which valid JSON, as `body` is, never has between
/// tokens.)
fn member_text<'de>(
    body: &'de str,
    members: &[(Cow<'de, str>, Document<'de>)],
    index: usize,
) -> Option<&'de str> {
    let (name, _) = members.get(index)?;
    // Past the name's closing quote.
    let start = offset_in(body, name)? + name.len() + 1;
    let next = members.get(index + 1);
    let end = match next {
        // Before the next name's opening quote.
        Some((next, _)) => offset_in(body, next)?.checked_sub(1)?,
        // Before the body's closing brace (only whitespace follows it).
        None => body.trim_ascii_end().len().checked_sub(1)?,
    };
    let value = body.get(start..end)?.trim_ascii().strip_prefix(':')?;
    let value = match next {
        Some(_) => value.trim_ascii_end().strip_suffix(',')?,
        None => value,
    };
    Some(value.trim_ascii())
}

/// serde_json's name for a `RawValue` (semver-exempt, but a constant of its wire protocol with
/// every `Deserializer`: checked by a test, and a change only sends such types to the text).
const RAW_VALUE: &str = "$serde_json::private::RawValue";

/// Why a document cannot become a request type of some shape (a `RawValue` below the body's
/// members, an enum): the caller reads the text instead, for this request and every later one.
#[derive(Debug)]
pub(crate) struct Unsupported;

impl Unsupported {
    const MESSAGE: &str = "left to serde_json";

    /// Whether `err`, from deserializing a document, is this: the type's shape, not the body's
    /// content, is what the document cannot give. (A cold path: the message is compared.)
    pub(crate) fn caused(err: &serde_json::Error) -> bool {
        err.to_string() == Self::MESSAGE
    }
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::MESSAGE)
    }
}

struct Items<'de>(std::slice::Iter<'de, Document<'de>>);

impl<'de> SeqAccess<'de> for Items<'de> {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .next()
            .map(|item| seed.deserialize(Input::of(item)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Fields<'de> {
    members: &'de [(Cow<'de, str>, Document<'de>)],
    next: usize,
    /// The text of the object, when it is the body (see [`member_text`]).
    body: Option<&'de str>,
    value: Option<Input<'de>>,
}

impl<'de> MapAccess<'de> for Fields<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let index = self.next;
        let Some((name, value)) = self.members.get(index) else {
            return Ok(None);
        };
        self.next += 1;
        self.value = Some(Input {
            document: value,
            place: match self.body {
                Some(body) => Place::Member {
                    body,
                    members: self.members,
                    index,
                },
                None => Place::Within,
            },
        });
        let name = match name {
            Cow::Borrowed(name) => seed.deserialize(de::value::BorrowedStrDeserializer::new(name)),
            Cow::Owned(name) => seed.deserialize(de::value::StrDeserializer::new(name)),
        };
        name.map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let value = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a value asked for before its name"))?;
        seed.deserialize(value)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.members.len() - self.next)
    }
}

/// [`Document`] as a jsonschema instance representation.
pub(crate) struct Documents;

impl Json for Documents {
    type Node<'a> = &'a Document<'a>;
    type PreparedKey = String;
    type StringBuffer = ();
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> String {
        key.to_owned()
    }

    fn with_string_node<T>((): &mut (), string: &str, f: impl FnOnce(Self::Node<'_>) -> T) -> T {
        f(&Document::String(Cow::Borrowed(string)))
    }
}

impl<'a> Node<'a, Documents> for &'a Document<'a> {
    type Object = Members<'a>;
    type Array = &'a [Document<'a>];
    type Number = &'a Number;

    fn as_object(&self) -> Option<Members<'a>> {
        match self {
            Document::Object(members) => Some(Members(members)),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&'a [Document<'a>]> {
        match self {
            Document::Array(items) => Some(items),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self {
            Document::String(string) => Some(Cow::Borrowed(string.as_ref())),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<&'a Number> {
        match self {
            Document::Number(number) => Some(number),
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self {
            Document::Bool(boolean) => Some(*boolean),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, Document::Null)
    }

    fn json_type(&self) -> JsonType {
        match self {
            Document::Null => JsonType::Null,
            Document::Bool(_) => JsonType::Boolean,
            Document::Number(_) => JsonType::Number,
            Document::String(_) => JsonType::String,
            Document::Array(_) => JsonType::Array,
            Document::Object(_) => JsonType::Object,
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(Document::to_value(self))
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(
            std::ptr::from_ref::<Document<'a>>(*self) as usize
        ))
    }
}

/// An object's members, in the order given (no name twice: see [`Document::parse`]).
#[derive(Clone, Copy)]
pub(crate) struct Members<'a>(&'a [(Cow<'a, str>, Document<'a>)]);

impl<'a> Object<'a, Documents> for Members<'a> {
    type Node = &'a Document<'a>;
    type MemberName = &'a str;
    type MembersIter = MembersIter<'a>;

    fn len(&self) -> usize {
        self.0.len()
    }

    fn get(&self, key: &String) -> Option<&'a Document<'a>> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value)
    }

    fn members(&self) -> MembersIter<'a> {
        MembersIter(self.0.iter())
    }
}

pub(crate) struct MembersIter<'a>(std::slice::Iter<'a, (Cow<'a, str>, Document<'a>)>);

impl<'a> Iterator for MembersIter<'a> {
    type Item = (&'a str, &'a Document<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(name, value)| (name.as_ref(), value))
    }
}

impl<'a> Array<'a, Documents> for &'a [Document<'a>] {
    type Node = &'a Document<'a>;
    type ElementsIter = std::slice::Iter<'a, Document<'a>>;

    fn len(&self) -> usize {
        <[Document<'a>]>::len(self)
    }

    fn elements(&self) -> std::slice::Iter<'a, Document<'a>> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use serde::de::{self, Deserializer, Visitor};

    use super::{Document, Input, Parsed};

    fn parse(text: &str) -> Document<'_> {
        match Document::parse(text).expect("JSON") {
            Parsed::Document(document) => document,
            Parsed::RepeatedName => panic!("{text}: no name repeats"),
        }
    }

    /// Read as `Value` reads it: numbers, escapes, nesting.
    #[test]
    fn a_document_holds_what_a_value_holds() {
        for text in [
            r#"{"a":1,"b":-2,"c":1.5,"d":1e300,"e":18446744073709551615,"f":1.0,"g":1e30}"#,
            r#"{"s":"plain","t":"esc\"aped\u00e9","n":null,"x":[true,false,[],{}]}"#,
            r#"[1, "two", {"three": [3]}]"#,
            r#""just a string""#,
            "-0",
        ] {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(parse(text).to_value(), value, "{text}");
        }
    }

    /// jsonschema's own check of the accessor contract it relies on.
    #[test]
    fn documents_meet_jsonschemas_contract() {
        let text = jsonschema::json::conformance::document().to_string();
        let document = parse(&text);
        jsonschema::json::conformance::assert_conformance::<super::Documents>(&&document);
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let text = r#"{"name":"value","other":"a\nb"}"#;
        let Document::Object(members) = parse(text) else {
            panic!("an object")
        };
        assert!(matches!(members[0].0, std::borrow::Cow::Borrowed("name")));
        assert!(matches!(
            members[0].1,
            Document::String(std::borrow::Cow::Borrowed("value"))
        ));
        assert!(matches!(
            members[1].1,
            Document::String(std::borrow::Cow::Owned(_))
        ));
    }

    #[test]
    fn a_repeated_name_is_reported_at_any_depth_and_length() {
        for text in [
            r#"{"a":1,"a":2}"#,
            r#"{"v":{"x":1,"y":2,"x":3}}"#,
            r#"[{"k":1},{"k":2,"k":3}]"#,
        ] {
            assert!(
                matches!(Document::parse(text), Ok(Parsed::RepeatedName)),
                "{text}"
            );
        }
        let many = |repeat: bool| {
            let mut members: Vec<String> = (0..100).map(|i| format!("\"m{i}\":{i}")).collect();
            if repeat {
                members.push("\"m42\":0".into());
            }
            format!("{{{}}}", members.join(","))
        };
        assert!(matches!(
            Document::parse(&many(true)),
            Ok(Parsed::RepeatedName)
        ));
        assert!(matches!(
            Document::parse(&many(false)),
            Ok(Parsed::Document(_))
        ));
    }

    /// The request types a document becomes are what serde_json makes of the same text.
    #[test]
    fn a_document_deserializes_as_its_text_does() {
        use serde::Deserialize;
        use std::collections::BTreeMap;

        #[derive(Debug, PartialEq, Deserialize)]
        struct Request {
            name: String,
            count: Option<u32>,
            tags: Vec<String>,
            ratio: f64,
            nested: BTreeMap<String, i64>,
            #[serde(default)]
            missing: Option<bool>,
        }
        let text = r#"{"name":"a\"b","count":null,"tags":["x","y"],"ratio":1,
                       "nested":{"k":-3},"ignored":{"deep":[1,{"x":null}]}}"#;
        let document = parse(text);
        let ours = Request::deserialize(Input::body(&document, text)).unwrap();
        assert_eq!(ours, serde_json::from_str::<Request>(text).unwrap());
        // What it cannot give, it refuses (the caller then reads the text): a `RawValue`
        // without its text.
        #[derive(Debug, Deserialize)]
        struct Raw {
            value: Box<serde_json::value::RawValue>,
        }
        let raw = r#"{"value":[1, 2]}"#;
        let err = Raw::deserialize(Input::of(&parse(raw)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("left to serde_json"), "{err}");
        assert_eq!(
            Raw::deserialize(Input::body(&parse(raw), raw))
                .unwrap()
                .value
                .get(),
            "[1, 2]"
        );
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        enum Kind {
            A,
        }
        assert!(Kind::deserialize(Input::of(&parse(r#""A""#))).is_err());
        // The token serde_json's RawValue asks a deserializer for, as this module knows it.
        struct Token;
        impl<'de> Deserializer<'de> for Token {
            type Error = serde_json::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom("any"))
            }
            fn deserialize_newtype_struct<V: Visitor<'de>>(
                self,
                name: &'static str,
                _: V,
            ) -> Result<V::Value, Self::Error> {
                Err(de::Error::custom(name))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
                byte_buf option unit unit_struct seq tuple tuple_struct map struct enum
                identifier ignored_any
            }
        }
        let asked = <Box<serde_json::value::RawValue>>::deserialize(Token).unwrap_err();
        assert_eq!(asked.to_string(), super::RAW_VALUE);
    }

    #[test]
    fn errors_are_serde_json_s() {
        for text in [
            "",
            "{",
            r#"{"a":}"#,
            "[1,]",
            "{} x",
            "nul",
            r#"{"d":1e400}"#,
        ] {
            let ours = Document::parse(text).err().expect("an error").to_string();
            let theirs = serde_json::from_str::<serde_json::Value>(text)
                .expect_err("an error")
                .to_string();
            assert_eq!(ours, theirs, "{text:?}");
        }
    }

    /// A `RawValue` member of the body gets exactly the text serde_json gives it, whatever the
    /// whitespace, the member's place and what it holds; where its name or the next has
    /// escapes, or the `RawValue` is deeper in, it is refused and the caller reads the text.
    #[test]
    fn raw_members_get_their_text_as_serde_json_gives_it() {
        use serde::Deserialize;

        #[derive(Debug, Deserialize)]
        struct Raw<'a> {
            #[serde(borrow)]
            value: &'a serde_json::value::RawValue,
            #[serde(default)]
            #[allow(dead_code)]
            after: Option<serde_json::Value>,
        }
        let values = [
            "1",
            "-0",
            "1.0e2",
            r#""plain""#,
            r#""with \" quote, comma and } brace""#,
            r#"{"a":[1,{"b":"}"}],"c":null}"#,
            "[ 1 , 2 ]",
            "true",
            "null",
            r#"{ "k" : "v" , "l" : [ ] }"#,
        ];
        for value in values {
            for text in [
                format!(r#"{{"value":{value}}}"#),
                format!(" {{ \"value\" :\n\t{value} \r\n}} \n"),
                format!(r#"{{"before":[1,"x"],"value":{value},"after":{{"x":1}}}}"#),
                format!(r#"{{"before":1 , "value" :  {value}  ,"after":2}}"#),
                format!(r#"{{"value":{value},"after":"a,b"}}"#),
            ] {
                let document = parse(&text);
                let ours = Raw::deserialize(Input::body(&document, &text))
                    .unwrap_or_else(|err| panic!("{text}: {err}"));
                let theirs: Raw<'_> = serde_json::from_str(&text).unwrap();
                assert_eq!(ours.value.get(), theirs.value.get(), "{text}");
                assert_eq!(ours.value.get(), value, "{text}");
            }
        }
        // Only its own name and the next one bound a member's text.
        let text = r#"{"b\u0065fore":0,"value":1}"#;
        let document = parse(text);
        let ours = Raw::deserialize(Input::body(&document, text)).unwrap();
        assert_eq!(ours.value.get(), "1");
        for text in [r#"{"val\u0075e":1}"#, r#"{"value":1,"\u0061fter":2}"#] {
            let document = parse(text);
            let err = Raw::deserialize(Input::body(&document, text)).unwrap_err();
            assert_eq!(err.to_string(), "a member's text not found", "{text}");
            assert!(!super::Unsupported::caused(&err), "{text}");
            assert!(serde_json::from_str::<Raw<'_>>(text).is_ok(), "{text}");
        }
        #[derive(Debug, Deserialize)]
        struct Outer<'a> {
            #[serde(borrow)]
            #[allow(dead_code)]
            inner: Raw<'a>,
        }
        let text = r#"{"inner":{"value":[1]}}"#;
        let err = Outer::deserialize(Input::body(&parse(text), text)).unwrap_err();
        assert!(super::Unsupported::caused(&err), "{err}");
    }
}
