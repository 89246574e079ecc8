#!lua flags=no-writes,allow-oom
-- Read one customer's unflushed usage atomically, with the sequence numbers that tell the
-- PostgreSQL read which flushes to count (hazard 3: no double count, no miss mid-flush).
--
-- KEYS[1] customer's hot hash   KEYS[2] customer's pending hash
-- KEYS[3] shard's pending meta  KEYS[4] shard's seq counter
-- Reply: {hot fields (flat field/value list), pending fields (flat), pending seq or 0,
--         current seq or 0}

local hot = redis.call('HGETALL', KEYS[1])
local pending_seq = redis.call('HGET', KEYS[3], 'seq')
local pending = {}
if pending_seq then
  pending = redis.call('HGETALL', KEYS[2])
else
  pending_seq = '0'
end
local seq = redis.call('GET', KEYS[4]) or '0'
return {hot, pending, pending_seq, seq}
