-- bucket_start must be the start of a UTC hour. 0002's CHECK used date_trunc('hour', x),
-- which truncates in the session's TimeZone: in a zone with a non-whole-hour offset
-- (Asia/Kolkata, +05:30) a UTC hour start is not a local one, so every flush failed the
-- CHECK when the server's or role's default TimeZone was such a zone.
--
-- Adding the new CHECK checks the existing rows (one scan, under the table's lock): they
-- pass, as the flusher only ever wrote UTC hour starts.
ALTER TABLE usage_records
    DROP CONSTRAINT usage_records_bucket_start_check,
    ADD CONSTRAINT usage_records_bucket_start_utc_hour
        CHECK (date_trunc('hour', bucket_start, 'UTC') = bucket_start);
