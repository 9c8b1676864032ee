//! Distinct items per tenant: an item id of a tenant, valid by construction, and how it travels
//! with the increments.
//!
//! An item takes the increments' path whole (pending buffer, journal, flush batch, replay), as
//! a *pending key* of its own beside the counters' keys: [`MARK`], the tenant, [`MARK`], the id.
//! No counter key can take that form, since keys, ids and tenants never hold control
//! characters, and it sorts before every counter key, so a sorted batch holds its items first.
//! Its delta counts how often the id was sent; storage counts it once per tenant
//! (`crate::storage`), and the pending key never reaches PostgreSQL.

use std::borrow::Cow;

use crate::increment::{Field, RuleViolation, ValidationRules, check_name};

/// Starts a pending key that is an item, and separates its tenant from its id.
pub const MARK: char = '\0';

/// A valid item: an id and its tenant, both under the rules of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<'a> {
    tenant: Cow<'a, str>,
    id: Cow<'a, str>,
}

impl<'a> Item<'a> {
    /// Applies the rules of a key to the tenant and the id (a UUID for each with
    /// `--key-format uuid`).
    pub fn new(
        tenant: Cow<'a, str>,
        id: Cow<'a, str>,
        rules: &ValidationRules,
    ) -> Result<Self, RuleViolation> {
        let id = check_name(id, rules.key_format, Field::Id)?;
        let tenant = check_name(tenant, rules.key_format, Field::Tenant)?;
        Ok(Item { tenant, id })
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key under which the pending buffer and the journal hold this item.
    pub fn pending_key(&self) -> String {
        let mut key = tenant_prefix(&self.tenant);
        key.push_str(&self.id);
        key
    }
}

/// The start of every pending key of `tenant`'s items.
pub fn tenant_prefix(tenant: &str) -> String {
    let mut prefix = String::with_capacity(tenant.len() + 2);
    prefix.push(MARK);
    prefix.push_str(tenant);
    prefix.push(MARK);
    prefix
}

/// The `(tenant, id)` of a pending key that is an item; `None` for a counter's key.
pub fn from_pending_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(MARK)?.split_once(MARK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item<'a>(tenant: &'a str, id: &'a str) -> Result<Item<'a>, RuleViolation> {
        Item::new(tenant.into(), id.into(), &ValidationRules::default())
    }

    #[test]
    fn a_pending_key_names_its_item_and_sorts_before_every_counter_key() {
        let i = item("acme", "user/1").unwrap();
        let key = i.pending_key();
        assert_eq!(from_pending_key(&key), Some(("acme", "user/1")));
        assert!(key.starts_with(&tenant_prefix("acme")));
        assert!(!key.starts_with(&tenant_prefix("acm")));
        assert_eq!(from_pending_key("acme"), None, "a counter's key");
        assert!(*key < *" ", "before the smallest valid key");
    }

    #[test]
    fn tenant_and_id_follow_the_rules_of_a_key() {
        assert_eq!(item("", "i").unwrap_err().field, Field::Tenant);
        assert_eq!(item("t", "").unwrap_err().field, Field::Id);
        let control = item("t", "a\u{0}b").unwrap_err();
        assert_eq!(control.message, "id must not contain control characters");
        assert!(item(&"t".repeat(257), "i").is_err());
        let uuid = ValidationRules {
            key_format: crate::increment::KeyFormat::Uuid,
            ..ValidationRules::default()
        };
        assert_eq!(
            Item::new("t".into(), "i".into(), &uuid).unwrap_err().field,
            Field::Id
        );
    }
}
