#!lua flags=allow-oom
-- Ack a committed flush: delete the pending data, but only if it is still the flush the
-- caller committed (another flusher may have acked it and drained a new one since).
--
-- KEYS[1] pending-customers set   KEYS[2] pending meta hash
-- ARGV[1] pending key prefix      ARGV[2] flush id that was committed
-- The per-customer hot/pending hashes are named from ARGV prefixes + set members, not
-- declared in KEYS (their number is unbounded); they share the tenant's {hash tag} with
-- every declared key, so they live in the same cluster slot.
-- Reply: 1 deleted, 0 not the current pending flush (nothing done)

if redis.call('HGET', KEYS[2], 'flush_id') ~= ARGV[2] then
  return 0
end
local customers = redis.call('SMEMBERS', KEYS[1])
local batch = {}
for _, c in ipairs(customers) do
  batch[#batch + 1] = ARGV[1] .. c
  if #batch == 500 then
    redis.call('UNLINK', unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('UNLINK', unpack(batch)) end
redis.call('UNLINK', KEYS[1])
redis.call('DEL', KEYS[2])
return 1
