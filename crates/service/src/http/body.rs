//! Request bodies: the JSON extractor, the parsers of increment and item bodies, the 400 a body of the
//! wrong shape gets, and the body's schema for the OpenAPI document.
//!
//! axum's `Json` answers 422 with a plain-text body for data errors; Tally's contract wants a
//! 400, 413 or 415 with a JSON error naming the field. So the extractor checks the content
//! type and the size itself, and the parser walks the JSON with serde visitors that classify
//! every field (missing, unknown, repeated, of the wrong type) instead of stopping at serde's
//! first message. Keys borrow from the body whenever they contain no escapes.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::Poll;

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
        if !req
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| is_json(v.as_bytes()))
        {
            return Err(ApiError::unsupported_media_type());
        }
        let mut read = std::pin::pin!(read_limited(req.into_body(), limit));
        // Most bodies have arrived whole by the first poll: they need no timer.
        if let Poll::Ready(body) =
            std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await
        {
            return body.map(JsonBody);
        }
        // A deadline for the whole body, not one per frame: a client sending a byte a second
        // must not hold the request open (tower-http's body timeout resets at every frame).
        tokio::time::timeout(ctx.read_timeout, read)
            .await
            .map_err(|_| ApiError::request_timeout(ctx.read_timeout))?
            .map(JsonBody)
    }
}

/// Whether a Content-Type value names JSON: `application/json`, in any case, with or without
/// parameters (`; charset=utf-8`). On bytes, since a header value need not be UTF-8.
fn is_json(value: &[u8]) -> bool {
    let essence = value.split(|&b| b == b';').next().unwrap_or_default();
    essence
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/json")
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
    /// A field the object does not have; `only` says which it has.
    Unknown {
        name: String,
        only: &'static str,
    },
    Duplicate(&'static str),
    WrongType {
        field: &'static str,
        expected: JsonType,
        found: JsonType,
    },
    /// `value` is an integer outside the signed 64-bit range.
    ValueOutOfRange,
    /// An array body holds more elements than allowed (`what`: "increments", "items").
    TooMany {
        max: usize,
        what: &'static str,
    },
    /// An element of an array body is wrong.
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
            Unknown { name, only } => ApiError::bad_request(
                "unknown_field",
                format!("unknown field {name:?}; {only}"),
                None,
            )
            .on(name),
            Duplicate(field) => ApiError::bad_request(
                "duplicate_field",
                format!("{field} is given more than once"),
                Some(field),
            ),
            WrongType {
                field,
                expected,
                found,
            } => ApiError::bad_request(
                "invalid_type",
                format!("{field} must be {expected}, not {found}"),
                Some(field),
            ),
            ValueOutOfRange => ApiError::bad_request(
                "invalid_value",
                "value must be an integer in the signed 64-bit range",
                Some("value"),
            ),
            TooMany { max, what } => ApiError::bad_request(
                "too_many_items",
                format!("at most {max} {what} per request"),
                None,
            ),
            Item { index, error } => ApiError::from(*error).at_index(index),
        }
    }
}

/// A key, or an item's id or tenant: 1 to 256 bytes of UTF-8 without control characters. The
/// schema counts characters: a name within 256 characters but over 256 bytes is refused (400).
#[derive(utoipa::ToSchema)]
#[schema(
    min_length = 1,
    max_length = 256,
    pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$",
    example = "page-views"
)]
#[allow(dead_code)] // documentation only
pub struct Key(String);

/// The body of `POST /increment`, one item of `POST /increments`. No other field is allowed,
/// nor the same field twice.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation only: the parser below reads bodies
pub struct IncrementRequest {
    /// The key to count under.
    #[schema(value_type = Key)]
    key: String,
    /// An integer in the signed 64-bit range, at least 1 (with `--allow-negative`, any but 0).
    #[schema(minimum = 1, example = 1)]
    value: i64,
}

/// One item of `POST /items`. No other field is allowed, nor the same field twice.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // documentation only: the parser below reads bodies
pub struct ItemRequest {
    /// The item; counted once per tenant. The rules of a key apply.
    #[schema(value_type = Key, example = "user-4711")]
    id: String,
    /// Whose distinct items these are. The rules of a key apply.
    #[schema(value_type = Key, example = "acme")]
    tenant: String,
}

