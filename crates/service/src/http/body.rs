//! Request bodies: the JSON extractor, the parser of increment bodies, the 400 a body of the
//! wrong shape gets, and the body's schema for the OpenAPI document.
//!
//! axum's `Json` answers 422 with a plain-text body for data errors; Tally's contract wants a
//! 400, 413 or 415 with a JSON error naming the field. So the extractor checks the content
//! type and the size itself, and the parser walks the JSON with serde visitors that classify
//! every field (missing, unknown, repeated, of the wrong type) instead of stopping at serde's
//! first message. Keys borrow from the body whenever they contain no escapes.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::Deserializer as _;
use serde::de::{self, Deserialize, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::context::ApiContext;
use super::error::ApiError;

/// A request body that declared itself JSON and fits the size limit.
pub struct JsonBody(pub Bytes);

impl FromRequest<Arc<ApiContext>> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, ctx: &Arc<ApiContext>) -> Result<Self, ApiError> {
        let limit = ctx.max_body_bytes;
        let headers = req.headers();
        let is_json = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::unsupported_media_type());
        }
        read_limited(req.into_body(), limit).await.map(JsonBody)
    }
}

/// Reads a whole body of at most `limit` bytes.
///
/// Written out rather than `axum::body::to_bytes`: a small body arrives as one frame, and
/// keeping that frame as it is saves the buffer list, its allocation and the copy that
/// collecting costs on every request; bodies in several frames are joined.
async fn read_limited(mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    // A declared Content-Length over the limit is refused before reading anything.
    if http_body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut single: Option<Bytes> = None;
    let mut joined = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::bad_request(
                "unreadable_body",
                "the request body could not be read",
                None,
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing Tally reads
        };
        let so_far = single.as_ref().map_or(joined.len(), Bytes::len);
        if so_far + data.len() > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        match single.take() {
            None if joined.is_empty() => single = Some(data),
            None => joined.extend_from_slice(&data),
            Some(first) => {
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(single.unwrap_or_else(|| joined.freeze()))
}

/// The JSON type of a value, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    String,
    Integer,
    Number,
    Boolean,
    Null,
    Array,
    Object,
}

impl fmt::Display for JsonType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JsonType::String => "a string",
            JsonType::Integer => "an integer",
            JsonType::Number => "a number with a fraction or an exponent",
            JsonType::Boolean => "a boolean",
            JsonType::Null => "null",
            JsonType::Array => "an array",
            JsonType::Object => "an object",
        })
    }
}

/// What is wrong with the shape of a body, before any domain rule is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// Not JSON at all; serde's message says where.
    Malformed(String),
    /// Valid JSON of the wrong type at the top level.
    WrongBody {
        expected: JsonType,
        found: JsonType,
    },
    Missing(&'static str),
    Unknown(String),
    Duplicate(&'static str),
    WrongType {
        field: &'static str,
        found: JsonType,
    },
    /// `value` is an integer outside the signed 64-bit range.
    ValueOutOfRange,
    /// A multi-increment body holds more items than allowed.
    TooMany {
        max: usize,
    },
    /// An item of a multi-increment body is wrong.
    Item {
        index: usize,
        error: Box<ShapeError>,
    },
}

/// What the client is told about a body of the wrong shape: a 400 naming the field.
impl From<ShapeError> for ApiError {
    fn from(e: ShapeError) -> Self {
        use ShapeError::*;
        match e {
            Malformed(why) => ApiError::bad_request(
                "malformed_json",
                format!("the body is not valid JSON: {why}"),
                None,
            ),
            WrongBody { expected, found } => ApiError::bad_request(
                "invalid_body",
                format!("the body must be {expected}, not {found}"),
                None,
            ),
            Missing(field) => {
                ApiError::bad_request("missing_field", format!("{field} is required"), Some(field))
            }
            Unknown(name) => ApiError::bad_request(
                "unknown_field",
                format!("unknown field {name:?}; an increment has only \"key\" and \"value\""),
                None,
            )
            .on(name),
            Duplicate(field) => ApiError::bad_request(
                "duplicate_field",
                format!("{field} is given more than once"),
                Some(field),
            ),
            WrongType {
                field: "key",
                found,
            } => ApiError::bad_request(
                "invalid_type",
                format!("key must be a string, not {found}"),
                Some("key"),
            ),
            WrongType { field, found } => ApiError::bad_request(
                "invalid_type",
                format!("{field} must be an integer, not {found}"),
                Some(field),
            ),
            ValueOutOfRange => ApiError::bad_request(
                "invalid_value",
                "value must be an integer in the signed 64-bit range",
                Some("value"),
            ),
            TooMany { max } => ApiError::bad_request(
                "too_many_items",
                format!("at most {max} increments per request"),
                None,
            ),
            Item { index, error } => ApiError::from(*error).at_index(index),
        }
    }
}

/// The body of `POST /increment`, one item of `POST /increments`.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: the parser below reads bodies
pub struct IncrementRequest {
    /// 1 to 256 bytes of UTF-8, no control characters (a hyphenated UUID with `--key-format uuid`).
    #[schema(min_length = 1, max_length = 256, example = "page-views")]
    key: String,
    /// A non-zero integer; at least 1 unless negatives are allowed.
    #[schema(example = 1)]
    value: i64,
}

/// An increment as the body gave it: a string key and a 64-bit integer value, not yet checked
/// against the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawIncrement<'a> {
    pub key: Cow<'a, str>,
    pub value: i64,
}

