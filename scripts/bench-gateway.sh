#!/usr/bin/env bash
# Load test of the serving gateway: requests/s and p50/p99 latency through `capstan serve`'s
# gateway against the same model server reached directly, in one run, with wrk (apt: wrk).
#
# The model server is the quick start's real one (examples/quickstart/models/churn/serve.py,
# trained and deployed by `capstan apply`), found through its process environment.
#   scripts/bench-gateway.sh               # 10 s per measurement, 8 connections
#   DURATION=30s CONNECTIONS=32 scripts/bench-gateway.sh
#   SCRATCH=.build-gw scripts/bench-gateway.sh   # build in another scratch folder (default .build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
duration="${DURATION:-10s}"
connections="${CONNECTIONS:-8}"
scratch="${SCRATCH:-.build}"
threads=$(( connections < 2 ? connections : 2 ))
command -v wrk >/dev/null || { echo "bench-gateway: wrk is missing (apt-get install wrk)" >&2; exit 1; }

echo "==> building capstan (release)" >&2
swift build -c release --scratch-path "$scratch" --product capstan >/dev/null
capstan="$(swift build -c release --scratch-path "$scratch" --show-bin-path)/capstan"

work="$(mktemp -d "${TMPDIR:-/tmp}/capstan-bench-gateway.XXXXXX")"
agent_pid=""
cleanup() {
  if [[ -n "$agent_pid" ]]; then kill -TERM "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
  [[ "${KEEP:-0}" == 1 ]] || rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

gateway="$(free_port)"; admin="$(free_port)"
cp -R "$root/examples/quickstart" "$work/repo"
sed -i "s#http://127.0.0.1:7070#http://127.0.0.1:$admin#" "$work/repo/capstan.yaml"
git -C "$work/repo" init -q -b main
git -C "$work/repo" -c user.name=bench -c user.email=bench@example.invalid add -A
git -C "$work/repo" -c user.name=bench -c user.email=bench@example.invalid commit -q -m bench
"$capstan" serve --gateway "127.0.0.1:$gateway" --admin "127.0.0.1:$admin" --state-dir "$work/agent" >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null && break; sleep 0.1; done
CAPSTAN_STATE_DIR="$work/state" "$capstan" apply --repo "$work/repo" >/dev/null

body='{"tenure_months": 3, "monthly_charges": 99.5, "support_calls": 4}'
for _ in $(seq 1 150); do
  [[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d "$body" "http://127.0.0.1:$gateway/churn-prod/predict")" == 200 ]] && break
  sleep 0.2
done
# The model server's port, from the environment the agent gave it.
direct=""
for env in /proc/[0-9]*/environ; do
  if (tr '\0' '\n' <"$env") 2>/dev/null | grep -qx "CAPSTAN_DEPLOYMENT=churn-prod"; then
    direct="$( (tr '\0' '\n' <"$env") 2>/dev/null | sed -n 's/^PORT=//p')"
    break
  fi
done
[[ -n "$direct" ]] || { echo "bench-gateway: the model server was not found" >&2; exit 1; }

cat >"$work/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
EOF

measure() {  # url -> "rps p50 p99"
  wrk -t"$threads" -c"$connections" -d"$duration" --latency -s "$work/post.lua" "$1" >"$work/wrk.out" 2>&1
  local rps p50 p99 errors
  rps="$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")"
  p50="$(awk '$1=="50%" {print $2}' "$work/wrk.out")"
  p99="$(awk '$1=="99%" {print $2}' "$work/wrk.out")"
  errors="$(awk '/Non-2xx|Socket errors/ {print}' "$work/wrk.out" | tr '\n' ' ')"
  echo "$rps $p50 $p99 ${errors:-none}"
}

echo "==> warming up" >&2
wrk -t1 -c2 -d2s -s "$work/post.lua" "http://127.0.0.1:$gateway/churn-prod/predict" >/dev/null 2>&1 || true
read -r d_rps d_p50 d_p99 d_err <<<"$(measure "http://127.0.0.1:$direct/predict")"
read -r g_rps g_p50 g_p99 g_err <<<"$(measure "http://127.0.0.1:$gateway/churn-prod/predict")"

printf '\n%-10s %12s %10s %10s  %s\n' "path" "requests/s" "p50" "p99" "errors"
printf '%-10s %12s %10s %10s  %s\n' "direct" "$d_rps" "$d_p50" "$d_p99" "$d_err"
printf '%-10s %12s %10s %10s  %s\n' "gateway" "$g_rps" "$g_p50" "$g_p99" "$g_err"
python3 - "$d_rps" "$g_rps" "$d_p50" "$g_p50" <<'EOF'
import sys
def ms(t):
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if t.endswith(unit): return float(t[: -len(unit)]) * f
    return float(t)
d, g = float(sys.argv[1]), float(sys.argv[2])
print(f"\nthroughput through the gateway: {100 * g / d:.0f}% of direct; added p50: {ms(sys.argv[4]) - ms(sys.argv[3]):.2f} ms")
print("targets: added p50 under 1 ms, throughput at least 70% of direct")
EOF
echo "(wrk -t$threads -c$connections -d$duration, POST /predict of the quick start's churn model; 2 cores shared by wrk, the gateway and the model server)"
