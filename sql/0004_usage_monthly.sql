-- Monthly totals of the rolled-up rows, so a bill reads a row per resource type instead of
-- one per hour of the month.
--
-- Invariant: for every (tenant, customer, resource type, month) the quantity equals the sum
-- of that month's seq = 0 rows in usage_records. The roll-up keeps it in the same statement
-- that writes those rows, so a reader's snapshot sees both or neither.
--
-- A flusher older than this migration rolls up without usage_monthly. Two guards keep it
-- from breaking the invariant while or after this runs:
-- 1. the roll-ups' advisory lock (app.repo.usage.rollup, 0x7A11_0002), held until this
--    commits: a roll-up running now finishes before the backfill reads, and none starts
--    until the table and the trigger below are in place;
-- 2. a trigger refusing seq = 0 rows from a roll-up that does not say it keeps
--    usage_monthly (the new one sets tally.rollup_keeps_monthly in its transaction): an
--    old flusher's roll-up fails, changing nothing, until it is upgraded; its flushes go on.
SELECT pg_advisory_xact_lock(2047934466);

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

CREATE FUNCTION usage_records_rolled_guard() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('tally.rollup_keeps_monthly', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'rolled-up usage rows (seq = 0) must be written with usage_monthly'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'A flusher older than migration 0004 is rolling up: upgrade it.';
    END IF;
    RETURN NULL;
END
$$;

-- AFTER, not BEFORE: a BEFORE row trigger would make every flush's COPY insert row by row;
-- with an AFTER one, rows with seq > 0 (the WHEN is false) cost nothing.
CREATE TRIGGER usage_records_rolled_guard
    AFTER INSERT OR UPDATE ON usage_records
    FOR EACH ROW WHEN (NEW.seq = 0)
    EXECUTE FUNCTION usage_records_rolled_guard();

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
