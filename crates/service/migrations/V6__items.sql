-- Distinct items per tenant: one row per (tenant, item), inserted with ON CONFLICT DO NOTHING,
-- so an item sent again, through any node, adds no row.
CREATE TABLE items (
    tenant text NOT NULL,
    item   text NOT NULL,
    PRIMARY KEY (tenant, item)
);

-- Each tenant's number of distinct items, raised in the transaction that inserts its rows by
-- the number of rows actually inserted, so that a read never counts the items table.
CREATE TABLE item_counts (
    tenant     text        PRIMARY KEY,
    count      bigint      NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
