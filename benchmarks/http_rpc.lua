-- wrk script for benchmarks/http_load.py: JSON-RPC 2.0 over HTTP/1.1, every reply checked.
--
--   wrk -t 1 -c 64 -d 5s -s benchmarks/http_rpc.lua http://127.0.0.1:PORT/
--
-- Every request is the same POST / with Content-Type: application/json and the body
--   {"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}
-- A response matches when its status is 200, its Content-Type is application/json
-- (parameters such as "; charset=utf-8" allowed) and its body is one JSON object with
-- exactly the members "jsonrpc":"2.0", "id":1 and "result":"0x10d4f", in any order, with
-- any whitespace between tokens. Anything else is a mismatch; the first one is kept
-- (status and up to 200 bytes of body) for the report.
--
-- done() prints one line, "JSONRPC_CHECK {json}", with the counts of every thread and
-- wrk's own summary: http_load.py treats a run with any mismatch, or any socket error,
-- timeout or non-2xx status in that summary, as invalid.

wrk.method = "POST"
wrk.path = "/"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'
wrk.headers["Content-Type"] = "application/json"

local WANT = { '"id":1', '"jsonrpc":"2.0"', '"result":"0x10d4f"' }
table.sort(WANT)

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   responses = 0
   mismatches = 0
   first_bad = ""
end

-- The members of a flat JSON object as 'key:value' strings with the whitespace around
-- tokens removed, sorted; nil when the body is not a flat object of simple members.
-- (The values expected here contain no comma, brace, quote or whitespace, so a plain
-- split is exact for a matching body and can only fail for a wrong one.)
local function members(body)
   local inner = body:match("^%s*{(.*)}%s*$")
   if inner == nil then
      return nil
   end
   local out = {}
   for m in (inner .. ","):gmatch("([^,]*),") do
      local k, v = m:match('^%s*("[^"]*")%s*:%s*(.-)%s*$')
      if k == nil then
         return nil
      end
      out[#out + 1] = k .. ":" .. v
   end
   table.sort(out)
   return out
end

local function matches(body)
   local got = members(body)
   if got == nil or #got ~= #WANT then
      return false
   end
   for i = 1, #WANT do
      if got[i] ~= WANT[i] then
         return false
      end
   end
   return true
end

local function content_type(headers)
   local v = headers["Content-Type"] or headers["content-type"]
   if v == nil then
      for k, w in pairs(headers) do
         if k:lower() == "content-type" then
            v = w
            break
         end
      end
   end
   return v and v:lower() or ""
end

local function ok_type(ct)
   return ct == "application/json" or ct:sub(1, 17) == "application/json;"
end

-- Bodies and Content-Type values already found right. A correct server sends the same
-- bytes every time, so each is parsed once; Lua strings are interned, so a lookup is a
-- hash of a pointer-sized key, which keeps wrk's cost per response small. A wrong value
-- is not remembered (it is checked again each time: the table cannot grow with a
-- server that sends a different wrong body every time).
local body_ok, type_ok = {}, {}

function response(status, headers, body)
   responses = responses + 1
   body = body or ""
   local ct = content_type(headers)
   local t = type_ok[ct]
   if t == nil then
      t = ok_type(ct)
      if t then
         type_ok[ct] = true
      end
   end
   local b = body_ok[body]
   if b == nil then
      b = matches(body)
      if b then
         body_ok[body] = true
      end
   end
   local ok = status == 200 and t and b
   if not ok then
      mismatches = mismatches + 1
      if first_bad == "" then
         first_bad = "status " .. status .. ", content-type '" .. ct .. "', body "
            .. (body or ""):sub(1, 200)
      end
   end
end

local function json_string(s)
   return '"' .. s:gsub('[%c"\\]', function(c)
      return string.format("\\u%04x", c:byte())
   end) .. '"'
end

function done(summary, latency, requests)
   local n, bad, sample = 0, 0, ""
   for _, t in ipairs(threads) do
      n = n + t:get("responses")
      bad = bad + t:get("mismatches")
      if sample == "" then
         sample = t:get("first_bad")
      end
   end
   local e = summary.errors
   io.write(string.format(
      'JSONRPC_CHECK {"responses":%d,"mismatches":%d,"first_mismatch":%s,'
         .. '"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,'
         .. '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,'
         .. '"p50_us":%d,"p99_us":%d,"threads":%d}\n',
      n, bad, json_string(sample), summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99), #threads))
end
