#!lua
-- Seed an hour's total in a customer's month-total hash (see ingest.lua), so the bound of
-- that hour is decided from it from now on.
--
-- KEYS[1] the customer's month-total hash   KEYS[2] the customer's hot hash
-- KEYS[3] the shard's seq counter
-- ARGV[1] the hour's field <resource>|<hour> (in both hashes)
-- ARGV[2] its exact total, micro-units (hot + pending + flushed, read by the caller)
-- ARGV[3] the hot field ("" if none) and ARGV[4] the seq ("" if none) the caller read
--         before its exact read
-- ARGV[5] unix second at which the month-total hash expires
-- Reply: 1 seeded (or seeded already: kept, ingest.lua has kept it exact since),
--        0 refused: an event may have entered the hour since the caller's first read, so its
--        total may be stale (read again).
--
-- Why the guard is exact: an accepted event raises the hour's hot field (quantities are
-- > 0), and only a drain lowers it, which raises the seq. Both unchanged: no event entered
-- the hour, and flushes moving its units between hot, pending and PostgreSQL keep its total.
-- Events of other hours do not matter, so a busy customer's new hour is seeded all the same.

if (redis.call('HGET', KEYS[2], ARGV[1]) or '') ~= ARGV[3]
    or (redis.call('GET', KEYS[3]) or '') ~= ARGV[4] then
  return 0
end
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIREAT', KEYS[1], ARGV[5])
return 1
