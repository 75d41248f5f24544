#!/usr/bin/env bash
# The controller's figures (issue 7), measured on the quick-start example with `capstan run --serve`:
#   1. time from a signed webhook to the start of the pass it triggers (target < 200 ms), over
#      WEBHOOKS sends (default 20): the sender's clock before the request vs the `pass started`
#      log line's timestamp (same machine, same clock);
#   2. idle CPU and memory of the controller process over IDLE seconds (default 600) with
#      nothing to do (targets: < 1% of one core, < 50 MiB resident): CPU from /proc/PID/stat,
#      resident memory (VmRSS) sampled every 5 s; at the end its split into private (RssAnon)
#      and file-backed pages (RssFile: the binary's and the Swift runtime's code, shared and
#      reclaimable), and the proportional set size (PSS).
#   WITH_SERVE=0 leaves out --serve (the controller alone; the quick start's Deployment is then
#   reported ServingUnavailable, which changes nothing).
#   The binary is the one we ship, built by scripts/build-release.sh (static runtime, code laid out
#   by scripts/capstan.order); CAPSTAN_BIN=path measures another build instead, e.g. a plain
#   `swift build -c release` one, for comparison.
#   Before the idle period the status page, /metrics and /api/v1/status are each loaded once, so
#   the figure includes the code that serves them.
#   scripts/bench-controller.sh
#   IDLE=60 WEBHOOKS=10 scripts/bench-controller.sh      # shorter
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
idle="${IDLE:-600}"
webhooks="${WEBHOOKS:-20}"
if [[ -n "${CAPSTAN_BIN:-}" ]]; then
  capstan="$CAPSTAN_BIN"
else
  echo "==> building capstan (scripts/build-release.sh)" >&2
  capstan="$(scripts/build-release.sh)"
fi
echo "==> binary: $capstan" >&2

work="$(mktemp -d "${TMPDIR:-/tmp}/capstan-bench-controller.XXXXXX")"
pid=""
cleanup() {
  if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  [[ "${KEEP:-0}" == 1 ]] || rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http="$(free_port)"; gateway="$(free_port)"; admin="$(free_port)"

cp -R "$root/examples/quickstart" "$work/repo"
sed -i "s#http://127.0.0.1:7070#http://127.0.0.1:$admin#" "$work/repo/capstan.yaml"
git -C "$work/repo" init -q -b main
git -C "$work/repo" -c user.name=bench -c user.email=bench@example.invalid add -A
git -C "$work/repo" -c user.name=bench -c user.email=bench@example.invalid commit -q -m bench

export BENCH_WEBHOOK_SECRET="bench-secret-$RANDOM$RANDOM"
"$capstan" run --repo "$work/repo" --state-dir "$work/state" --http "127.0.0.1:$http" \
  $([[ "${WITH_SERVE:-1}" == 1 ]] && echo --serve --gateway "127.0.0.1:$gateway" --admin "127.0.0.1:$admin") \
  --interval 1m --resync 10m --webhook-secret-env BENCH_WEBHOOK_SECRET --log-format json 2>"$work/run.log" &
pid=$!
for _ in $(seq 1 600); do
  [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/readyz")" == 200 ]] && break
  sleep 0.1
done
[[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/readyz")" == 200 ]] || { echo "the controller never became ready" >&2; cat "$work/run.log" >&2; exit 1; }
# Let the endpoint settle (the tick passes while the model server starts).
sleep 15

echo "==> webhook to pass start, $webhooks signed webhooks" >&2
python3 - "$http" "$work/run.log" "$webhooks" <<'EOF'
import hashlib, hmac, http.client, json, os, statistics, sys, time
from datetime import datetime
port, log, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
secret = os.environ["BENCH_WEBHOOK_SECRET"].encode()

def lines(msg):
    out = []
    with open(log) as f:
        for line in f:
            try:
                o = json.loads(line)
            except ValueError:
                continue
            if o.get("msg", "").startswith(msg):
                out.append(o)
    return out

def ts(o):
    return datetime.fromisoformat(o["ts"].replace("Z", "+00:00")).timestamp()

delays = []
body = json.dumps({"ref": "refs/heads/main"}).encode()
sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
for i in range(count):
    before = len(lines("pass started"))
    finished = len(lines("pass finished"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent = time.time()
    conn.request("POST", "/hooks/git", body=body, headers={"X-Hub-Signature-256": sig, "X-GitHub-Event": "push", "Content-Type": "application/json"})
    status = conn.getresponse().status
    conn.close()
    assert status == 202, f"webhook answered {status}"
    deadline = time.time() + 10
    while len(lines("pass started")) <= before and time.time() < deadline:
        time.sleep(0.005)
    started = lines("pass started")
    assert len(started) > before, "no pass started within 10 s"
    delays.append((ts(started[before]) - sent) * 1000)
    while len(lines("pass finished")) + len(lines("pass failed")) <= finished and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
delays.sort()
print(f"webhook -> pass start: median {statistics.median(delays):.1f} ms, p90 {delays[int(len(delays) * 0.9) - 1]:.1f} ms, "
      f"max {delays[-1]:.1f} ms over {len(delays)} webhooks (log timestamps have 1 ms resolution)")
EOF

for path in / /metrics /api/v1/status; do curl -s -o /dev/null "http://127.0.0.1:$http$path"; done
echo "==> idle for $idle s (nothing to do; one poll a minute)" >&2
python3 - "$pid" "$idle" <<'EOF'
import os, sys, time
pid, duration = int(sys.argv[1]), int(sys.argv[2])
tick = os.sysconf("SC_CLK_TCK")
def cpu():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime
def status(key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
def rss():
    return status("VmRSS")
def pss():
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
start_cpu, start = cpu(), time.time()
peak = rss()
samples = [peak]
while time.time() - start < duration:
    time.sleep(5)
    r = rss(); samples.append(r); peak = max(peak, r)
used = cpu() - start_cpu
elapsed = time.time() - start
print(f"idle {elapsed:.0f} s: CPU {used:.2f} s = {100 * used / elapsed:.3f}% of one core; "
      f"resident memory (RSS) {samples[0]:.1f} MiB at start, {samples[-1]:.1f} MiB at end, peak {peak:.1f} MiB; "
      f"at the end: private (RssAnon) {status('RssAnon'):.1f} MiB, file-backed code and data (RssFile) {status('RssFile'):.1f} MiB, "
      f"proportional share (PSS) {pss():.1f} MiB")
EOF
