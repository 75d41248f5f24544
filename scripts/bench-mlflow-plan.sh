#!/usr/bin/env bash
# Benchmarks `capstan plan` (release build) against a real `mlflow server` on 127.0.0.1 holding N
# converged models (issue 15, target: under 5 s at 1,000 models): wall time (median of RUNS
# runs), peak memory, and the number of requests one plan sends, counted in the server's own
# access log (so that it is measured outside Capstan).
#   scripts/bench-mlflow-plan.sh [N...]      (default: 1000)
# Environment:
#   RUNS=5            runs of each measurement
#   MLFLOW_VENV=DIR   a virtual environment with mlflow (default .build/test-peers, which
#                     scripts/test.sh creates from scripts/test-peers.txt)
#   CAPSTAN_BIN=...   use this capstan binary instead of building one
#   KEEP=1            keep the temporary folder (printed)
#
# The registry is brought to "converged" without training, as a converged `capstan apply` leaves
# MLflow: for each model a registered model tagged capstan.managed, a finished run in
# experiment capstan/<model>, a version registered from it with Capstan's tags (the fingerprint
# from `capstan plan --format json` against the empty server, so it is exactly Capstan's, status
# validated) and champion on it. The plan must then have no changes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000)
runs=${RUNS:-5}
venv=${MLFLOW_VENV:-$root/.build/test-peers}
work=$(mktemp -d -t capstan-bench-mlflow.XXXXXX)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
die() { echo "bench-mlflow-plan: $*" >&2; exit 1; }
[ -x "$venv/bin/mlflow" ] || die "no mlflow in $venv: run scripts/test.sh once (it installs scripts/test-peers.txt there) or set MLFLOW_VENV"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (apt-get install time)"
command -v jq >/dev/null || die "jq is missing (apt-get install jq)"
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com

. scripts/lib/bench.sh
bench_binary "$work"
echo "mlflow: $("$venv/bin/mlflow" --version 2>/dev/null | tail -1), SQLite store"
echo "machine: $(nproc) cores, $(. /etc/os-release && echo "$PRETTY_NAME"), $(date -u +%Y-%m-%d)"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false "$venv/bin/mlflow" server --host 127.0.0.1 --port "$port" \
  --backend-store-uri "sqlite:///$work/mlflow.db" --artifacts-destination "$work/artifacts" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 240); do curl -sf "$url/health" >/dev/null 2>&1 && break; sleep 0.5; done
curl -sf "$url/health" >/dev/null || { tail -5 "$work/server.log" >&2; die "mlflow server did not start"; }
requests() { grep -c '"[A-Z]* /api/2.0/mlflow' "$work/server.log" || true; }

for n in "${sizes[@]}"; do
  echo
  echo "== $n models =="
  dir=$work/$n
  repo=$dir/repo
  state=$dir/state
  mkdir -p "$dir"
  python3 "$root/scripts/generate-models-repo.py" repo "$repo" --models "$n" >/dev/null
  # The same repository, its registry MLflow (experiments capstan-bench-<n>/<model>, so sizes do not meet).
  (cd "$repo" && python3 - "$url" "$n" <<'PY'
import sys
text = open("capstan.yaml").read()
text = text.replace("spec:\n", "spec:\n  registry:\n    mlflow: {url: \"%s\", experiment: \"capstan-bench-%s/{model}\", timeout: 2m}\n" % (sys.argv[1], sys.argv[2]), 1)
open("capstan.yaml", "w").write(text)
PY
  git -C "$repo" commit -qam "registry: MLflow")
  "$bin" plan --repo "$repo" --state-dir "$state" --no-fetch --format json >"$dir/plan-empty.json" || die "capstan plan against the empty server failed"
  trains=$(jq '.summary.train' "$dir/plan-empty.json")
  [ "$trains" = "$n" ] || die "the plan against the empty server trains $trains models, expected $n"

  t0=$(date +%s)
  "$venv/bin/python3" - "$url" "$dir/plan-empty.json" "$n" >"$dir/seed.log" 2>&1 <<'PY' || { tail -5 "$dir/seed.log" >&2; die "seeding MLflow failed"; }
import json, sys
from concurrent.futures import ThreadPoolExecutor
from mlflow import MlflowClient
url, plan, n = sys.argv[1], sys.argv[2], sys.argv[3]
c = MlflowClient(url)
entries = [e for e in json.load(open(plan))["changes"] if e["action"] == "train"]
def seed(e):
    name, fp = e["name"], e["fingerprint"]
    c.create_registered_model(name, tags={"capstan.managed": "true"})
    exp = c.create_experiment(f"capstan-bench-{n}/{name}")
    run = c.create_run(exp, tags={"capstan.model": name, "capstan.fingerprint": fp, "capstan.attempt": "1"})
    c.log_metric(run.info.run_id, "accuracy", 0.9)
    c.set_terminated(run.info.run_id, "FINISHED")
    v = c.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id, tags={
        "capstan.fingerprint": fp, "capstan.status": "validated", "capstan.metrics": '{"accuracy":0.9}',
        "capstan.gates": "passed", "capstan.attempts": "1", "capstan.artifact_digest": "sha256:" + "0" * 64})
    c.set_registered_model_alias(name, "champion", v.version)
with ThreadPoolExecutor(8) as pool:
    list(pool.map(seed, entries))
PY
  echo "MLflow: seeded $n converged models in $(( $(date +%s) - t0 )) s"
  status=0
  "$bin" plan --repo "$repo" --state-dir "$state" --no-fetch --detailed-exitcode >"$dir/converged.txt" 2>&1 || status=$?
  [ "$status" = 0 ] || { head -20 "$dir/converged.txt" >&2; die "after seeding, the plan is not converged (exit $status)"; }
  echo "plan: $(tail -1 "$dir/converged.txt")"

  times=() rss=0
  for i in $(seq "$runs"); do
    before=$(requests)
    t0=$(date +%s%N)
    /usr/bin/time -f "%M" -o "$dir/time" "$bin" plan --repo "$repo" --state-dir "$state" --no-fetch --detailed-exitcode >"$dir/out" 2>&1 \
      || { tail -5 "$dir/out" >&2; die "capstan plan failed"; }
    t1=$(date +%s%N)
    count=$(( $(requests) - before ))
    times+=("$(( (t1 - t0) / 1000000 ))")
    m=$(tail -1 "$dir/time"); (( m > rss )) && rss=$m
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.3f", a[int((NR+1)/2)] / 1000}')
  echo "capstan plan, converged, $n models: median $median s of $runs runs (${times[*]} ms), peak RSS $((rss / 1024)) MiB, $count requests to MLflow per plan"
  grep -o '"[A-Z]* /api/2.0/mlflow/[a-z/-]*' "$work/server.log" | tail -n "$count" | sort | uniq -c | sed 's/^/    /'
done
