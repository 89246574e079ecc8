-- GET one path with a bearer key, each connection pausing between its requests, so the
-- offered load is bounded instead of "as fast as answers come". args: token path pause_ms
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

local req, pause

function init(args)
  req = wrk.format("GET", args[2], {["Authorization"] = "Bearer " .. args[1]})
  pause = tonumber(args[3])
end

function delay()
  return pause
end

function request()
  return req
end
