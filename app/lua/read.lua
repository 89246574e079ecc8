#!lua flags=no-writes,allow-oom
-- Read customers' unflushed usage atomically, with the sequence numbers that tell the
-- PostgreSQL read which flushes to count (hazard 3: no double count, no miss mid-flush).
-- One call reads one customer or many (concurrent bills share a call): each customer's
-- part is as exact as if it were read alone, since the whole script is atomic.
--
-- Four keys per customer, in order:
--   customer's hot hash, customer's pending hash, shard's pending meta, shard's seq counter
-- Reply: per customer, {hot fields (flat field/value list), pending fields (flat),
--         pending seq or 0, current seq or 0}

local replies = {}
for k = 1, #KEYS, 4 do
  local hot = redis.call('HGETALL', KEYS[k])
  local pending_seq = redis.call('HGET', KEYS[k + 2], 'seq')
  local pending = {}
  if pending_seq then
    pending = redis.call('HGETALL', KEYS[k + 1])
  else
    pending_seq = '0'
  end
  local seq = redis.call('GET', KEYS[k + 3]) or '0'
  replies[#replies + 1] = {hot, pending, pending_seq, seq}
end
return replies
