#!/usr/bin/env bash
# The controller at scale (issue 14 §3), measured through `capstan run` itself: a generated
# repository of MODELS models (scripts/generate-models-repo.py, as scripts/bench-plan.sh makes it:
# 3×MODELS+1 files, each model training `train.py` on its own data file) served by `git daemon` on
# 127.0.0.1, a registry seeded converged (as bench-plan seeds it), and one `capstan run` process
# following it. Then:
#   1. PASSES passes over the unchanged commit, each triggered by POST /api/v1/reconcile;
#   2. CHANGES passes each after a commit that changes one manifest (the description of model
#      m<MODELS/2>, so the pass updates that model in the registry and nothing else), pushed to the
#      daemon, then triggered the same way.
# Each pass's duration is read from the controller's own `capstan_pass_duration_seconds` (the
# histogram's _sum before and after the pass: one pass at a time) and checked against the `pass
# finished` log line; every pass must finish `converged`, and a changed pass must plan exactly
# `update-model m<k>`. Beside the wall time, the controller's CPU time per pass (utime + stime from
# /proc/PID/stat, 10 ms ticks, a mean; it includes the poll of the source before each pass and the
# /metrics reads) is printed: it does not move with the load of a shared machine. Resident memory
# (VmRSS, and the peak VmHWM) is read from /proc at the end.
#   scripts/bench-controller-scale.sh [MODELS]     (default 10000)
# Environment:
#   PASSES=10 CHANGES=5   passes of each kind
#   CAPSTAN_BIN=path      measure this binary (default: the shipped build, scripts/build-release.sh)
#   KEEP=1                keep the temporary folder (printed), with the controller's log
#   PERF=file             record the controller's changed passes with `perf record -g` into file
# Targets (issue 14): at 10,000 models a pass over an unchanged commit under 50 ms, one with one
# manifest changed under 150 ms, resident memory under 300 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
models=${1:-10000}
[[ $models =~ ^[1-9][0-9]*$ ]] || { echo "bench-controller-scale: '$models' is not a number of models" >&2; exit 64; }
passes=${PASSES:-10}
changes=${CHANGES:-5}
die() { echo "bench-controller-scale: $*" >&2; exit 1; }
command -v jq >/dev/null || die "jq is missing (apt-get install jq)"
command -v curl >/dev/null || die "curl is missing (apt-get install curl)"

if [[ -n "${CAPSTAN_BIN:-}" ]]; then
  bin=$CAPSTAN_BIN
  [[ -x "$bin" ]] || die "CAPSTAN_BIN=$bin is not an executable"
else
  echo "==> building capstan (scripts/build-release.sh)" >&2
  bin=$(scripts/build-release.sh)
fi

