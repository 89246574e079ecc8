#!lua
-- Ingest: idempotency check, bounds check, then counting, for many events in one atomic call.
-- No allow-oom flag: under maxmemory Redis refuses this script before it runs (nothing is
-- half-applied; the API answers 503 and the client retries).
--
-- KEYS: every key the events refer to (hot hashes, month-total hashes, dirty sets,
--       first-write markers, idempotency window hashes), referenced by 1-based index from ARGV.
-- ARGV[1] = number of events N
-- ARGV[2] = now in ms (marks the first undrained write of a shard)
-- ARGV[3] = unix second at which the write window's idempotency hashes expire
-- ARGV[4] = index of the write window's key counter (approximate count for metrics)
-- then per event, 15 values:
--   hot_idx total_idx dirty_idx first_idx customer field micro resource total_expire_at
--   idem_field fingerprint write_win_idx check_idx1 check_idx2 check_idx3
--   (idem_field "" when the event has no idempotency key; check_idx 0 when unused)
-- Reply: array of N status codes: 1 accepted, 2 duplicate, 3 conflict, 4 quantity_overflow;
--        or, when the bound of some event cannot be decided from Redis alone,
--        {0, i, j, ...}: the 1-based indexes of those events, and nothing is written.
--
-- The bound (10^12 units per customer, resource type and hour, flushed or not) is checked
-- against totals that never go down when a flush moves usage to PostgreSQL. The customer's
-- month-total hash (one per calendar month, expiring after the month can take no event)
-- holds, per resource type, every unit accepted for that month (field <resource>), and, for
-- hours "seeded" by seed.lua, every unit accepted for that hour (field <resource>|<hour>).
-- An hour holds at most its month, so an event whose month stays within the bound is
-- accepted at once; past it, only a seeded hour decides, and an unseeded one is reported.
-- One HMGET per (hour, resource type) reads both.
--
-- Amounts are decimal strings of integer micro-units up to 10^18. Lua numbers are doubles
-- (exact only to 2^53), so sums are kept as {hi, lo} in base 10^9: each part stays exact.

local BASE = 1000000000
local LIMIT_HI, LIMIT_LO = 1000000000, 0   -- 10^12 units = 10^18 micro-units
local CAP_HI = 2000000000                  -- month totals saturate at 2 * 10^18
local PER = 15

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
local undecided = {}  -- indexes of events whose hour must be seeded first
local seen = {}       -- idempotency field (per window key) -> fingerprint, accepted in this call
-- One record per (customer, resource type, hour) and per (customer, resource type, month):
local buckets = {}    -- hot_idx|field -> {seeded hour total or false, delta, hot_idx,
                      --                   dirty_idx, first_idx, customer, field, total_idx}
local bucket_order = {}
local months = {}     -- total_idx|resource -> {total, delta, total_idx, resource, expire_at}
local month_order = {}
local idem_writes = {}

-- Phase 1: decide every event. Nothing is written until all are decided.
for i = 1, n do
  local b = 4 + (i - 1) * PER
  local hot_idx, total_idx = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local field, micro, resource = ARGV[b + 6], ARGV[b + 7], ARGV[b + 8]
  local idem, fp = ARGV[b + 10], ARGV[b + 11]
  local win = tonumber(ARGV[b + 12])
  local status = 1
  local seen_key
  if idem ~= '' then
    seen_key = win .. '|' .. idem
    local prior = seen[seen_key]
    if prior == nil then
      for c = 13, 15 do
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
    local mk = total_idx .. '|' .. resource
    local hk = hot_idx .. '|' .. field
    local m, h = months[mk], buckets[hk]
    if h == nil then
      local stored = redis.call('HMGET', KEYS[total_idx], resource, field)
      h = {stored[2] and split(stored[2]), {0, 0}, hot_idx, tonumber(ARGV[b + 3]),
           tonumber(ARGV[b + 4]), ARGV[b + 5], field, total_idx}
      buckets[hk] = h
      bucket_order[#bucket_order + 1] = hk
      if m == nil then
        m = {split(stored[1] or '0'), {0, 0}, total_idx, resource, ARGV[b + 9]}
        months[mk] = m
        month_order[#month_order + 1] = mk
      end
    end
    local q = split(micro)
    local month_total = add(m[1], q)
    if h[1] then
      local hour_total = add(h[1], q)
      if over_limit(hour_total) then status = 4 else h[1] = hour_total end
    elseif over_limit(month_total) then
      status = 0
      undecided[#undecided + 1] = i
    end
    if status == 1 then
      m[1] = month_total
      m[2] = add(m[2], q)
      h[2] = add(h[2], q)
      if idem ~= '' then
        seen[seen_key] = fp
        idem_writes[#idem_writes + 1] = {win, idem, fp}
      end
    end
  end
  statuses[i] = status
end

if #undecided > 0 then
  table.insert(undecided, 1, 0)
  return undecided
end

-- Phase 2: apply. Only commands that cannot fail on valid arguments remain.
-- Hour totals stay within 10^18 and month totals within the cap; a hot field holds part of
-- its hour (plus, at most, units a Tally without this check wrote): far from 2^63.
for _, hk in ipairs(bucket_order) do
  local h = buckets[hk]
  if h[2][1] > 0 or h[2][2] > 0 then
    redis.call('HINCRBY', KEYS[h[3]], h[7], tostr(h[2]))
    redis.call('SADD', KEYS[h[4]], h[6])
    redis.call('SET', KEYS[h[5]], now_ms, 'NX')
    if h[1] then redis.call('HINCRBY', KEYS[h[8]], h[7], tostr(h[2])) end
  end
end
for _, mk in ipairs(month_order) do
  local m = months[mk]
  if m[2][1] > 0 or m[2][2] > 0 then
    -- Set, not incremented: past the bound the month total saturates at CAP (past it, every
    -- hour is decided by its own seeded total), so it never overflows a 64-bit integer.
    local total = m[1]
    if total[1] >= CAP_HI then total = {CAP_HI, 0} end
    -- A new field sets the hash's expiry (one instant per month: set once, it holds).
    if redis.call('HSET', KEYS[m[3]], m[4], tostr(total)) == 1 then
      redis.call('EXPIREAT', KEYS[m[3]], m[5])
    end
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
