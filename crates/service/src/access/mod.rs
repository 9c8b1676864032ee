//! Access control: who may count, and how fast. Off by default (`--auth none`, no rate limit)
//! so that a first run needs nothing; switched on by configuration.
//!
//! - [`Accounts`]: users (email and password), their sessions and their API keys, each secret
//!   stored only as a hash ([`secrets`]), and the check of the credentials a request carries.
//! - [`rate_limit`]: a token bucket per client.
//! - [`peer`]: the address a request counts as, behind trusted proxies.
//!
//! Checking a credential costs an argon2 hash (an API key) or a database read (a session), so a
//! node remembers credentials it has checked for [`CHECKED_CREDENTIALS_TTL`]: a request with a
//! known key then costs a keyed BLAKE3 hash and a map lookup. A key revoked or a session ended on one
//! node is forgotten there at once, and on the other nodes within that time.

mod cache;
pub mod peer;
pub mod rate_limit;
pub mod secrets;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::storage::{AddUserError, Storage, StorageError};
use cache::TtlCache;
use rate_limit::Client;
use secrets::{Digest32, Hasher, MemoryTags, NewKey, same_digest, sha256};

/// How long a node trusts a credential it has checked before it checks it again.
pub const CHECKED_CREDENTIALS_TTL: Duration = Duration::from_secs(10);

/// Most checked credentials a node remembers (of each kind).
const CHECKED_CREDENTIALS: usize = 100_000;

/// Shortest and longest password accepted. The longest bounds the work of one hash.
const PASSWORD_CHARS: (usize, usize) = (8, 1024);

/// Whether the counting routes need credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Anyone may count and read.
    None,
    /// A session cookie or an API key is needed to count and to read.
    Required,
}

/// Who may create users over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signup {
    /// Anyone, with `POST /api/users`.
    Open,
    /// Only an operator, with `tally user add`.
    Closed,
}

/// Someone whose credentials were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: i64,
    /// The API key used, by id; `None` for a session.
    pub key_id: Option<Arc<str>>,
}

impl Principal {
    /// Who its requests count against in the rate limit.
    pub fn client(&self) -> Client {
        match &self.key_id {
            Some(id) => Client::Key(id.clone()),
            None => Client::User(self.user_id),
        }
    }
}

/// The credentials a request carries, as sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// From `Authorization: Bearer <key>`.
    pub api_key: Option<&'a str>,
    /// From the session cookie.
    pub session: Option<&'a str>,
}

