//! What the fuzz targets check on a request body.
//!
//! Each target takes the raw bytes of a request body through the chain its handler runs
//! (`crates/service/src/http/increments.rs` and `items.rs`): the parser of `tally::http::body`,
//! then `Increment::new` or `Item::new` under every combination of the validation rules, then
//! the `ApiError` a rejected body becomes and the response it answers with. A failed check
//! panics, and libFuzzer reports the body as a crash.
//!
//! The properties, on every body:
//!
//! - nothing panics, and the parse ends (libFuzzer reports a slow input as a timeout);
//! - `parse_increment`, with its compact fast path, answers exactly as serde alone does;
//! - a body that is not JSON text (RFC 8259: valid UTF-8 and the grammar) is refused as
//!   malformed, and a body serde_json reads as a value is never called malformed;
//! - a body accepted as one increment is also accepted, alone, as a batch; a body refused as
//!   one increment is refused as a batch for the same reason at index 0;
//! - a batch parsed with a smaller `max_batch` gives the answer the larger limit implies;
//! - validation keeps the rules of DESIGN.md section 3, written out here independently: keys,
//!   ids and tenants of 1 to 256 bytes without control characters, hyphenated UUIDs stored in
//!   lowercase with `--key-format uuid`, values >= 1 or, with negatives allowed, non-zero;
//!   in a batch the first invalid element is the one reported;
//! - every refusal answers 400 with `{"error": {"code", "message", "field"}}`, with the code
//!   and the field (`[3].key` in a batch) the contract gives;
//! - what was accepted, written back as JSON by serde_json, parses to the same values, and its
//!   keys without escapes are borrowed from the body.

use std::borrow::Cow;
use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tally::http::body::{self, RawIncrement, RawItem, ShapeError};
use tally::http::error::ApiError;
use tally::increment::{Field, Increment, KeyFormat, ValidationRules};
use tally::item::Item;

/// `--max-batch` as the server runs it by default.
pub const MAX_BATCH: usize = 1000;

/// Every combination of the rules: each body is validated under all four, so no input byte
/// is spent on choosing them and a crashing body is the request body itself.
pub const RULES: [ValidationRules; 4] = [
    ValidationRules {
        key_format: KeyFormat::Any,
        allow_negative: false,
    },
    ValidationRules {
        key_format: KeyFormat::Any,
        allow_negative: true,
    },
    ValidationRules {
        key_format: KeyFormat::Uuid,
        allow_negative: false,
    },
    ValidationRules {
        key_format: KeyFormat::Uuid,
        allow_negative: true,
    },
];

/// `POST /increment`: one increment object.
pub fn increment(body: &[u8]) {
    let parsed = body::parse_increment(body);
    assert_eq!(
        parsed,
        body::parse_increment_by_serde(body),
        "the compact fast path and serde disagree on {:?}",
        String::from_utf8_lossy(body)
    );
    check_malformed(body, parsed.as_ref().err());

    // The same body as the only element of a batch.
    if !matches!(parsed, Err(ShapeError::Malformed(_))) {
        let wrapped = [b"[".as_slice(), body, b"]"].concat();
        let batch = body::parse_increments(&wrapped, MAX_BATCH);
        let expected = match &parsed {
            Ok(inc) => Ok(vec![inc.clone()]),
            Err(e) => Err(ShapeError::Item {
                index: 0,
                error: Box::new(e.clone()),
            }),
        };
        assert_eq!(batch, expected, "alone in a batch");
    }

    for rules in RULES {
        // The handler's chain, as written in `http/increments.rs`.
        let answer = parsed
            .clone()
            .map_err(ApiError::from)
            .and_then(|raw| Ok(Increment::new(raw.key, raw.value, &rules)?));
        match (&parsed, answer) {
            (Err(e), Err(api)) => check_answer(api, &shape_answer(e)),
            (Err(e), Ok(inc)) => panic!("{e:?} became {inc:?}"),
            (Ok(raw), answer) => match (expect_increment(raw, &rules), answer) {
                (Ok(want), Ok(inc)) => {
                    assert_eq!((inc.key(), inc.value()), (want.0.as_str(), want.1))
                }
                (Err(field), Err(api)) => check_answer(api, &rule_answer(field, None)),
                (want, got) => panic!("{raw:?} under {rules:?}: wanted {want:?}, got {got:?}"),
            },
        }
    }

    if let Ok(inc) = &parsed {
        round_trip_increments(std::slice::from_ref(inc));
    }
}

