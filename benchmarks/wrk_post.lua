-- wrk script of benchmarks/serving.py: GET /ping, or POST /invocations for a random known user,
-- plain or with fresh events (random items over the hour before NOW, in time order) and a context.
--
--   wrk ... -s benchmarks/wrk_post.lua http://127.0.0.1:PORT -- invocations NUM_USERS K
--   wrk ... -s benchmarks/wrk_post.lua http://127.0.0.1:PORT -- fresh NUM_USERS K NUM_ITEMS EVENTS NOW
--   wrk ... -s benchmarks/wrk_post.lua http://127.0.0.1:PORT -- ping
--
-- Users are "u0" .. "u<NUM_USERS-1>", as in the benchmark's synthetic artifacts. done() prints one
-- line "WRK_RESULT {json}" with exact counts and latency percentiles (microseconds) for the caller.

local mode = "ping"
local num_users = 1
local k = 10
local num_items = 1
local fresh_events = 50
local now = 0
local devices = { "desktop", "mobile", "tv" }
local ping_request = nil
local headers = { ["Content-Type"] = "application/json", ["Accept"] = "application/json" }

local counter = 0
function setup(thread)
   -- Each wrk thread has its own Lua state: give each a distinct random seed.
   counter = counter + 1
   thread:set("thread_id", counter)
end


-- Fresh bodies are made in init, not per request: 50 events of string formatting per request
-- made the load generator, which shares the server's cores, take CPU from the server it measures.
local fresh_pool = {}
local FRESH_POOL_SIZE = 2000

local function fresh_request()
   local user = math.random(0, num_users - 1)
   local events = {}
   local t = now - 3600
   for i = 1, fresh_events do
      t = t + math.random() * 3600 / fresh_events
      events[i] = string.format('{"item_id":"i%d","timestamp":%.1f}', math.random(0, num_items - 1), t)
   end
   local body = string.format(
      '{"instances":[{"user_id":"u%d","k":%d,"history":[%s],"context":{"device":"%s","timestamp":%.1f}}]}',
      user, k, table.concat(events, ","), devices[math.random(1, #devices)], now)
   return wrk.format("POST", "/invocations", headers, body)
end

function init(args)
   mode = args[1] or "ping"
   num_users = tonumber(args[2] or "1")
   k = tonumber(args[3] or "10")
   num_items = tonumber(args[4] or "1")
   fresh_events = tonumber(args[5] or "50")
   now = tonumber(args[6] or "0")
   math.randomseed(os.time() * 1000 + (thread_id or 0))
   ping_request = wrk.format("GET", "/ping")
   if mode == "fresh" then
      for i = 1, FRESH_POOL_SIZE do
         fresh_pool[i] = fresh_request()
      end
   end
end

function request()
   if mode == "ping" then
      return ping_request
   end
   if mode == "fresh" then
      return fresh_pool[math.random(1, FRESH_POOL_SIZE)]
   end
   local user = math.random(0, num_users - 1)
   local body = string.format('{"instances":[{"user_id":"u%d","k":%d}]}', user, k)
   return wrk.format("POST", "/invocations", headers, body)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
      '"max_us":%d,"mean_us":%.1f,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
      '"status_errors":%d,"timeouts":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      e.connect, e.read, e.write, e.status, e.timeout))
end
