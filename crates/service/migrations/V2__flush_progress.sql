-- One row per node: the sequence number of the last flush batch applied for it. A flush
-- records its batch here in the same transaction as its deltas, and a batch at or below this
-- number is never applied again.
CREATE TABLE tally_nodes (
    node_id    text        PRIMARY KEY,
    last_batch bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Deltas a flush could not apply because the key's total would leave the signed 64-bit range.
CREATE TABLE rejected_increments (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key         text        NOT NULL,
    delta       bigint      NOT NULL,
    node_id     text        NOT NULL,
    batch       bigint      NOT NULL,
    reason      text        NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT now()
);
