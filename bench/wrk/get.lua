-- GET one path (the live bill) with a bearer key. args: token path
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

local req

function init(args)
  req = wrk.format("GET", args[2], {["Authorization"] = "Bearer " .. args[1]})
end

function request()
  return req
end
