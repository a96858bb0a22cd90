// autocannon (npm) with the same contract as bench/loadgen.py's `--spec FILE --wait-for-go`:
// reads {targets: [{url, token, body}], requests, connections}, prints READY, starts on a line
// of stdin, prints one JSON result with its own CPU per request (process.cpuUsage over the run).
// Each connection cycles through the targets' requests, so every API key takes an equal share.
// Needs NODE_PATH naming a node_modules with autocannon (bench/queue_http.py installs it).
"use strict";
const fs = require("fs");
const readline = require("readline");
const autocannon = require("autocannon");

const spec = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const first = new URL(spec.targets[0].url);
const requests = spec.targets.map((t) => {
  const url = new URL(t.url);
  const headers = { "content-type": "application/json" };
  if (t.token) headers.authorization = `Bearer ${t.token}`;
  return {
    method: t.body === null || t.body === undefined ? "GET" : "POST",
    path: url.pathname + url.search,
    headers,
    body: t.body === null || t.body === undefined ? undefined : t.body,
  };
});

function monotonicSeconds() {
  return Number(process.hrtime.bigint()) / 1e9; // CLOCK_MONOTONIC, as Python's time.monotonic
}

console.log("READY");
const rl = readline.createInterface({ input: process.stdin });
rl.once("line", () => {
  rl.close();
  process.stdin.destroy(); // nothing more to read; an open stdin would keep node alive
  const cpuBefore = process.cpuUsage();
  const began = monotonicSeconds();
  const statuses = {};
  let last = began;
  const instance = autocannon(
    {
      url: `${first.protocol}//${first.host}`,
      connections: spec.connections,
      pipelining: 1,
      amount: spec.requests,
      requests,
      timeout: 30,
    },
    (err, result) => {
      if (err) throw err;
      const seconds = monotonicSeconds() - began;
      const cpu = process.cpuUsage(cpuBefore);
      const done = Object.values(statuses).reduce((a, b) => a + b, 0);
      console.log(
        JSON.stringify({
          generator: "autocannon",
          requests: done,
          connections: spec.connections,
          seconds: Number(seconds.toFixed(4)),
          rate: Number((done / seconds).toFixed(1)),
          statuses,
          client_cpu_ms_per_request: Number(((cpu.user + cpu.system) / 1000 / Math.max(done, 1)).toFixed(4)),
          latency_ms: { p50: result.latency.p50, p99: result.latency.p99 },
          first_sent: began,
          last_response: last,
          errors: result.errors,
          timeouts: result.timeouts,
        }),
      );
    },
  );
  instance.on("response", (client, statusCode) => {
    statuses[statusCode] = (statuses[statusCode] || 0) + 1;
    last = monotonicSeconds();
  });
});