impl Credentials<'_> {
    pub fn is_empty(&self) -> bool {
        self.api_key.is_none() && self.session.is_none()
    }
}

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    InvalidEmail(&'static str),
    #[error("the password must be {min} to {max} characters", min = PASSWORD_CHARS.0, max = PASSWORD_CHARS.1)]
    InvalidPassword,
    #[error("a user with this email exists")]
    EmailTaken,
    #[error("sign-up is closed: an operator adds users with `tally user add`")]
    SignupClosed,
    /// Wrong, unknown, revoked or expired credentials; which of these is not said.
    #[error("the credentials are not valid")]
    InvalidCredentials,
    #[error("no user has this email")]
    UnknownUser,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<AddUserError> for AccessError {
    fn from(e: AddUserError) -> Self {
        match e {
            AddUserError::EmailTaken => AccessError::EmailTaken,
            AddUserError::Storage(e) => AccessError::Storage(e),
        }
    }
}

/// An API key whose secret this node has checked.
#[derive(Clone)]
struct CheckedKey {
    /// The tag of the secret that matched.
    secret_tag: Digest32,
    /// The argon2id hash it matched.
    secret_hash: Arc<str>,
    user_id: i64,
    id: Arc<str>,
}

/// A session just opened: its token (for the cookie) and how long it lasts.
pub struct NewSession {
    pub token: String,
    pub user_id: i64,
    pub ttl: Duration,
}

/// Users, sessions and API keys.
pub struct Accounts {
    storage: Storage,
    pub mode: AuthMode,
    /// Sign-up and the session lifetime, which a reload may change ([`Accounts::set_policy`]).
    policy: RwLock<(Signup, Duration)>,
    hasher: Hasher,
    /// Checked keys by id (its 16 hex digits as a number, so that a lookup allocates
    /// nothing).
    keys: TtlCache<u64, CheckedKey>,
    /// Checked sessions by the tag of their token: the user.
    sessions: TtlCache<Digest32, i64>,
    /// What the two caches keep of a secret.
    tags: MemoryTags,
}

impl Accounts {
    pub fn new(storage: Storage, mode: AuthMode, signup: Signup, session_ttl: Duration) -> Self {
        Accounts {
            storage,
            mode,
            policy: RwLock::new((signup, session_ttl)),
            hasher: Hasher::default(),
            keys: TtlCache::new(CHECKED_CREDENTIALS_TTL, CHECKED_CREDENTIALS),
            sessions: TtlCache::new(CHECKED_CREDENTIALS_TTL, CHECKED_CREDENTIALS),
            tags: MemoryTags::default(),
        }
    }

    pub fn required(&self) -> bool {
        self.mode == AuthMode::Required
    }

    /// Sign-up and the lifetime of sessions opened from now on.
    pub fn set_policy(&self, signup: Signup, session_ttl: Duration) {
        *self.policy.write().unwrap_or_else(PoisonError::into_inner) = (signup, session_ttl);
    }

    fn policy(&self) -> (Signup, Duration) {
        *self.policy.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a user, as `POST /api/users` does when sign-up is open.
    pub async fn sign_up(&self, email: &str, password: &str) -> Result<i64, AccessError> {
        if self.policy().0 == Signup::Closed {
            return Err(AccessError::SignupClosed);
        }
        self.add_user(email, password).await
    }

    /// Adds a user whatever the sign-up setting (`tally user add`).
    pub async fn add_user(&self, email: &str, password: &str) -> Result<i64, AccessError> {
        let email = normalize_email(email)?;
        check_password(password)?;
        let hash = self.hasher.hash(password.to_owned()).await;
        Ok(self.storage.add_user(&email, &hash).await?)
    }

    /// Opens a session for the user with this email and password. A wrong password and an
    /// unknown email take the same time and get the same answer.
    pub async fn log_in(&self, email: &str, password: &str) -> Result<NewSession, AccessError> {
        let user = match normalize_email(email) {
            Ok(email) => self.storage.user_by_email(&email).await?,
            Err(_) => None,
        };
        let hash = user.as_ref().map(|u| u.password_hash.clone());
        let matches = self.hasher.verify(password.to_owned(), hash).await;
        let user = user
            .filter(|_| matches)
            .ok_or(AccessError::InvalidCredentials)?;
        let token = secrets::new_session_token();
        let (_, ttl) = self.policy();
        self.storage
            .add_session(&sha256(&token), user.id, ttl)
            .await?;
        Ok(NewSession {
            token,
            user_id: user.id,
            ttl,
        })
    }

    /// Ends a session, on this node at once and in PostgreSQL; whether it was live.
    pub async fn log_out(&self, token: &str) -> Result<bool, AccessError> {
        self.sessions.remove(&self.tags.tag(token));
        Ok(self.storage.delete_session(&sha256(token)).await?)
    }

    /// Creates an API key for a user; the key as its holder will send it (shown once) and its
    /// id.
    pub async fn create_key(&self, user_id: i64) -> Result<(String, String), AccessError> {
        let key = NewKey::generate();
        let hash = self.hasher.hash(key.secret.clone()).await;
        self.storage.add_key(&key.id, user_id, &hash).await?;
        Ok((key.token(), key.id))
    }

    /// Creates an API key for the user with this email (`tally key create`).
    pub async fn create_key_for(&self, email: &str) -> Result<(String, String), AccessError> {
        let email = normalize_email(email)?;
        let user = self
            .storage
            .user_by_email(&email)
            .await?
            .ok_or(AccessError::UnknownUser)?;
        self.create_key(user.id).await
    }

    /// Revokes a key of `user_id`; whether it had such a live key.
    pub async fn revoke_key(&self, user_id: i64, id: &str) -> Result<bool, AccessError> {
        if let Some(number) = key_number(id) {
            self.keys.remove(&number);
        }
        Ok(self.storage.revoke_key(id, user_id).await?)
    }

    /// The principal the credentials show, if this node checked them recently: no I/O.
    pub fn recently_checked(&self, credentials: Credentials<'_>) -> Option<Principal> {
        if let Some(token) = credentials.api_key {
            let (id, secret) = secrets::split_key(token)?;
            let key = self.keys.get(&key_number(id)?)?;
            return same_digest(&key.secret_tag, &self.tags.tag(secret)).then_some(Principal {
                user_id: key.user_id,
                key_id: Some(key.id),
            });
        }
        let user_id = self.sessions.get(&self.tags.tag(credentials.session?))?;
        Some(Principal {
            user_id,
            key_id: None,
        })
    }

    /// Checks the credentials a request carries: `Ok(None)` when it carries none, an error
    /// when they are not valid. An API key is used if both are present.
    pub async fn authenticate(
        &self,
        credentials: Credentials<'_>,
    ) -> Result<Option<Principal>, AccessError> {
        if credentials.is_empty() {
            return Ok(None);
        }
        if let Some(known) = self.recently_checked(credentials) {
            return Ok(Some(known));
        }
        if let Some(token) = credentials.api_key {
            return self.check_key(token).await.map(Some);
        }
        let token = credentials.session.ok_or(AccessError::InvalidCredentials)?;
        if !secrets::is_session_token(token) {
            return Err(AccessError::InvalidCredentials);
        }
        let (user_id, left) = self
            .storage
            .session_user(&sha256(token))
            .await?
            .ok_or(AccessError::InvalidCredentials)?;
        self.sessions
            .insert(self.tags.tag(token), user_id, Some(left));
        Ok(Some(Principal {
            user_id,
            key_id: None,
        }))
    }
}

impl Accounts {
    /// Checks an API key that is not among the recently checked: that it is live, in
    /// PostgreSQL, and that its secret matches. The argon2 hash is computed only for a secret
    /// this node has not matched against this key's hash before, so that the checks every
    /// [`CHECKED_CREDENTIALS_TTL`] of keys in use cost a read each, not a hash.
    async fn check_key(&self, token: &str) -> Result<Principal, AccessError> {
        let (id, secret) = secrets::parse_key(token).ok_or(AccessError::InvalidCredentials)?;
        let number = key_number(id).ok_or(AccessError::InvalidCredentials)?;
        let secret_tag = self.tags.tag(secret);
        let Some(stored) = self.storage.live_key(id).await? else {
            // Revoked, or never made. A key's id is no secret, so this answer may come sooner
            // than a hash would: no time is spent on keys that do not exist.
            self.keys.remove(&number);
            return Err(AccessError::InvalidCredentials);
        };
        let matched_before = self.keys.get_any(&number).is_some_and(|known| {
            same_digest(&known.secret_tag, &secret_tag) && *known.secret_hash == *stored.secret_hash
        });
        if !matched_before
            && !self
                .hasher
                .verify(secret.to_owned(), Some(stored.secret_hash.clone()))
                .await
        {
            return Err(AccessError::InvalidCredentials);
        }
        let key = CheckedKey {
            secret_tag,
            secret_hash: stored.secret_hash.into(),
            user_id: stored.user_id,
            id: id.into(),
        };
        let principal = Principal {
            user_id: key.user_id,
            key_id: Some(key.id.clone()),
        };
        self.keys.insert(number, key, None);
        Ok(principal)
    }
}

/// A key's id (16 hex digits) as a number.
fn key_number(id: &str) -> Option<u64> {
    // from_str_radix alone would also take a leading '+'.
    id.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| u64::from_str_radix(id, 16).ok())
        .flatten()
}

/// The email as stored: checked for shape, ASCII letters in lower case so that `A@x.org` and
/// `a@x.org` are one user.
fn normalize_email(email: &str) -> Result<String, AccessError> {
    if email.is_empty() || email.len() > 254 {
        return Err(AccessError::InvalidEmail(
            "the email must be 1 to 254 bytes",
        ));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(AccessError::InvalidEmail(
            "the email must not hold spaces or control characters",
        ));
    }
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(email.to_ascii_lowercase())
        }
        _ => Err(AccessError::InvalidEmail(
            "the email must be of the form name@domain",
        )),
    }
}

fn check_password(password: &str) -> Result<(), AccessError> {
    let chars = password.chars().count();
    if chars < PASSWORD_CHARS.0 || chars > PASSWORD_CHARS.1 {
        return Err(AccessError::InvalidPassword);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_folded_to_lower_case() {
        assert_eq!(
            normalize_email("Ada@Example.org").unwrap(),
            "ada@example.org"
        );
        for bad in ["", "ada", "@x", "ada@", "a@b@c", "a da@x", &"a".repeat(255)] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_have_a_length_range() {
        assert!(check_password("12345678").is_ok());
        assert!(check_password("1234567").is_err());
        assert!(check_password(&"x".repeat(1025)).is_err());
        assert!(check_password("ééééééé").is_err(), "characters, not bytes");
    }
}
