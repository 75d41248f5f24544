#!/usr/bin/env bash
# The quick start, end to end: builds Capstan, makes a throw-away Git repository from
# examples/quickstart, starts the local serving agent, and then:
#   1. applies it: trains, validates and promotes the churn model and serves it;
#   2. sends prediction requests through the gateway, shows the status;
#   3. commits a parameter change, shows the plan (which says why it retrains), and applies until
#      the new version has been rolled out by canary while requests flow;
#   4. commits a version whose server answers errors: its canary fails the analysis and is rolled
#      back automatically, traffic stays on the good version, the next apply does not retry it;
#   5. shows the history.
# Everything lives in a temporary folder, removed at the end unless KEEP=1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

# What the build (libgit2 through pkg-config) and the quick start (a Git repository, curl for
# predictions, Python for the example's training and model server) need.
. "$here/scripts/lib/packages.sh"
need_packages "the quick start" libgit2-dev pkg-config git:git curl:curl python3:python3

if [[ -n "${CAPSTAN_BIN:-}" ]]; then
  capstan="$CAPSTAN_BIN"   # CI runs the quick start again with the shipped build (scripts/build-release.sh)
else
  need_swift
  echo "==> building capstan"
  swift build --product capstan >/dev/null
  capstan="$(swift build --show-bin-path)/capstan"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/capstan-quickstart.XXXXXX")"
repo="$work/models-repo"
export CAPSTAN_STATE_DIR="$work/state"
agent_pid=""
load_pid=""
cleanup() {
  [[ -n "$load_pid" ]] && kill "$load_pid" 2>/dev/null || true
  if [[ -n "$agent_pid" ]]; then
    kill -TERM "$agent_pid" 2>/dev/null || true
    wait "$agent_pid" 2>/dev/null || true
  fi
  if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$work"; fi
}
trap cleanup EXIT

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
commit() { git -C "$repo" -c user.name=Quickstart -c user.email=quickstart@example.invalid commit -q -am "$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
predict() {
  curl -s -D - -o "$work/body" -X POST -H 'Content-Type: application/json' \
    -d '{"tenure_months": 3, "monthly_charges": 99.5, "support_calls": 4}' "http://127.0.0.1:$gateway/churn-prod/predict" \
    | awk 'NR==1{status=$2} tolower($1)=="x-capstan-version:"{v=$2} END{printf "HTTP %s from v%s: ", status, v}' | tr -d '\r'
  cat "$work/body"; echo
}
# Applies every second (as cron or `capstan run` would, faster) until the output matches $1.
apply_until() {
  local pattern="$1" out
  for _ in $(seq 1 60); do
    out="$("$capstan" apply --repo "$repo" 2>/dev/null || true)"
    printf '%s\n' "$out" | grep -E "^(churn-prod|churn): .*(done|FAILED)" || true
    if printf '%s\n' "$out" | grep -qE "$pattern"; then return 0; fi
    sleep 1
  done
  echo "quickstart: gave up waiting for: $pattern" >&2
  return 1
}

step "a throw-away model repository made from examples/quickstart"
gateway="$(free_port)"
admin="$(free_port)"
cp -R "$here/examples/quickstart" "$repo"
sed -i "s#http://127.0.0.1:7070#http://127.0.0.1:$admin#" "$repo/capstan.yaml"
git -C "$repo" init -q -b main
git -C "$repo" -c user.name=Quickstart -c user.email=quickstart@example.invalid add -A
git -C "$repo" -c user.name=Quickstart -c user.email=quickstart@example.invalid commit -q -m "Churn model"
echo "$repo (state in $CAPSTAN_STATE_DIR)"

step "the local serving agent"
"$capstan" serve --gateway "127.0.0.1:$gateway" --admin "127.0.0.1:$admin" --state-dir "$work/agent" >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null && break; sleep 0.1; done
head -1 "$work/agent.log"

step "apply: register, train, validate, promote, and serve"
run "$capstan" apply --repo "$repo"

step "predictions through the gateway"
for _ in $(seq 1 150); do  # until v1's server is ready
  [[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d '{"tenure_months": 3, "monthly_charges": 99.5, "support_calls": 4}' \
        "http://127.0.0.1:$gateway/churn-prod/predict")" == 200 ]] && break
  sleep 0.2
done
predict
predict

step "status"
run "$capstan" status

step "apply again: nothing to do"
run "$capstan" apply --repo "$repo"

step "commit a parameter change (epochs 20 -> 200)"
sed -i "s/epochs: 20,/epochs: 200,/" "$repo/models/churn/model.yaml"
commit "More epochs"
git -C "$repo" log --oneline -2

step "plan: what apply would do, and why"
run "$capstan" plan --repo "$repo"

step "apply (every second, as cron would) while requests flow: v2 is rolled out by canary"
( while true; do predict >/dev/null 2>&1; sleep 0.05; done ) &
load_pid=$!
apply_until "churn-prod: promote done"
predict

step "a broken server: v3 answers errors"
python3 - "$repo/models/churn/serve.py" <<'EOF'
import sys
path = sys.argv[1]
text = open(path).read()
text = text.replace('self._send(200, {"churn_probability": round(predict(row), 4)})',
                    'self._send(500, {"error": "this version is broken"})')
open(path, "w").write(text)
EOF
sed -i "s/seed: 7}/seed: 8}/" "$repo/models/churn/model.yaml"
commit "A broken server"
apply_until "churn-prod: rollback"
echo "traffic is back on v2:"
predict
kill "$load_pid" 2>/dev/null || true
load_pid=""

step "apply again: v3 is quarantined, not tried again"
run "$capstan" apply --repo "$repo"

step "status"
run "$capstan" status

step "history of the deployment"
run "$capstan" history --deployment churn-prod

echo
if [[ "${KEEP:-0}" == 1 ]]; then
  echo "Kept $work. Try: CAPSTAN_STATE_DIR=$CAPSTAN_STATE_DIR $capstan status (the agent is stopped; restart it with"
  echo "  $capstan serve --gateway 127.0.0.1:$gateway --admin 127.0.0.1:$admin --state-dir $work/agent)"
else
  echo "Done. Run with KEEP=1 to keep the repository and state for exploring."
fi
