-- wrk script: POST /increment as bench/post_increment.lua does, each request with an
-- Idempotency-Key of its own (the thread's number and a counter), so that every request is
-- new and applied once: what a request with the header costs.
--
--   wrk -t2 -c64 -d10s --latency -s bench/post_increment_idempotent.lua http://127.0.0.1:PORT

local keys = 100000
local thread_count = 0

function setup(thread)
   thread:set("thread_number", thread_count)
   thread_count = thread_count + 1
end

function init(args)
   math.randomseed(os.time() * 1000 + (thread_number or 0) * 7919)
   run = tostring(os.time()) .. "-" .. tostring(math.random(0, 1000000000))
   sent = 0
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   sent = sent + 1
   local body = '{"key":"wrk-' .. math.random(0, keys - 1) .. '","value":1}'
   local headers = {
      ["Content-Type"] = "application/json",
      ["Idempotency-Key"] = run .. "-" .. (thread_number or 0) .. "-" .. sent,
   }
   return wrk.format(nil, "/increment", headers, body)
end
