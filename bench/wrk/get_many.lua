-- GET the bills of many customers, a random one per request (<prefix><5-digit number>,
-- 1..count), with a bearer key. args: token prefix count
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

local headers, prefix, count

function init(args)
  headers = {["Authorization"] = "Bearer " .. args[1]}
  prefix = args[2]
  count = tonumber(args[3])
  math.randomseed(os.time() * 100 + (tid or 0))
end

function request()
  return wrk.format("GET", string.format("%s%05d", prefix, math.random(1, count)), headers)
end
