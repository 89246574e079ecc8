-- POST /api/v1/usage/batch: `size` events per request, each with a unique idempotency key.
-- args: token size customers nonce
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

local headers, size, customers, nonce
local counter = 0

function init(args)
  headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. args[1]}
  size = tonumber(args[2])
  customers = tonumber(args[3])
  nonce = args[4]
end

function request()
  local parts = {}
  for i = 1, size do
    counter = counter + 1
    parts[i] = string.format(
      '{"customer_id":"c-%d","resource_type":"api_call","quantity":1,' ..
      '"idempotency_key":"evt-%s-%d-%d"}', (counter * 7 + tid) % customers, nonce, tid, counter)
  end
  return wrk.format("POST", "/api/v1/usage/batch", headers,
                    '{"events":[' .. table.concat(parts, ",") .. ']}')
end