/// The `Idempotency-Key` request header of the counting routes.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documentation only: `super::idempotency::MaybeKey` reads the header
pub struct IdempotencyKeyHeader {
    /// 1 to 255 printable ASCII characters (a space neither first nor last: HTTP drops it):
    /// a retry with the same key and body counts once and gets the first answer, on any node,
    /// for `--idempotency-ttl`. The same key with another body (or route) is 422.
    #[param(
        rename = "Idempotency-Key",
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~](?:[ -~]*[!-~])?$",
        example = "order-4711"
    )]
    key: Option<String>,
}

/// An item as the body gave it, not yet checked against the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawItem<'a> {
    pub id: Cow<'a, str>,
    pub tenant: Cow<'a, str>,
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
    parse_increment_by_serde(body)
}

/// [`parse_increment`] without its compact fast path: serde's answer alone, which must be
/// the same on every body. Public so that the fuzz target (`fuzz/`) can check that it is.
pub fn parse_increment_by_serde(body: &[u8]) -> Result<RawIncrement<'_>, ShapeError> {
    parse_whole(body, ObjectVisitor::<IncrementFields>(PhantomData))
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
    let shape = PhantomData::<IncrementFields>;
    parse_whole(body, ArrayVisitor { max, shape })
}

/// Parses a JSON array of at most `max` items.
pub fn parse_items(body: &[u8], max: usize) -> Result<Vec<RawItem<'_>>, ShapeError> {
    let shape = PhantomData::<ItemFields>;
    parse_whole(body, ArrayVisitor { max, shape })
}

/// Runs `visitor` over the whole body: trailing data after the value is malformed JSON, and so
/// is a body that is not UTF-8.
fn parse_whole<'de, T, V>(body: &'de [u8], visitor: V) -> Result<T, ShapeError>
where
    V: Visitor<'de, Value = Result<T, ShapeError>>,
{
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = de.deserialize_any(visitor).and_then(|r| {
        de.end()?;
        Ok(r)
    });
    match parsed.map_err(malformed)? {
        // serde_json checks the UTF-8 of the strings it reads but not of those it skips: the
        // rest of a body past its first problem, and the inside of a value of the wrong type.
        // An accepted body had every string read, so only a refused one needs the check.
        Err(problem) => match std::str::from_utf8(body) {
            Ok(_) => Err(problem),
            Err(e) => Err(not_utf8(body, e.valid_up_to())),
        },
        accepted => accepted,
    }
}

fn malformed(e: serde_json::Error) -> ShapeError {
    ShapeError::Malformed(e.to_string())
}

/// A body whose bytes from `at` are not UTF-8, in serde_json's words for the strings it reads,
/// placed at the first byte that is not.
fn not_utf8(body: &[u8], at: usize) -> ShapeError {
    let before = &body[..at];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = 1 + before[..line_start].iter().filter(|&&b| b == b'\n').count();
    let column = at - line_start + 1;
    ShapeError::Malformed(format!(
        "invalid unicode code point at line {line} column {column}"
    ))
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

/// A kind of JSON object the API takes, read field by field. Each kind says which fields it
/// has and what they hold; [`ObjectVisitor`] and [`ArrayVisitor`] do the rest (unknown,
/// repeated and missing fields, bodies of the wrong type) the same way for every kind.
trait Shape<'de>: Default {
    type Out;
    /// What one object is, for messages: "an increment object".
    const EXPECTING: &'static str;
    /// What an array of them holds, for messages: "increments".
    const PLURAL: &'static str;
    /// The message after an unknown field's name.
    const ONLY: &'static str;
    /// Takes the value of the field `name`; `None` when the shape has no such field.
    fn field(&mut self, name: &str, value: Scalar<'de>) -> Option<Result<(), ShapeError>>;
    /// The object once every field is read, or the first missing field.
    fn finish(self) -> Result<Self::Out, ShapeError>;
}

/// Takes a string field into `slot`.
fn string_field<'de>(
    field: &'static str,
    slot: &mut Option<Cow<'de, str>>,
    value: Scalar<'de>,
) -> Result<(), ShapeError> {
    match value {
        _ if slot.is_some() => Err(ShapeError::Duplicate(field)),
        Scalar::Str(s) => {
            *slot = Some(s);
            Ok(())
        }
        other => Err(ShapeError::WrongType {
            field,
            expected: JsonType::String,
            found: kind(&other),
        }),
    }
}

/// `{"key": string, "value": integer}`.
#[derive(Default)]
struct IncrementFields<'de> {
    key: Option<Cow<'de, str>>,
    value: Option<i64>,
}

