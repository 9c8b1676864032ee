//! Secrets and what is stored of them. Passwords and API-key secrets are stored as argon2id
//! PHC strings with the argon2 crate's default parameters, which are OWASP's (19 MiB, 2
//! passes, 1 lane); session tokens, 32 random bytes each, as their SHA-256 (a slow hash adds
//! nothing to a secret that long, and a session is looked up by it). In memory, a node keeps
//! of a checked secret only its [`MemoryTags`] tag.
//!
//! An argon2 hash costs tens of milliseconds of CPU on purpose, so it runs on the blocking
//! pool, and at most [`HASHES_AT_ONCE`] at a time: a flood of logins or of wrong keys can
//! take that much CPU and no more.

use std::sync::{Arc, OnceLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Most argon2 hashes computed at once by one node.
pub const HASHES_AT_ONCE: usize = 2;

/// How an API key starts, so that it is recognised in logs, configuration and secret scanners.
const KEY_PREFIX: &str = "tally_";

/// The SHA-256 of a secret: what is compared and cached of a secret that is not stored.
pub type Digest32 = [u8; 32];

pub fn sha256(secret: &str) -> Digest32 {
    Sha256::digest(secret.as_bytes()).into()
}

/// What a node keeps in memory of a secret it has checked: a BLAKE3 keyed hash under a key
/// drawn at start and never stored, so that the cache of checked credentials holds nothing
/// that would be of use outside this process. BLAKE3 rather than SHA-256 because this runs on
/// every authenticated request, and costs a fraction of SHA-256 there.
pub struct MemoryTags {
    key: [u8; 32],
}

impl Default for MemoryTags {
    fn default() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        MemoryTags { key }
    }
}

impl MemoryTags {
    pub fn tag(&self, secret: &str) -> Digest32 {
        blake3::keyed_hash(&self.key, secret.as_bytes()).into()
    }
}

/// Compares two digests in constant time.
pub fn same_digest(a: &Digest32, b: &Digest32) -> bool {
    a.ct_eq(b).into()
}

/// `n` random bytes from the thread's CSPRNG (seeded from the OS), written in hex.
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Computes and checks argon2id hashes on the blocking pool, a few at a time.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher {
            permits: Arc::new(Semaphore::new(HASHES_AT_ONCE)),
        }
    }
}

impl Hasher {
    /// The argon2id PHC string of `secret`, with a random salt.
    pub async fn hash(&self, secret: String) -> String {
        self.blocking(move || hash_now(&secret)).await
    }

    /// Whether `secret` matches `hash`. With no hash (an unknown user), `secret` is checked
    /// against a hash of a random secret, so that the answer takes the same time either way.
    pub async fn verify(&self, secret: String, hash: Option<String>) -> bool {
        self.blocking(move || {
            let matches = |hash: &str| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), hash)
                    .is_ok()
            };
            match hash {
                Some(hash) => matches(&hash),
                None => {
                    static DECOY: OnceLock<String> = OnceLock::new();
                    let _ = matches(DECOY.get_or_init(|| hash_now(&random_hex(32))));
                    false
                }
            }
        })
        .await
    }

    async fn blocking<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let _permit = self.permits.acquire().await.expect("never closed");
        tokio::task::spawn_blocking(work)
            .await
            .expect("hashing does not panic")
    }
}

fn hash_now(secret: &str) -> String {
    Argon2::default()
        .hash_password(secret.as_bytes())
        .expect("argon2 with its default parameters hashes any input")
        .to_string()
}

/// A new API key: `tally_<id>_<secret>`, the id 16 hex digits (it finds the key's row and
/// may be shown), the secret 64 (only its hash is kept).
pub struct NewKey {
    pub id: String,
    pub secret: String,
}

impl NewKey {
    pub fn generate() -> NewKey {
        NewKey {
            id: random_hex(8),
            secret: random_hex(32),
        }
    }

    /// The key as its holder sends it.
    pub fn token(&self) -> String {
        format!("{KEY_PREFIX}{}_{}", self.id, self.secret)
    }
}

/// An API key as presented: its id and its secret, or `None` if it is not shaped like one.
pub fn parse_key(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = split_key(token)?;
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id) && hex(secret)).then_some((id, secret))
}

/// Like [`parse_key`] without looking at each digit: enough to find a key among those already
/// checked, whose secrets were all well formed.
pub fn split_key(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(KEY_PREFIX)?.split_once('_')?;
    (id.len() == 16 && secret.len() == 64).then_some((id, secret))
}

/// A new session token, 32 random bytes in hex.
pub fn new_session_token() -> String {
    random_hex(32)
}

/// Whether a presented session token is shaped like one.
pub fn is_session_token(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_reads_back_as_its_id_and_secret_and_nothing_else_does() {
        let key = NewKey::generate();
        let token = key.token();
        assert_eq!(parse_key(&token), Some((&key.id[..], &key.secret[..])));
        assert_ne!(NewKey::generate().secret, key.secret);
        for bad in [
            "",
            "tally_",
            &token[1..],
            &token[..token.len() - 1],
            &token.replace('_', "-"),
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_hash_verifies_its_secret_only() {
        let hasher = Hasher::default();
        let hash = hasher.hash("correct horse".into()).await;
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            hasher
                .verify("correct horse".into(), Some(hash.clone()))
                .await
        );
        assert!(!hasher.verify("correct horsf".into(), Some(hash)).await);
        assert!(!hasher.verify("correct horse".into(), None).await);
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        assert!(same_digest(&sha256("a"), &sha256("a")));
        assert!(!same_digest(&sha256("a"), &sha256("b")));
        let (tags, others) = (MemoryTags::default(), MemoryTags::default());
        assert!(same_digest(&tags.tag("a"), &tags.tag("a")));
        assert!(!same_digest(&tags.tag("a"), &tags.tag("b")));
        assert!(
            !same_digest(&tags.tag("a"), &others.tag("a")),
            "a key per process"
        );
    }
}
