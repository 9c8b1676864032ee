-- Access control (`--auth required`): users, their sessions and their API keys. Secrets are
-- never stored: a password or an API key only as its argon2id hash (a PHC string), a session
-- token (32 random bytes) only as its SHA-256.
CREATE TABLE users (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text        NOT NULL UNIQUE,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sessions (
    token_sha256 bytea       PRIMARY KEY,
    user_id      bigint      NOT NULL REFERENCES users ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);

-- A key is shown once as `tally_<id>_<secret>`; the id finds the row, the secret is checked
-- against the hash. A revoked key keeps its row, so its id is never given out again.
CREATE TABLE api_keys (
    id          text        PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users ON DELETE CASCADE,
    secret_hash text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_by_user ON api_keys (user_id);
