-- wrk script for bench_serving.py: POST one fixed V2 inference body, report a JSON summary.
-- usage: wrk -s bench_serving.lua URL -- BODY_FILE [JSON_HEADER_LENGTH]
-- With JSON_HEADER_LENGTH the body uses the binary tensor data extension.
local body_file = nil

function init(args)
  body_file = args[1]
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if args[2] then
    wrk.headers["Content-Type"] = "application/octet-stream"
    wrk.headers["Inference-Header-Content-Length"] = args[2]
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'ROOST_RESULT {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors.status,
    errors.connect + errors.read + errors.write + errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
