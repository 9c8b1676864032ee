-- Requests that carried an Idempotency-Key: the key, a SHA-256 of the request (its route and
-- body), and the answer it got, written in the transaction that applied the request, so that
-- a retry, on any node, is answered the same and applies nothing. Kept until `expires_at`
-- (`--idempotency-ttl` after the request), then purged in small batches.
CREATE TABLE idempotency_keys (
    key         text        PRIMARY KEY,
    fingerprint bytea       NOT NULL,
    status      smallint    NOT NULL,
    body        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
