//! The domain's one value: an increment of a key by a non-zero amount, valid by construction.
//!
//! The HTTP layer turns a body into candidate fields; [`Increment::new`] applies the rules of
//! DESIGN.md section 3 and is the only way to obtain an `Increment`, so everything past the
//! edge (buffer, journal, flush, storage) can take validity for granted.

use std::borrow::Cow;

/// Which keys are accepted (`--key-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// Any key of 1 to 256 bytes of UTF-8 without control characters.
    Any,
    /// Hyphenated UUIDs only, stored in lowercase.
    Uuid,
}

/// Longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 256;

/// The configurable validation rules.
#[derive(Debug, Clone, Copy)]
pub struct ValidationRules {
    pub key_format: KeyFormat,
    pub allow_negative: bool,
}

impl Default for ValidationRules {
    fn default() -> Self {
        ValidationRules {
            key_format: KeyFormat::Any,
            allow_negative: false,
        }
    }
}

/// A valid increment. The key borrows from the request body when it can, so a request for a
/// key that is already pending allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Increment<'a> {
    key: Cow<'a, str>,
    value: i64,
}

/// Which part of the input a validation error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Key,
    Value,
    /// An item's id (`POST /items`), which follows the rules of a key.
    Id,
    /// An item's tenant, which follows the rules of a key.
    Tenant,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Key => "key",
            Field::Value => "value",
            Field::Id => "id",
            Field::Tenant => "tenant",
        }
    }
}

/// A broken rule, with a message fit to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleViolation {
    pub field: Field,
    pub message: &'static str,
}

impl<'a> Increment<'a> {
    /// Applies the rules to a key and a value that are already a JSON string and a JSON integer
    /// in the signed 64-bit range.
    pub fn new(
        key: Cow<'a, str>,
        value: i64,
        rules: &ValidationRules,
    ) -> Result<Self, RuleViolation> {
        let key = check_key(key, rules.key_format)?;
        check_value(value, rules.allow_negative)?;
        Ok(Increment { key, value })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn value(&self) -> i64 {
        self.value
    }
}

/// Checks a key on its own, e.g. one taken from a URL path.
pub fn check_key<'a>(key: Cow<'a, str>, format: KeyFormat) -> Result<Cow<'a, str>, RuleViolation> {
    check_name(key, format, Field::Key)
}

/// Checks a name under the rules of a key: a key, or an item's id or tenant (`field` says
/// which, for the message).
pub fn check_name<'a>(
    name: Cow<'a, str>,
    format: KeyFormat,
    field: Field,
) -> Result<Cow<'a, str>, RuleViolation> {
    let violation = |problem| RuleViolation {
        field,
        message: name_message(field, problem),
    };
    if name.is_empty() {
        return Err(violation(NameProblem::Empty));
    }
    if name.len() > MAX_KEY_BYTES {
        return Err(violation(NameProblem::TooLong));
    }
    // Most names are ASCII: then a byte test is enough (C0 controls and DEL); otherwise every
    // character is checked, C1 controls included.
    let has_control = if name.is_ascii() {
        // Without an early exit, so that the compiler can test many bytes at once.
        name.bytes()
            .fold(false, |found, b| found | (b < 0x20) | (b == 0x7f))
    } else {
        name.chars().any(char::is_control)
    };
    if has_control {
        return Err(violation(NameProblem::Control));
    }
    match format {
        KeyFormat::Any => Ok(name),
        KeyFormat::Uuid => canonical_uuid(name).ok_or(violation(NameProblem::NotUuid)),
    }
}

#[derive(Clone, Copy)]
enum NameProblem {
    Empty,
    TooLong,
    Control,
    NotUuid,
}