/// `POST /increments`: an array of increment objects.
pub fn increments(body: &[u8]) {
    let parsed = body::parse_increments(body, MAX_BATCH);
    check_batch_limits(body, &parsed, body::parse_increments, "increments");
    for rules in RULES {
        // The handler's chain, as written in `http/increments.rs`.
        let answer = parsed.clone().map_err(ApiError::from).and_then(|raws| {
            raws.into_iter()
                .enumerate()
                .map(|(i, raw)| {
                    Increment::new(raw.key, raw.value, &rules)
                        .map_err(|v| ApiError::from(v).at_index(i))
                })
                .collect::<Result<Vec<_>, _>>()
        });
        check_batch_answer(
            &parsed,
            answer,
            |raw| expect_increment(raw, &rules),
            |inc| (inc.key().to_owned(), inc.value()),
        );
    }
    if let Ok(incs) = &parsed {
        round_trip_increments(incs);
    }
}

/// `POST /items`: an array of item objects.
pub fn items(body: &[u8]) {
    let parsed = body::parse_items(body, MAX_BATCH);
    check_batch_limits(body, &parsed, body::parse_items, "items");
    for rules in RULES {
        // The handler's chain, as written in `http/items.rs`.
        let answer = parsed.clone().map_err(ApiError::from).and_then(|raws| {
            raws.into_iter()
                .enumerate()
                .map(|(i, raw)| {
                    Item::new(raw.tenant, raw.id, &rules).map_err(|v| ApiError::from(v).at_index(i))
                })
                .collect::<Result<Vec<_>, _>>()
        });
        check_batch_answer(
            &parsed,
            answer,
            |raw| expect_item(raw, &rules),
            |item| (item.tenant().to_owned(), item.id().to_owned()),
        );
    }
    if let Ok(items) = &parsed {
        round_trip_items(items);
    }
}

/// Malformed exactly when the body is not JSON, as far as JSON is defined without limits.
///
/// RFC 8259 leaves the range of numbers and the handling of unpaired surrogate escapes to the
/// implementation, and serde_json refuses `1e400` and `"\ud800"` (and nesting deeper than
/// 128) when it reads them as values. Where the parser only skips over such a value (after an
/// earlier problem, or inside a value of the wrong type), it may let it pass: the body is
/// refused either way. So the check is one way for each: text that is not JSON must be
/// malformed, and text serde_json reads as a `Value` must not be.
fn check_malformed(body: &[u8], error: Option<&ShapeError>) {
    let malformed = matches!(error, Some(ShapeError::Malformed(_)));
    let json_text = std::str::from_utf8(body).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
    if !json_text {
        assert!(
            malformed,
            "not JSON text, but answered {error:?}: {:?}",
            String::from_utf8_lossy(body)
        );
    } else if serde_json::from_slice::<Value>(body).is_ok() {
        assert!(!malformed, "JSON, but answered {error:?}");
    }
    if let Some(ShapeError::Malformed(why)) = error {
        assert!(!why.is_empty());
    }
}

/// What a batch parser answers within its limit, and with a smaller limit.
fn check_batch_limits<'a, T: Clone + PartialEq + Debug>(
    body: &'a [u8],
    parsed: &Result<Vec<T>, ShapeError>,
    parse: fn(&'a [u8], usize) -> Result<Vec<T>, ShapeError>,
    what: &'static str,
) {
    check_malformed(body, parsed.as_ref().err());
    if let Ok(v) = parsed {
        assert!(v.len() <= MAX_BATCH);
    }
    if let Err(ShapeError::Item { index, .. }) = parsed {
        assert!(*index < MAX_BATCH);
    }
    // A limit of 0 to 3, chosen by the body. Within it the answer is the same; past it the
    // batch is too large, unless an element before the limit is wrong.
    let max = body.len() % 4;
    let too_many = Err(ShapeError::TooMany { max, what });
    let expected = match parsed {
        Ok(v) if v.len() <= max => Ok(v.clone()),
        Ok(_) | Err(ShapeError::TooMany { .. }) => too_many,
        Err(ShapeError::Item { index, .. }) if *index >= max => too_many,
        Err(e) => Err(e.clone()),
    };
    let smaller = parse(body, max);
    match (&smaller, &expected) {
        (Err(ShapeError::Malformed(_)), Err(ShapeError::Malformed(_))) => {}
        _ => assert_eq!(smaller, expected, "with at most {max} {what}"),
    }
}

