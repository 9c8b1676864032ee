//! The SQL of access control (`crate::access`): users, sessions and API keys. Only hashes of
//! secrets reach these functions; see `migrations/V8__access.sql`.

use std::time::Duration;

use super::{Storage, StorageError, bounded};

/// A user as a login needs it.
#[derive(Debug, Clone)]
pub struct StoredUser {
    pub id: i64,
    /// The argon2id PHC string of the password.
    pub password_hash: String,
}

/// A live API key as a check needs it.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub user_id: i64,
    /// The argon2id PHC string of the key's secret.
    pub secret_hash: String,
}

/// Why a user could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddUserError {
    #[error("a user with this email exists")]
    EmailTaken,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Storage {
    /// Adds a user; the email must be new.
    pub async fn add_user(&self, email: &str, password_hash: &str) -> Result<i64, AddUserError> {
        let added = self
            .with_client(async |client, limit| {
                bounded(
                    limit,
                    client.query_opt(
                        "INSERT INTO users (email, password_hash) VALUES ($1, $2)
                         ON CONFLICT (email) DO NOTHING RETURNING id",
                        &[&email, &password_hash],
                    ),
                )
                .await
            })
            .await?;
        added.map(|row| row.get(0)).ok_or(AddUserError::EmailTaken)
    }

    /// The user with this email, if there is one.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<StoredUser>, StorageError> {
        self.with_client(async |client, limit| {
            let row = bounded(
                limit,
                client.query_opt(
                    "SELECT id, password_hash FROM users WHERE email = $1",
                    &[&email],
                ),
            )
            .await?;
            Ok(row.map(|r| StoredUser {
                id: r.get(0),
                password_hash: r.get(1),
            }))
        })
        .await
    }

    /// Opens a session for `user_id` that ends after `ttl`, and deletes the user's ended ones.
    pub async fn add_session(
        &self,
        token_sha256: &[u8],
        user_id: i64,
        ttl: Duration,
    ) -> Result<(), StorageError> {
        self.with_client(async |client, limit| {
            bounded(
                limit,
                client.execute(
                    "DELETE FROM sessions WHERE user_id = $1 AND expires_at <= now()",
                    &[&user_id],
                ),
            )
            .await?;
            bounded(
                limit,
                client.execute(
                    "INSERT INTO sessions (token_sha256, user_id, expires_at)
                     VALUES ($1, $2, now() + make_interval(secs => $3))",
                    &[&token_sha256, &user_id, &ttl.as_secs_f64()],
                ),
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// The user of a live session, and how long the session has left.
    pub async fn session_user(
        &self,
        token_sha256: &[u8],
    ) -> Result<Option<(i64, Duration)>, StorageError> {
        self.with_client(async |client, limit| {
            let row = bounded(
                limit,
                client.query_opt(
                    "SELECT user_id, extract(epoch FROM expires_at - now())::float8
                     FROM sessions WHERE token_sha256 = $1 AND expires_at > now()",
                    &[&token_sha256],
                ),
            )
            .await?;
            Ok(row.map(|r| {
                let left: f64 = r.get(1);
                (r.get(0), Duration::from_secs_f64(left.max(0.0)))
            }))
        })
        .await
    }

    /// Ends a session; whether it was live.
    pub async fn delete_session(&self, token_sha256: &[u8]) -> Result<bool, StorageError> {
        self.with_client(async |client, limit| {
            let deleted = bounded(
                limit,
                client.execute(
                    "DELETE FROM sessions WHERE token_sha256 = $1",
                    &[&token_sha256],
                ),
            )
            .await?;
            Ok(deleted > 0)
        })
        .await
    }

    /// Records a new API key of `user_id`.
    pub async fn add_key(
        &self,
        id: &str,
        user_id: i64,
        secret_hash: &str,
    ) -> Result<(), StorageError> {
        self.with_client(async |client, limit| {
            bounded(
                limit,
                client.execute(
                    "INSERT INTO api_keys (id, user_id, secret_hash) VALUES ($1, $2, $3)",
                    &[&id, &user_id, &secret_hash],
                ),
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// The API key with this id, unless it is revoked or unknown.
    pub async fn live_key(&self, id: &str) -> Result<Option<StoredKey>, StorageError> {
        self.with_client(async |client, limit| {
            let row = bounded(
                limit,
                client.query_opt(
                    "SELECT user_id, secret_hash FROM api_keys
                     WHERE id = $1 AND revoked_at IS NULL",
                    &[&id],
                ),
            )
            .await?;
            Ok(row.map(|r| StoredKey {
                user_id: r.get(0),
                secret_hash: r.get(1),
            }))
        })
        .await
    }

    /// Revokes a live key of `user_id`; whether there was one.
    pub async fn revoke_key(&self, id: &str, user_id: i64) -> Result<bool, StorageError> {
        self.with_client(async |client, limit| {
            let revoked = bounded(
                limit,
                client.execute(
                    "UPDATE api_keys SET revoked_at = now()
                     WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
                    &[&id, &user_id],
                ),
            )
            .await?;
            Ok(revoked > 0)
        })
        .await
    }
}