/// Messages are `&'static str` (an error costs no allocation), so each field has its own.
fn name_message(field: Field, problem: NameProblem) -> &'static str {
    use NameProblem::*;
    match (field, problem) {
        (Field::Tenant, Empty) => "tenant must not be empty",
        (Field::Tenant, TooLong) => "tenant must be at most 256 bytes of UTF-8",
        (Field::Tenant, Control) => "tenant must not contain control characters",
        (Field::Tenant, NotUuid) => {
            "tenant must be a UUID in hyphenated form (8-4-4-4-12 hexadecimal digits)"
        }
        (Field::Id, Empty) => "id must not be empty",
        (Field::Id, TooLong) => "id must be at most 256 bytes of UTF-8",
        (Field::Id, Control) => "id must not contain control characters",
        (Field::Id, NotUuid) => {
            "id must be a UUID in hyphenated form (8-4-4-4-12 hexadecimal digits)"
        }
        (_, Empty) => "key must not be empty",
        (_, TooLong) => "key must be at most 256 bytes of UTF-8",
        (_, Control) => "key must not contain control characters",
        (_, NotUuid) => "key must be a UUID in hyphenated form (8-4-4-4-12 hexadecimal digits)",
    }
}

/// Accepts the hyphenated form only, in either case, and returns it in lowercase so that one
/// UUID is one counter however it was written.
fn canonical_uuid(key: Cow<'_, str>) -> Option<Cow<'_, str>> {
    let bytes = key.as_bytes();
    let well_formed = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !well_formed {
        return None;
    }
    if bytes.iter().any(u8::is_ascii_uppercase) {
        Some(Cow::Owned(key.to_ascii_lowercase()))
    } else {
        Some(key)
    }
}

fn check_value(value: i64, allow_negative: bool) -> Result<(), RuleViolation> {
    let violation = |message| RuleViolation {
        field: Field::Value,
        message,
    };
    match (value, allow_negative) {
        (0, true) => Err(violation("value must be a non-zero integer")),
        (v, false) if v < 1 => Err(violation("value must be an integer >= 1")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(key_format: KeyFormat, allow_negative: bool) -> ValidationRules {
        ValidationRules {
            key_format,
            allow_negative,
        }
    }

    fn inc(key: &str, value: i64, r: ValidationRules) -> Result<Increment<'_>, RuleViolation> {
        Increment::new(Cow::Borrowed(key), value, &r)
    }

    #[test]
    fn keys_of_1_to_256_bytes_without_control_characters() {
        let r = ValidationRules::default();
        assert!(inc("a", 1, r).is_ok());
        assert!(inc(&"é".repeat(128), 1, r).is_ok(), "256 bytes");
        assert_eq!(inc("", 1, r).unwrap_err().field, Field::Key);
        assert_eq!(
            inc(&("é".repeat(128) + "a"), 1, r).unwrap_err().field,
            Field::Key,
            "257 bytes"
        );
        assert!(inc(&"x".repeat(257), 1, r).is_err());
        for bad in ["a\nb", "a\u{0}", "\u{7f}", "tab\there", "c1\u{85}"] {
            assert!(inc(bad, 1, r).is_err(), "{bad:?}");
        }
        assert!(inc("spaces and / slashes are fine", 1, r).is_ok());
    }

    #[test]
    fn values_are_positive_unless_negatives_are_allowed() {
        let strict = ValidationRules::default();
        assert!(inc("k", 1, strict).is_ok());
        assert!(inc("k", i64::MAX, strict).is_ok());
        assert_eq!(
            inc("k", 0, strict).unwrap_err().message,
            "value must be an integer >= 1"
        );
        assert!(inc("k", -1, strict).is_err());

        let lenient = rules(KeyFormat::Any, true);
        assert!(inc("k", -5, lenient).is_ok());
        assert!(inc("k", i64::MIN, lenient).is_ok());
        assert_eq!(inc("k", 0, lenient).unwrap_err().field, Field::Value);
    }

    #[test]
    fn uuid_keys_are_hyphenated_and_lowercased() {
        let r = rules(KeyFormat::Uuid, false);
        let upper = "6F9619FF-8B86-D011-B42D-00CF4FC964FF";
        assert_eq!(inc(upper, 1, r).unwrap().key(), upper.to_ascii_lowercase());
        let lower = "6f9619ff-8b86-d011-b42d-00cf4fc964ff";
        assert!(matches!(inc(lower, 1, r).unwrap().key, Cow::Borrowed(_)));
        for bad in [
            "6f9619ff8b86d011b42d00cf4fc964ff",
            "{6f9619ff-8b86-d011-b42d-00cf4fc964ff}",
            "6f9619ff-8b86-d011-b42d-00cf4fc964fg",
            "not-a-uuid",
        ] {
            assert_eq!(inc(bad, 1, r).unwrap_err().field, Field::Key, "{bad}");
        }
    }
}