/// Parses `{"key": string, "value": integer}`.
pub fn parse_increment(body: &[u8]) -> Result<RawIncrement<'_>, ShapeError> {
    if let Some(inc) = parse_compact(body) {
        return Ok(inc);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = de.deserialize_any(IncrementVisitor).and_then(|r| {
        de.end()?;
        Ok(r)
    });
    parsed.map_err(malformed)?
}

/// The fast path for the body nearly every client sends: exactly `{"key":"<k>","value":<n>}`,
/// no whitespace, no escapes in the key, an integer that fits in 64 bits. Anything else, valid
/// or not, returns `None` and goes through serde, which has the last word and the error
/// messages; on the bodies it accepts, this agrees with serde (a test checks it).
///
/// Hand-written because it is about a tenth of serde's cost on the request path, and that path
/// is most of what a buffered increment costs in user space.
fn parse_compact(body: &[u8]) -> Option<RawIncrement<'_>> {
    let rest = body.strip_prefix(b"{\"key\":\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let (key, rest) = rest.split_at(end);
    // A backslash starts an escape and a raw control character is invalid JSON: serde decides.
    if key.iter().any(|&b| b == b'\\' || b < 0x20) {
        return None;
    }
    let key = std::str::from_utf8(key).ok()?;
    let digits = rest.strip_prefix(b"\",\"value\":")?.strip_suffix(b"}")?;
    let (negative, digits) = match digits.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, digits),
    };
    // JSON integers have no leading zeros; "0" alone is one.
    let well_formed = !digits.is_empty()
        && digits.len() <= 19
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || digits.len() == 1);
    if !well_formed {
        return None;
    }
    // 19 digits fit in u64; past i64's range, serde reports the error.
    let magnitude = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let value = if negative {
        // serde_json reads "-0" as a float.
        if magnitude == 0 {
            return None;
        }
        0i64.checked_sub_unsigned(magnitude)?
    } else {
        i64::try_from(magnitude).ok()?
    };
    Some(RawIncrement {
        key: Cow::Borrowed(key),
        value,
    })
}

/// Parses a JSON array of at most `max` increments.
pub fn parse_increments(body: &[u8], max: usize) -> Result<Vec<RawIncrement<'_>>, ShapeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = de.deserialize_any(ArrayVisitor { max }).and_then(|r| {
        de.end()?;
        Ok(r)
    });
    parsed.map_err(malformed)?
}

fn malformed(e: serde_json::Error) -> ShapeError {
    ShapeError::Malformed(e.to_string())
}

/// Any JSON value, reduced to what an increment field can use.
enum Scalar<'de> {
    Str(Cow<'de, str>),
    Int(i64),
    /// An integer beyond `i64::MAX` (serde_json reads it as `u64`).
    BigInt,
    Other(JsonType),
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Scalar::BigInt, Scalar::Int))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Other(JsonType::Number))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other(JsonType::Boolean))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other(JsonType::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(Scalar::Other(JsonType::Array))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map)?;
        Ok(Scalar::Other(JsonType::Object))
    }
}

/// A field name, borrowed when it has no escapes.
struct Name<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Scalar::deserialize(d)? {
            Scalar::Str(s) => Ok(Name(s)),
            // JSON object keys are always strings.
            _ => Err(de::Error::custom("object key is not a string")),
        }
    }
}

/// Reads one increment object. Shape problems are collected (the first one wins) while the
/// rest of the object is still consumed, so that a syntax error later in the body is
/// reported as such.
struct IncrementVisitor;

