#!lua
-- Ingest: idempotency check, bounds check, then counting, for many events in one atomic call.
-- No allow-oom flag: under maxmemory Redis refuses this script before it runs (nothing is
-- half-applied; the API answers 503 and the client retries).
--
-- KEYS: every key the events refer to (hot hashes, pending hashes, dirty sets, first-write
--       markers, idempotency window hashes), referenced by 1-based index from ARGV.
-- ARGV[1] = number of events N
-- ARGV[2] = now in ms (marks the first undrained write of a shard)
-- ARGV[3] = unix second at which the write window's idempotency hashes expire
-- ARGV[4] = index of the write window's key counter (approximate count for metrics)
-- then per event, 13 values:
--   hot_idx pend_idx dirty_idx first_idx customer field micro
--   idem_field fingerprint write_win_idx check_idx1 check_idx2 check_idx3
--   (idem_field "" when the event has no idempotency key; check_idx 0 when unused)
-- Reply: array of N status codes: 1 accepted, 2 duplicate, 3 conflict, 4 quantity_overflow.
--
-- Amounts are decimal strings of integer micro-units up to 10^18. Lua numbers are doubles
-- (exact only to 2^53), so sums are kept as {hi, lo} in base 10^9: each part stays exact.

local BASE = 1000000000
local LIMIT_HI, LIMIT_LO = 1000000000, 0   -- 10^12 units = 10^18 micro-units
local PER = 13

local function split(s)
  local len = string.len(s)
  if len <= 9 then return {0, tonumber(s)} end
  return {tonumber(string.sub(s, 1, len - 9)), tonumber(string.sub(s, len - 8))}
end

local function add(a, b)
  local lo = a[2] + b[2]
  local hi = a[1] + b[1]
  if lo >= BASE then lo = lo - BASE; hi = hi + 1 end
  return {hi, lo}
end

local function over_limit(x)
  return x[1] > LIMIT_HI or (x[1] == LIMIT_HI and x[2] > LIMIT_LO)
end

local function tostr(x)
  if x[1] > 0 then return string.format('%d%09d', x[1], x[2]) end
  return string.format('%d', x[2])
end

local n = tonumber(ARGV[1])
local now_ms = ARGV[2]
local expire_at = ARGV[3]
local counter_idx = tonumber(ARGV[4])

local statuses = {}
local seen = {}       -- idempotency field (per window key) -> fingerprint, accepted in this call
local sums = {}       -- hot_idx|field -> {total, delta, hot_idx, dirty_idx, first_idx, customer, field}
local sum_order = {}
local idem_writes = {}

-- Phase 1: decide every event. Nothing is written until all are decided.
for i = 1, n do
  local b = 4 + (i - 1) * PER
  local hot_idx, pend_idx = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local field, micro = ARGV[b + 6], ARGV[b + 7]
  local idem, fp = ARGV[b + 8], ARGV[b + 9]
  local win = tonumber(ARGV[b + 10])
  local status = 1
  local seen_key
  if idem ~= '' then
    seen_key = win .. '|' .. idem
    local prior = seen[seen_key]
    if prior == nil then
      for c = 11, 13 do
        local idx = tonumber(ARGV[b + c])
        if idx > 0 then
          local stored = redis.call('HGET', KEYS[idx], idem)
          if stored then prior = stored; break end
        end
      end
    end
    if prior ~= nil then
      if prior == fp then status = 2 else status = 3 end
    end
  end
  if status == 1 then
    local sk = hot_idx .. '|' .. field
    local s = sums[sk]
    if s == nil then
      local hot = redis.call('HGET', KEYS[hot_idx], field) or '0'
      local pend = redis.call('HGET', KEYS[pend_idx], field) or '0'
      s = {add(split(hot), split(pend)), {0, 0}, hot_idx, tonumber(ARGV[b + 3]),
           tonumber(ARGV[b + 4]), ARGV[b + 5], field}
      sums[sk] = s
      sum_order[#sum_order + 1] = sk
    end
    local q = split(micro)
    local total = add(s[1], q)
    if over_limit(total) then
      status = 4
    else
      s[1] = total
      s[2] = add(s[2], q)
      if idem ~= '' then
        seen[seen_key] = fp
        idem_writes[#idem_writes + 1] = {win, idem, fp}
      end
    end
  end
  statuses[i] = status
end

-- Phase 2: apply. Only commands that cannot fail on valid arguments remain.
for _, sk in ipairs(sum_order) do
  local s = sums[sk]
  if s[2][1] > 0 or s[2][2] > 0 then
    redis.call('HINCRBY', KEYS[s[3]], s[7], tostr(s[2]))
    redis.call('SADD', KEYS[s[4]], s[6])
    redis.call('SET', KEYS[s[5]], now_ms, 'NX')
  end
end
local expiring = {}
for _, w in ipairs(idem_writes) do
  redis.call('HSET', KEYS[w[1]], w[2], w[3])
  if not expiring[w[1]] then
    expiring[w[1]] = true
    redis.call('EXPIREAT', KEYS[w[1]], expire_at)
  end
end
if #idem_writes > 0 then
  redis.call('INCRBY', KEYS[counter_idx], #idem_writes)
  redis.call('EXPIREAT', KEYS[counter_idx], expire_at)
end
return statuses