impl<'de> Shape<'de> for IncrementFields<'de> {
    type Out = RawIncrement<'de>;
    const EXPECTING: &'static str = "an increment object";
    const PLURAL: &'static str = "increments";
    const ONLY: &'static str = "an increment has only \"key\" and \"value\"";

    fn field(&mut self, name: &str, value: Scalar<'de>) -> Option<Result<(), ShapeError>> {
        Some(match name {
            "key" => string_field("key", &mut self.key, value),
            "value" => match value {
                _ if self.value.is_some() => Err(ShapeError::Duplicate("value")),
                Scalar::Int(v) => {
                    self.value = Some(v);
                    Ok(())
                }
                Scalar::BigInt => Err(ShapeError::ValueOutOfRange),
                other => Err(ShapeError::WrongType {
                    field: "value",
                    expected: JsonType::Integer,
                    found: kind(&other),
                }),
            },
            _ => return None,
        })
    }

    fn finish(self) -> Result<RawIncrement<'de>, ShapeError> {
        match (self.key, self.value) {
            (None, _) => Err(ShapeError::Missing("key")),
            (_, None) => Err(ShapeError::Missing("value")),
            (Some(key), Some(value)) => Ok(RawIncrement { key, value }),
        }
    }
}

/// `{"id": string, "tenant": string}`.
#[derive(Default)]
struct ItemFields<'de> {
    id: Option<Cow<'de, str>>,
    tenant: Option<Cow<'de, str>>,
}

impl<'de> Shape<'de> for ItemFields<'de> {
    type Out = RawItem<'de>;
    const EXPECTING: &'static str = "an item object";
    const PLURAL: &'static str = "items";
    const ONLY: &'static str = "an item has only \"id\" and \"tenant\"";

    fn field(&mut self, name: &str, value: Scalar<'de>) -> Option<Result<(), ShapeError>> {
        Some(match name {
            "id" => string_field("id", &mut self.id, value),
            "tenant" => string_field("tenant", &mut self.tenant, value),
            _ => return None,
        })
    }

    fn finish(self) -> Result<RawItem<'de>, ShapeError> {
        match (self.id, self.tenant) {
            (None, _) => Err(ShapeError::Missing("id")),
            (_, None) => Err(ShapeError::Missing("tenant")),
            (Some(id), Some(tenant)) => Ok(RawItem { id, tenant }),
        }
    }
}

/// Reads one object of shape `S`. Shape problems are collected (the first one wins) while the
/// rest of the object is still consumed, so that a syntax error later in the body is reported
/// as such.
struct ObjectVisitor<S>(PhantomData<S>);

impl<'de, S: Shape<'de>> Visitor<'de> for ObjectVisitor<S> {
    type Value = Result<S::Out, ShapeError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(S::EXPECTING)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = S::default();
        let mut problem: Option<ShapeError> = None;
        while let Some(Name(name)) = map.next_key::<Name<'de>>()? {
            if problem.is_some() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let value = map.next_value::<Scalar<'de>>()?;
            problem = match fields.field(&name, value) {
                Some(taken) => taken.err(),
                None => Some(ShapeError::Unknown {
                    name: name.into_owned(),
                    only: S::ONLY,
                }),
            };
        }
        Ok(match problem {
            Some(p) => Err(p),
            None => fields.finish(),
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

/// An array element: an object of shape `S`, or why it is not one.
struct Element<'de, S: Shape<'de>>(Result<S::Out, ShapeError>);

impl<'de, S: Shape<'de>> Deserialize<'de> for Element<'de, S> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjectVisitor::<S>(PhantomData))
            .map(Element)
    }
}

struct ArrayVisitor<S> {
    max: usize,
    shape: PhantomData<S>,
}

