#!lua flags=allow-oom
-- Drain one shard: freeze its hot data as the pending flush, or resume the pending one.
-- allow-oom: draining is what frees memory, so it must run when Redis is full.
--
-- KEYS[1] dirty set   KEYS[2] pending-customers set   KEYS[3] pending meta hash
-- KEYS[4] seq counter KEYS[5] first-write marker
-- ARGV[1] hot key prefix  ARGV[2] pending key prefix  ARGV[3] new flush id  ARGV[4] now ms
-- The per-customer hot/pending hashes are named from ARGV prefixes + set members, not
-- declared in KEYS (their number is unbounded); they share the tenant's {hash tag} with
-- every declared key, so they live in the same cluster slot.
-- Reply: {} when there is nothing to flush, else
--        {seq, flush_id, fields, drained_ms, oldest_ms, resumed (0|1)}

local meta = redis.call('HMGET', KEYS[3], 'seq', 'flush_id', 'fields', 'drained_ms', 'oldest_ms')
if meta[1] then
  return {meta[1], meta[2], meta[3], meta[4], meta[5], 1}
end
if redis.call('SCARD', KEYS[1]) == 0 then
  return {}
end
local seq = redis.call('INCR', KEYS[4])
local fields = 0
local customers = redis.call('SMEMBERS', KEYS[1])
for _, c in ipairs(customers) do
  local hot = ARGV[1] .. c
  local count = redis.call('HLEN', hot)
  if count > 0 then
    fields = fields + count
    redis.call('RENAME', hot, ARGV[2] .. c)
  end
end
redis.call('RENAME', KEYS[1], KEYS[2])
local oldest = redis.call('GET', KEYS[5]) or ARGV[4]
redis.call('DEL', KEYS[5])
redis.call('HSET', KEYS[3], 'seq', seq, 'flush_id', ARGV[3], 'fields', fields,
           'drained_ms', ARGV[4], 'oldest_ms', oldest)
return {tostring(seq), ARGV[3], tostring(fields), ARGV[4], oldest, 0}
