-- A flush batch is identified by its node, the epoch of the claim under which it was cut, and
-- its number within that epoch. Every start claims the node id anew with a higher epoch, so
-- that a second process that takes the id over (a copied data directory, a database where the
-- advisory lock does not hold) can never make the first one's journaled batches look applied.

-- The epoch of the process that owns the node id now; every flush checks it.
ALTER TABLE tally_nodes ADD COLUMN epoch bigint NOT NULL DEFAULT 0;

-- The last batch each epoch applied itself, in order. Epoch 0 stands for journals written
-- before epochs existed: its progress stays in tally_nodes.last_batch.
CREATE TABLE tally_epochs (
    node_id    text        NOT NULL,
    epoch      bigint      NOT NULL,
    last_batch bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, epoch)
);

-- Batches of an earlier epoch replayed from a journal by a later process: every record of the
-- batch with a sequence number up to last_lsn is applied. Sequence numbers, not the batch
-- alone, because a journal copied while its node ran holds only part of its last batches.
CREATE TABLE tally_replays (
    node_id     text        NOT NULL,
    epoch       bigint      NOT NULL,
    batch       bigint      NOT NULL,
    last_lsn    bigint      NOT NULL,
    replayed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, epoch, batch)
);

ALTER TABLE rejected_increments ADD COLUMN epoch bigint;