work=$(mktemp -d -t capstan-bench-controller-scale.XXXXXX)
pid="" daemon=""
cleanup() {
  if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [[ -n "$daemon" ]]; then kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true; fi
  if [[ -n "${KEEP:-}" ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
# A copy: the build folder may be relinked by another build while this runs.
cp "$bin" "$work/capstan"
bin=$work/capstan
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "capstan: $bin, tree $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- Sources Package.swift 2>/dev/null || echo " + uncommitted changes")"
echo "machine: $(nproc) cores, $(uname -m), $(. /etc/os-release && echo "$PRETTY_NAME"), $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg)"

src=$work/src
state=$work/state
python3 scripts/generate-models-repo.py repo "$src" --models "$models" >/dev/null
mkdir -p "$work/served"
git clone -q --bare "$src" "$work/served/models.git"
git -C "$src" remote add served "$work/served/models.git"
port=$(free_port)
git daemon --reuseaddr --export-all --base-path="$work/served" --listen=127.0.0.1 --port="$port" "$work/served" 2>/dev/null &
daemon=$!
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
url="git://127.0.0.1:$port/models.git"
echo "repository: $models models, $(git -C "$src" ls-files | wc -l) files, served at $url"

# A converged registry: fingerprints from Capstan itself, then seeded (see scripts/bench-plan.sh).
"$bin" plan --repo "$url" --state-dir "$state" --format json >"$work/plan-empty.json" || die "capstan plan against the empty registry failed"
[[ "$(jq '.summary.train' "$work/plan-empty.json")" == "$models" ]] || die "the plan against the empty registry does not train $models models"
python3 scripts/generate-models-repo.py seed "$state" "$work/plan-empty.json" >/dev/null
status=0
"$bin" plan --repo "$url" --state-dir "$state" --detailed-exitcode >"$work/plan-converged.txt" 2>&1 || status=$?
[[ $status == 0 ]] || { head -20 "$work/plan-converged.txt" >&2; die "after seeding, capstan plan --detailed-exitcode exits $status, not 0"; }
echo "registry: seeded converged ($(tail -1 "$work/plan-converged.txt"))"

http=$(free_port)
export BENCH_API_TOKEN="bench-token-$RANDOM$RANDOM$RANDOM"
"$bin" run --repo "$url" --state-dir "$state" --http "127.0.0.1:$http" --interval 10m --resync 1h \
  --api-token-env BENCH_API_TOKEN --log-format json 2>"$work/run.log" &
pid=$!
started=$(date +%s%N)
ready=""
for _ in $(seq 1 1200); do
  if [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/readyz")" == 200 ]]; then ready=1; break; fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
[[ -n "$ready" ]] || { tail -20 "$work/run.log" >&2; die "the controller never became ready"; }
echo "controller: pid $pid, ready after $(( ($(date +%s%N) - started) / 1000000 )) ms (its first pass included)"

python3 - "$http" "$work/run.log" "$pid" "$src" "$models" "$passes" "$changes" <<'EOF'
import json, os, statistics, subprocess, sys, time, urllib.request
port, log, pid, src, models, passes, changes = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
token = os.environ["BENCH_API_TOKEN"]
base = f"http://127.0.0.1:{port}"

def lines():
    out = []
    with open(log) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out

def ends():
    return [o for o in lines() if o.get("msg") in ("pass finished", "pass failed")]

def metric_sum_count():
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    total = count = None
    for line in text.splitlines():
        if line.startswith("capstan_pass_duration_seconds_sum"):
            total = float(line.split()[-1])
        elif line.startswith("capstan_pass_duration_seconds_count"):
            count = int(float(line.split()[-1]))
    return total, count

def status(key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024

def cpu_ms():
    # utime + stime of the controller, in clock ticks: robust to a busy machine, unlike wall time.
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")

def one_pass(label):
    """Triggers a pass, waits for its end; returns (metric ms, log ms, the pass's log lines)."""
    before_lines = len(lines())
    before_ends = len(ends())
    s0, c0 = metric_sum_count()
    request = urllib.request.Request(base + "/api/v1/reconcile", method="POST", data=b"",
                                     headers={"Authorization": f"Bearer {token}"})
    assert urllib.request.urlopen(request, timeout=10).status == 202
    # The metric is observed a little after the pass's last log line: wait for both.
    deadline = time.time() + 120
    while True:
        s1, c1 = metric_sum_count()
        if c1 > c0 and len(ends()) > before_ends:
            break
        if time.time() > deadline:
            sys.exit(f"{label}: no pass ended within 120 s")
        time.sleep(0.01)
    end = ends()[before_ends]
    if end.get("msg") != "pass finished" or end.get("outcome") != "converged":
        sys.exit(f"{label}: the pass did not converge: {json.dumps(end)}")
    if c1 != c0 + 1:
        sys.exit(f"{label}: capstan_pass_duration_seconds_count went from {c0} to {c1}, expected one pass")
    logged = float(end["duration"].rstrip("s")) * 1000
    return (s1 - s0) * 1000, logged, lines()[before_lines:]

def show(label, figures):
    ms = sorted(f[0] for f in figures)
    logged = sorted(f[1] for f in figures)
    print(f"{label}: median {statistics.median(ms):.1f} ms, min {ms[0]:.1f}, max {ms[-1]:.1f} over {len(ms)} passes "
          f"(capstan_pass_duration_seconds; the log lines say median {statistics.median(logged):.1f} ms)")
    return statistics.median(ms)

unchanged = []
cpu0 = cpu_ms()
for i in range(passes):
    m, l, pass_lines = one_pass(f"unchanged pass {i + 1}")
    planned = [o for o in pass_lines if o.get("msg") == "planned"]
    if planned:
        sys.exit(f"unchanged pass {i + 1} planned changes: {planned[:3]}")
    unchanged.append((m, l))
u_cpu = (cpu_ms() - cpu0) / passes
u = show("unchanged commit", unchanged)
print(f"  CPU time of the controller per pass (mean, /proc/PID/stat, polls and /metrics reads included): {u_cpu:.1f} ms")

k = models // 2
path = os.path.join(src, "models", f"m{k}", "model.yaml")
changed = []
cpu_changed = 0.0
recorder = None
if os.environ.get("PERF"):
    recorder = subprocess.Popen(["perf", "record", "-q", "-F", "2000", "-g", "-p", str(pid), "-o", os.environ["PERF"]])
    time.sleep(1)
for i in range(changes):
    text = open(path).read()
    lines_ = [x for x in text.split("\n") if not x.startswith("  description:")]
    at = lines_.index("spec:") + 1
    lines_.insert(at, f"  description: \"revision {i + 1}\"")
    open(path, "w").write("\n".join(lines_))
    subprocess.run(["git", "-C", src, "commit", "-qam", f"describe m{k}, revision {i + 1}"], check=True)
    subprocess.run(["git", "-C", src, "push", "-q", "served", "main"], check=True)
    cpu0 = cpu_ms()
    m, l, pass_lines = one_pass(f"changed pass {i + 1}")
    cpu_changed += cpu_ms() - cpu0
    planned = sorted((o.get("step"), o.get("model")) for o in pass_lines if o.get("msg") == "planned")
    if planned != [("update-model", f"m{k}")]:
        sys.exit(f"changed pass {i + 1}: expected exactly update-model m{k}, the pass planned {planned}")
    changed.append((m, l))
if recorder:
    recorder.send_signal(2)
    recorder.wait()
c = show(f"one manifest changed (models/m{k}/model.yaml)", changed)
c_cpu = cpu_changed / changes
print(f"  CPU time of the controller per pass (mean, the fetch of the new commit included): {c_cpu:.1f} ms")

rss, hwm = status("VmRSS"), status("VmHWM")
print(f"resident memory: {rss:.0f} MiB now (private {status('RssAnon'):.0f} MiB, file-backed {status('RssFile'):.0f} MiB), "
      f"peak {hwm:.0f} MiB (VmHWM, the first pass included)")
print()
print(f"| models | unchanged commit (median; CPU) | one manifest changed (median; CPU) | resident memory, peak |")
print(f"| {models:,} | {u:.1f} ms; {u_cpu:.0f} ms | {c:.1f} ms; {c_cpu:.0f} ms | {rss:.0f} MiB, peak {hwm:.0f} MiB |")
print("targets (10,000 models): unchanged < 50 ms, one manifest changed < 150 ms, resident memory < 300 MiB")
EOF