impl<'de> Visitor<'de> for IncrementVisitor {
    type Value = Result<RawIncrement<'de>, ShapeError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an increment object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut key: Option<Cow<'de, str>> = None;
        let mut value: Option<i64> = None;
        let mut problem: Option<ShapeError> = None;
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            if problem.is_some() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            problem = match &*name {
                "key" => match map.next_value::<Scalar<'de>>()? {
                    _ if key.is_some() => Some(ShapeError::Duplicate("key")),
                    Scalar::Str(s) => {
                        key = Some(s);
                        None
                    }
                    other => Some(ShapeError::WrongType {
                        field: "key",
                        found: kind(&other),
                    }),
                },
                "value" => match map.next_value::<Scalar<'de>>()? {
                    _ if value.is_some() => Some(ShapeError::Duplicate("value")),
                    Scalar::Int(v) => {
                        value = Some(v);
                        None
                    }
                    Scalar::BigInt => Some(ShapeError::ValueOutOfRange),
                    other => Some(ShapeError::WrongType {
                        field: "value",
                        found: kind(&other),
                    }),
                },
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    Some(ShapeError::Unknown(name.into_owned()))
                }
            };
        }
        Ok(match (problem, key, value) {
            (Some(p), _, _) => Err(p),
            (None, None, _) => Err(ShapeError::Missing("key")),
            (None, _, None) => Err(ShapeError::Missing("value")),
            (None, Some(key), Some(value)) => Ok(RawIncrement { key, value }),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(Err(wrong_body(JsonType::Object, JsonType::Array)))
    }

    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Object, JsonType::String)))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Object, JsonType::String)))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Object, JsonType::Integer)))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Object, JsonType::Integer)))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Object, JsonType::Number)))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Object, JsonType::Boolean)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Object, JsonType::Null)))
    }
}

fn kind(s: &Scalar<'_>) -> JsonType {
    match s {
        Scalar::Str(_) => JsonType::String,
        Scalar::Int(_) | Scalar::BigInt => JsonType::Integer,
        Scalar::Other(t) => *t,
    }
}

fn wrong_body(expected: JsonType, found: JsonType) -> ShapeError {
    ShapeError::WrongBody { expected, found }
}

/// An array element: an increment, or why it is not one.
struct Item<'de>(Result<RawIncrement<'de>, ShapeError>);

impl<'de> Deserialize<'de> for Item<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IncrementVisitor).map(Item)
    }
}

struct ArrayVisitor {
    max: usize,
}

