-- Monthly totals of the rolled-up rows, so a bill reads a row per resource type instead of
-- one per hour of the month.
--
-- Invariant: for every (tenant, customer, resource type, month) the quantity equals the sum
-- of that month's seq = 0 rows in usage_records. The roll-up keeps it in the same statement
-- that writes those rows, so a reader's snapshot sees both or neither.
CREATE TABLE usage_monthly (
    tenant         text          NOT NULL,
    customer_id    text          NOT NULL,
    -- The first instant of the UTC calendar month.
    month          timestamptz   NOT NULL
                   CHECK (date_trunc('month', month, 'UTC') = month),
    resource_type  text          NOT NULL,
    quantity       numeric(38,6) NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (tenant, customer_id, month, resource_type)
);

INSERT INTO usage_monthly (tenant, customer_id, month, resource_type, quantity)
SELECT tenant, customer_id, date_trunc('month', bucket_start, 'UTC'), resource_type, sum(quantity)
FROM usage_records
WHERE seq = 0
GROUP BY 1, 2, 3, 4;

-- The customer index splits in two by seq, so each read finds only what it needs and a
-- flush's rows still update two indexes (this one and usage_records_flush_idx), not three:
-- bills read the rows of flushes not rolled up yet (few) without walking the customer's
-- rolled-up hours; usage series read both halves.
CREATE INDEX usage_records_unrolled_idx
    ON usage_records (tenant, customer_id, bucket_start)
    INCLUDE (resource_type, quantity, shard, seq)
    WHERE seq > 0;
CREATE INDEX usage_records_rolled_customer_idx
    ON usage_records (tenant, customer_id, bucket_start)
    INCLUDE (resource_type, quantity)
    WHERE seq = 0;
DROP INDEX usage_records_customer_idx;
