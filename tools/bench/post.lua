-- wrk script for tools/bench: POST a small chat completion and print a
-- machine-readable summary line (latencies in microseconds).
-- With BENCH_AUTH_KEY set (bench --auth), every request carries
-- "Authorization: Bearer <key>".
wrk.method = "POST"
wrk.body   = '{"model":"bench-model","messages":[{"role":"user","content":"hello"}]}'
wrk.headers["Content-Type"] = "application/json"
local auth_key = os.getenv("BENCH_AUTH_KEY")
if auth_key and auth_key ~= "" then
   wrk.headers["Authorization"] = "Bearer " .. auth_key
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"mean_us":%.1f,"max_us":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency.mean, latency.max))
end