impl<'de> Visitor<'de> for ArrayVisitor {
    type Value = Result<Vec<RawIncrement<'de>>, ShapeError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of increments")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(16).min(self.max));
        let mut problem = None;
        let mut index = 0;
        loop {
            if problem.is_some() {
                if seq.next_element::<IgnoredAny>()?.is_none() {
                    break;
                }
                continue;
            }
            match seq.next_element::<Item<'de>>()? {
                None => break,
                Some(_) if index == self.max => {
                    problem = Some(ShapeError::TooMany { max: self.max });
                }
                Some(Item(Ok(inc))) => items.push(inc),
                Some(Item(Err(error))) => {
                    problem = Some(ShapeError::Item {
                        index,
                        error: Box::new(error),
                    });
                }
            }
            index += 1;
        }
        Ok(problem.map_or(Ok(items), Err))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map)?;
        Ok(Err(wrong_body(JsonType::Array, JsonType::Object)))
    }
    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Array, JsonType::String)))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Array, JsonType::String)))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Array, JsonType::Integer)))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Array, JsonType::Integer)))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Array, JsonType::Number)))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Array, JsonType::Boolean)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err(wrong_body(JsonType::Array, JsonType::Null)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(body: &str) -> Result<RawIncrement<'_>, ShapeError> {
        parse_increment(body.as_bytes())
    }

    #[test]
    fn a_plain_body_borrows_its_key() {
        let inc = one(r#"{"key": "page-views", "value": 3}"#).unwrap();
        assert_eq!(inc.value, 3);
        assert!(matches!(inc.key, Cow::Borrowed("page-views")));
        let escaped = one(r#"{"value": 1, "key": "a\"b"}"#).unwrap();
        assert_eq!(escaped.key, "a\"b");
    }

    #[test]
    fn shape_errors_name_the_field() {
        use ShapeError::*;
        assert_eq!(one(r#"{"value": 1}"#), Err(Missing("key")));
        assert_eq!(one(r#"{"key": "k"}"#), Err(Missing("value")));
        assert_eq!(
            one(r#"{"key": "k", "value": 1, "extra": 2}"#),
            Err(Unknown("extra".into()))
        );
        assert_eq!(
            one(r#"{"key": "k", "key": "j", "value": 1}"#),
            Err(Duplicate("key"))
        );
        assert_eq!(
            one(r#"{"key": "k", "value": 1, "value": 1}"#),
            Err(Duplicate("value"))
        );
        assert_eq!(
            one(r#"{"key": 5, "value": 1}"#),
            Err(WrongType {
                field: "key",
                found: JsonType::Integer
            })
        );
        for (v, found) in [
            ("\"5\"", JsonType::String),
            ("1.5", JsonType::Number),
            ("1e3", JsonType::Number),
            ("null", JsonType::Null),
            ("true", JsonType::Boolean),
            ("[1]", JsonType::Array),
            ("{}", JsonType::Object),
        ] {
            let body = format!(r#"{{"key": "k", "value": {v}}}"#);
            assert_eq!(
                one(&body),
                Err(WrongType {
                    field: "value",
                    found
                }),
                "{body}"
            );
        }
        assert_eq!(
            one(r#"{"key": "k", "value": 9223372036854775808}"#),
            Err(ValueOutOfRange)
        );
        assert_eq!(
            one(r#"{"key": "k", "value": -9223372036854775808}"#)
                .unwrap()
                .value,
            i64::MIN
        );
        assert_eq!(
            one("[]"),
            Err(WrongBody {
                expected: JsonType::Object,
                found: JsonType::Array
            })
        );
    }

    /// Serde's answer alone, without the fast path.
    fn by_serde(body: &[u8]) -> Result<RawIncrement<'_>, ShapeError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        de.deserialize_any(IncrementVisitor)
            .and_then(|r| {
                de.end()?;
                Ok(r)
            })
            .map_err(malformed)?
    }

    #[test]
    fn the_compact_fast_path_agrees_with_serde() {
        let keys = [
            "k",
            "page-views",
            "ünï",
            "a b",
            "a\\\"b",
            "a\\nb",
            "a\tb",
            "",
            "x\u{7f}",
        ];
        let values = [
            "1",
            "0",
            "-0",
            "-1",
            "42",
            "01",
            "-01",
            "1.0",
            "1e3",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
            "",
            "-",
            "+1",
            "1 ",
            "\"1\"",
            "null",
        ];
        let mut compact = 0;
        for key in keys {
            for value in values {
                for body in [
                    format!(r#"{{"key":"{key}","value":{value}}}"#),
                    format!(r#"{{"key":"{key}","value":{value}}} "#),
                    format!(r#"{{ "key":"{key}","value":{value}}}"#),
                    format!(r#"{{"value":{value},"key":"{key}"}}"#),
                ] {
                    let fast = parse_compact(body.as_bytes());
                    let slow = by_serde(body.as_bytes());
                    if let Some(fast) = fast {
                        compact += 1;
                        assert_eq!(Ok(fast), slow, "{body}");
                    }
                    assert_eq!(parse_increment(body.as_bytes()), slow, "{body}");
                }
            }
        }
        assert!(
            compact > 20,
            "the fast path takes the common bodies ({compact})"
        );
        let raw = b"{\"key\":\"\xff\",\"value\":1}";
        assert_eq!(parse_compact(raw), None, "invalid UTF-8 goes to serde");
        assert!(matches!(
            parse_increment(raw),
            Err(ShapeError::Malformed(_))
        ));
    }

    #[test]
    fn syntax_errors_beat_shape_errors() {
        for body in [
            "",
            "{",
            r#"{"key": "k", "value": 1"#,
            r#"{"extra": 1, }"#,
            "{} {}",
            "nul",
        ] {
            assert!(
                matches!(one(body), Err(ShapeError::Malformed(_))),
                "{body:?}"
            );
        }
        assert!(matches!(
            parse_increment(b"{\"key\": \"\xff\", \"value\": 1}"),
            Err(ShapeError::Malformed(_))
        ));
    }

    #[test]
    fn arrays_report_the_index_of_the_first_bad_item() {
        let ok = parse_increments(
            br#"[{"key": "a", "value": 1}, {"key": "b", "value": 2}]"#,
            10,
        );
        assert_eq!(ok.unwrap().len(), 2);
        let bad = parse_increments(br#"[{"key": "a", "value": 1}, {"key": "b"}, 7]"#, 10);
        assert_eq!(
            bad,
            Err(ShapeError::Item {
                index: 1,
                error: Box::new(ShapeError::Missing("value"))
            })
        );
        let many = parse_increments(
            br#"[{"key": "a", "value": 1}, {"key": "b", "value": 1}]"#,
            1,
        );
        assert_eq!(many, Err(ShapeError::TooMany { max: 1 }));
        assert_eq!(parse_increments(b"[]", 1), Ok(vec![]));
        assert!(matches!(
            parse_increments(b"{}", 1),
            Err(ShapeError::WrongBody { .. })
        ));
    }
}