/// A batch's answer under one set of rules: the first element the rules refuse is the one
/// reported, or every element is taken as the rules say.
fn check_batch_answer<R: Debug, T: Debug, W: PartialEq + Debug>(
    parsed: &Result<Vec<R>, ShapeError>,
    answer: Result<Vec<T>, ApiError>,
    expect: impl Fn(&R) -> Result<W, Field>,
    taken: impl Fn(&T) -> W,
) {
    let (raws, answer) = match (parsed, answer) {
        (Err(e), Err(api)) => return check_answer(api, &shape_answer(e)),
        (Err(e), Ok(got)) => panic!("{e:?} became {got:?}"),
        (Ok(raws), answer) => (raws, answer),
    };
    let first_refused = raws
        .iter()
        .enumerate()
        .find_map(|(i, raw)| expect(raw).err().map(|field| (i, field)));
    match (first_refused, answer) {
        (None, Ok(got)) => {
            assert_eq!(got.len(), raws.len());
            for (raw, t) in raws.iter().zip(&got) {
                assert_eq!(expect(raw).as_ref(), Ok(&taken(t)), "{raw:?}");
            }
        }
        (Some((i, field)), Err(api)) => check_answer(api, &rule_answer(field, Some(i))),
        (want, got) => panic!("{raws:?}: wanted the first refusal {want:?}, got {got:?}"),
    }
}

/// An increment as DESIGN.md section 3 takes it: the stored key and the value, or the field
/// it is refused for (the key is checked first).
fn expect_increment(
    raw: &RawIncrement<'_>,
    rules: &ValidationRules,
) -> Result<(String, i64), Field> {
    let key = expect_name(&raw.key, rules.key_format).ok_or(Field::Key)?;
    let value_ok = if rules.allow_negative {
        raw.value != 0
    } else {
        raw.value >= 1
    };
    if !value_ok {
        return Err(Field::Value);
    }
    Ok((key, raw.value))
}

/// An item as DESIGN.md section 2 takes it: tenant and id under the rules of a key (the id is
/// checked first).
fn expect_item(raw: &RawItem<'_>, rules: &ValidationRules) -> Result<(String, String), Field> {
    let id = expect_name(&raw.id, rules.key_format).ok_or(Field::Id)?;
    let tenant = expect_name(&raw.tenant, rules.key_format).ok_or(Field::Tenant)?;
    Ok((tenant, id))
}

/// A key, id or tenant as stored, or `None` when the rules refuse it: 1 to 256 bytes of UTF-8,
/// no control character (C0, DEL or C1), and with `uuid` the hyphenated 8-4-4-4-12 hexadecimal
/// form, in lowercase.
fn expect_name(name: &str, format: KeyFormat) -> Option<String> {
    let control = |c: char| c <= '\u{1f}' || ('\u{7f}'..='\u{9f}').contains(&c);
    if name.is_empty() || name.len() > 256 || name.chars().any(control) {
        return None;
    }
    match format {
        KeyFormat::Any => Some(name.to_owned()),
        KeyFormat::Uuid => {
            let groups: Vec<&str> = name.split('-').collect();
            let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            let hex = groups
                .iter()
                .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
            (lengths == [8, 4, 4, 4, 12] && hex).then(|| name.to_ascii_lowercase())
        }
    }
}

/// The `code` and `field` a refusal must answer with.
#[derive(Debug)]
struct Answer {
    code: &'static str,
    field: Option<String>,
    /// The index of the refused element of a batch, which the message starts with.
    index: Option<usize>,
}

