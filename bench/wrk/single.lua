-- POST /api/v1/usage: one event per request, a unique idempotency key per request
-- (run nonce, wrk thread id, per-thread counter). args: token customers nonce
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

local headers, customers, nonce
local counter = 0

function init(args)
  headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[1]}
  customers = tonumber(args[2])
  nonce = args[3]
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"customer_id":"c-%d","resource_type":"api_call","quantity":1,' ..
    '"idempotency_key":"evt-%s-%d-%d"}', (counter * 7 + tid) % customers, nonce, tid, counter)
  return wrk.format("POST", "/api/v1/usage", headers, body)
end