impl<'de, S: Shape<'de>> Visitor<'de> for ArrayVisitor<S> {
    type Value = Result<Vec<S::Out>, ShapeError>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {}", S::PLURAL)
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
            match seq.next_element::<Element<'de, S>>()? {
                None => break,
                Some(_) if index == self.max => {
                    problem = Some(ShapeError::TooMany {
                        max: self.max,
                        what: S::PLURAL,
                    });
                }
                Some(Element(Ok(item))) => items.push(item),
                Some(Element(Err(error))) => {
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

    #[test]
    fn json_is_recognised_by_its_essence_in_any_case() {
        for yes in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;x=y",
        ] {
            assert!(is_json(yes.as_bytes()), "{yes}");
        }
        for no in [
            "",
            "text/plain",
            "application/jsonx",
            "application/json-seq",
            "json",
        ] {
            assert!(!is_json(no.as_bytes()), "{no}");
        }
        assert!(!is_json(b"application/\xffjson"));
    }

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
            Err(Unknown {
                name: "extra".into(),
                only: "an increment has only \"key\" and \"value\""
            })
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
                expected: JsonType::String,
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
                    expected: JsonType::Integer,
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
                    let slow = parse_increment_by_serde(body.as_bytes());
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

    /// Found by the fuzz targets (fuzz/): serde_json does not check the UTF-8 of the strings it
    /// skips, and past a body's first problem the rest is skipped, so a body that is not UTF-8
    /// was refused for that problem (`unknown_field`, `missing_field`, ...) instead of as
    /// malformed. The first bodies are the ones the fuzzer minimised.
    #[test]
    fn invalid_utf8_is_malformed_whatever_came_before() {
        use ShapeError::Malformed;
        let found = parse_increment(b"{\"y\":\"a\",\"ey\":\"\xe1\",\"v\":1}");
        assert!(matches!(found, Err(Malformed(_))), "{found:?}");
        let found = parse_increments(b"[{},{\"\xff\":-1}]", 10);
        assert!(matches!(found, Err(Malformed(_))), "{found:?}");
        let found = parse_items(b"[{\"\":\"\",\"\":\"\xff\xff\xff\"}]", 10);
        assert!(matches!(found, Err(Malformed(_))), "{found:?}");
        // Inside a value of the wrong type, which is skipped too.
        let wrong_type = parse_increment(b"{\"key\":\"k\",\"value\":[\"\xff\"]}");
        assert!(matches!(wrong_type, Err(Malformed(_))), "{wrong_type:?}");
        // Past the batch limit.
        let past = parse_increments(b"[{\"key\":\"a\",\"value\":1},{},{\"\xff\":1}]", 1);
        assert!(matches!(past, Err(Malformed(_))), "{past:?}");
        let past = parse_items(b"[{\"id\":\"i\",\"tenant\":\"t\"},{},{\"id\":\"\xff\"}]", 1);
        assert!(matches!(past, Err(Malformed(_))), "{past:?}");
        // The message places the first byte that is not UTF-8.
        assert_eq!(
            parse_increment(b"{\"x\": 1,\n \"k\": \"\xff\"}"),
            Err(Malformed(
                "invalid unicode code point at line 2 column 8".into()
            ))
        );
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
        assert_eq!(
            many,
            Err(ShapeError::TooMany {
                max: 1,
                what: "increments"
            })
        );
        assert_eq!(parse_increments(b"[]", 1), Ok(vec![]));
        assert!(matches!(
            parse_increments(b"{}", 1),
            Err(ShapeError::WrongBody { .. })
        ));
    }

    #[test]
    fn items_are_read_like_increments() {
        use ShapeError::*;
        let items = parse_items(
            br#"[{"id": "i", "tenant": "t"}, {"tenant": "u", "id": "j"}]"#,
            2,
        );
        let pairs: Vec<(&str, &str)> = items
            .as_ref()
            .unwrap()
            .iter()
            .map(|i| (&*i.id, &*i.tenant))
            .collect();
        assert_eq!(pairs, [("i", "t"), ("j", "u")]);
        let item_error = |body: &str| match parse_items(body.as_bytes(), 10) {
            Err(Item { index: 0, error }) => *error,
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(item_error(r#"[{"id": "i"}]"#), Missing("tenant"));
        assert_eq!(item_error(r#"[{"tenant": "t"}]"#), Missing("id"));
        assert_eq!(
            item_error(r#"[{"id": "i", "tenant": 1}]"#),
            WrongType {
                field: "tenant",
                expected: JsonType::String,
                found: JsonType::Integer
            }
        );
        assert_eq!(
            item_error(r#"[{"id": "i", "id": "j", "tenant": "t"}]"#),
            Duplicate("id")
        );
        assert_eq!(
            item_error(r#"[{"id": "i", "tenant": "t", "key": "k"}]"#),
            Unknown {
                name: "key".into(),
                only: "an item has only \"id\" and \"tenant\""
            }
        );
        assert_eq!(
            parse_items(
                br#"[{"id": "i", "tenant": "t"}, {"id": "j", "tenant": "t"}]"#,
                1
            ),
            Err(TooMany {
                max: 1,
                what: "items"
            })
        );
        assert!(matches!(parse_items(b"{}", 1), Err(WrongBody { .. })));
        assert!(matches!(parse_items(b"[] x", 1), Err(Malformed(_))));
    }
}
