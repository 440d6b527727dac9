-- wrk script of the load driver's `manifest GET (wrk)` phase (benches/load/src/lean.rs).
-- The request (method, path, headers) is given on wrk's command line; this script only
-- prints the result as one JSON line after wrk's own report, so the driver need not
-- parse wrk's human-readable units. Latencies are in microseconds.
--
-- HEAD is measured with `ab -k -i` instead: wrk's response parser waits for the body
-- that a HEAD response's Content-Length announces, so every HEAD would time out.

done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      '{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99)))
end
