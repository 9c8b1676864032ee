-- wrk script for bench/run: POST /increment with a random key out of 100,000, value 1, so
-- that wrk, a client independent of `tally load`, cross-checks its figures on the same route.
--
--   wrk -t2 -c64 -d10s --latency -s bench/post_increment.lua http://127.0.0.1:PORT
--
-- The key space matches `tally load --keys 100000`, so both clients make the server do the
-- same work: mostly increments of keys already pending, a hash lookup and no allocation.

local keys = 100000
local thread_count = 0

-- Runs once per thread in the main Lua state: hands each thread its own number, so that the
-- threads' random streams differ even when they start within the same second.
function setup(thread)
   thread:set("thread_number", thread_count)
   thread_count = thread_count + 1
end

function init(args)
   math.randomseed(os.time() * 1000 + (thread_number or 0) * 7919)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   local body = '{"key":"wrk-' .. math.random(0, keys - 1) .. '","value":1}'
   return wrk.format(nil, "/increment", nil, body)
end
