-- The cold store. One row per (flush, customer, resource type, hour) until the roll-up folds
-- old flushes into one row per (customer, resource type, hour) with seq = 0.
--
-- flushes makes the commit idempotent: (tenant, shard, seq) can be inserted once, and the
-- usage rows of a flush are written in the same transaction only when that insert happened.
CREATE TABLE flushes (
    tenant        text        NOT NULL,
    shard         smallint    NOT NULL,
    seq           bigint      NOT NULL CHECK (seq > 0),
    flush_id      text        NOT NULL,
    fields        integer     NOT NULL,
    drained_at    timestamptz NOT NULL,
    committed_at  timestamptz NOT NULL DEFAULT now(),
    rolled_up     boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (tenant, shard, seq)
);

CREATE INDEX flushes_rollup_idx ON flushes (committed_at) WHERE NOT rolled_up;

CREATE TABLE usage_records (
    tenant         text          NOT NULL,
    customer_id    text          NOT NULL,
    resource_type  text          NOT NULL,
    bucket_start   timestamptz   NOT NULL CHECK (date_trunc('hour', bucket_start) = bucket_start),
    quantity       numeric(28,6) NOT NULL CHECK (quantity > 0),
    -- The flush that wrote the row; seq = 0 marks a rolled-up row, always visible to reads.
    shard          smallint      NOT NULL,
    seq            bigint        NOT NULL CHECK (seq >= 0)
);

-- The bill and usage reads: one customer's rows in a time range, served from the index.
CREATE INDEX usage_records_customer_idx
    ON usage_records (tenant, customer_id, bucket_start)
    INCLUDE (resource_type, quantity, shard, seq);

-- The roll-up finds a flush's rows by (tenant, shard, seq) and upserts rolled-up rows.
CREATE INDEX usage_records_flush_idx ON usage_records (tenant, shard, seq) WHERE seq > 0;
CREATE UNIQUE INDEX usage_records_rolled_idx
    ON usage_records (tenant, customer_id, resource_type, bucket_start) WHERE seq = 0;