/// The answer to a body of the wrong shape.
fn shape_answer(e: &ShapeError) -> Answer {
    use ShapeError::*;
    let (code, field) = match e {
        Malformed(_) => ("malformed_json", None),
        WrongBody { .. } => ("invalid_body", None),
        Missing(field) => ("missing_field", Some(field.to_string())),
        Unknown { name, .. } => ("unknown_field", Some(name.clone())),
        Duplicate(field) => ("duplicate_field", Some(field.to_string())),
        WrongType { field, .. } => ("invalid_type", Some(field.to_string())),
        ValueOutOfRange => ("invalid_value", Some("value".to_owned())),
        TooMany { .. } => ("too_many_items", None),
        Item { index, error } => {
            let inner = shape_answer(error);
            return Answer {
                code: inner.code,
                field: Some(indexed(*index, inner.field)),
                index: Some(*index),
            };
        }
    };
    Answer {
        code,
        field,
        index: None,
    }
}

/// The answer to a value the rules refuse, at `index` in a batch.
fn rule_answer(field: Field, index: Option<usize>) -> Answer {
    let (code, name) = match field {
        Field::Key => ("invalid_key", "key"),
        Field::Value => ("invalid_value", "value"),
        Field::Id => ("invalid_id", "id"),
        Field::Tenant => ("invalid_tenant", "tenant"),
    };
    let field = match index {
        Some(i) => indexed(i, Some(name.to_owned())),
        None => name.to_owned(),
    };
    Answer {
        code,
        field: Some(field),
        index,
    }
}

fn indexed(index: usize, field: Option<String>) -> String {
    match field {
        Some(f) => format!("[{index}].{f}"),
        None => format!("[{index}]"),
    }
}

/// The response an error answers with: 400, JSON, `{"error": {"code", "message", "field"}}`.
fn check_answer(error: ApiError, want: &Answer) {
    let response = error.into_response();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{want:?}");
    assert_eq!(
        response.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(b"application/json".as_slice())
    );
    // The body is in memory: its future is ready at the first poll.
    let mut collect = pin!(response.into_body().collect());
    let Poll::Ready(Ok(collected)) = collect
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    else {
        panic!("the error body is not ready at once");
    };
    let body: Value = serde_json::from_slice(&collected.to_bytes()).expect("a JSON error body");
    let error = &body["error"];
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    assert_eq!(error["code"], want.code, "{body}");
    let message = error["message"].as_str().expect("a message");
    assert!(!message.is_empty());
    if let Some(i) = want.index {
        assert!(message.starts_with(&format!("item {i}: ")), "{body}");
    }
    match &want.field {
        Some(field) => assert_eq!(error["field"], **field, "{body}"),
        None => assert!(error.get("field").is_none(), "{body}"),
    }
}

/// Accepted increments, written back by serde_json, parse to the same increments, both as a
/// batch and one by one.
fn round_trip_increments(incs: &[RawIncrement<'_>]) {
    let values: Vec<Value> = incs
        .iter()
        .map(|inc| json!({"key": &*inc.key, "value": inc.value}))
        .collect();
    let batch = serde_json::to_vec(&values).unwrap();
    assert_eq!(
        body::parse_increments(&batch, MAX_BATCH).as_deref(),
        Ok(incs)
    );
    for (inc, value) in incs.iter().zip(&values) {
        let one = serde_json::to_vec(value).unwrap();
        let again = body::parse_increment(&one).expect("a written increment parses");
        assert_eq!(&again, inc);
        check_borrowed(&again.key);
    }
}

/// Accepted items, written back by serde_json, parse to the same items.
fn round_trip_items(items: &[RawItem<'_>]) {
    let values: Vec<Value> = items
        .iter()
        .map(|item| json!({"id": &*item.id, "tenant": &*item.tenant}))
        .collect();
    let batch = serde_json::to_vec(&values).unwrap();
    let again = body::parse_items(&batch, MAX_BATCH).expect("written items parse");
    assert_eq!(again, items);
    for item in &again {
        check_borrowed(&item.id);
        check_borrowed(&item.tenant);
    }
}

/// A string serde_json wrote without escapes is borrowed from the body, not copied.
#[expect(clippy::ptr_arg, reason = "which variant the Cow is, is the point")]
fn check_borrowed(s: &Cow<'_, str>) {
    let escaped = s.chars().any(|c| c == '"' || c == '\\' || c < ' ');
    if !escaped {
        assert!(matches!(s, Cow::Borrowed(_)), "{s:?} was copied");
    }
}
