#!/usr/bin/env bash
# What a training costs beyond its own command (issue 14 §3, "training cost follows the workdir,
# not the repository"), measured with real `capstan apply` runs, no seeding: a generated repository
# of MODELS models (scripts/generate-models-repo.py repo --timed: 3×MODELS+1 files, each model
# training `bash train.sh` in its own folder on its own data file), and `capstan apply` from an
# empty state folder trains, validates and aliases every one of them.
#
# Per training, from the state database the apply leaves:
#   - the training step as the engine records it: its `train` journal entry, from `started_at`
#     (before the version is created) to `finished_at` (the artifact stored, the version marked
#     trained, the entry closed), in milliseconds;
#   - the command's own run time: train.sh records its start and end (bash's $EPOCHREALTIME) as
#     the metrics bench_started and bench_finished, which the registry keeps;
#   - overhead = the step minus the command. bash's own start (a millisecond or two) falls in the
#     overhead, so the figure is slightly pessimistic.
# Reported at the first and the last training of the MODELS apply (and the median of the first
# and last 20), then the time per model (the apply's wall time / models) at SMALL and LARGE models.
#   scripts/bench-apply.sh [MODELS]        (default 1000)
# Environment:
#   SMALL=24 LARGE=240    the two sizes whose time per model is compared
#   CAPSTAN_BIN=path      measure this binary (default: the shipped build, scripts/build-release.sh)
#   KEEP=1                keep the temporary folder (printed)
# Targets (issue 14): overhead per training under 50 ms at the first and at the last model of a
# 1,000-model apply; the time per model at 240 models within 1.5× of that at 24.
set -euo pipefail
cd "$(dirname "$0")/.."
models=${1:-1000}
small=${SMALL:-24}
large=${LARGE:-240}
for n in "$models" "$small" "$large"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "bench-apply: '$n' is not a number of models" >&2; exit 64; }
done
die() { echo "bench-apply: $*" >&2; exit 1; }
command -v bash >/dev/null || die "bash is missing"

if [[ -n "${CAPSTAN_BIN:-}" ]]; then
  bin=$CAPSTAN_BIN
  [[ -x "$bin" ]] || die "CAPSTAN_BIN=$bin is not an executable"
else
  echo "==> building capstan (scripts/build-release.sh)" >&2
  bin=$(scripts/build-release.sh)
fi

work=$(mktemp -d -t capstan-bench-apply.XXXXXX)
cleanup() { if [[ -n "${KEEP:-}" ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi; }
trap cleanup EXIT
# A copy: the build folder may be relinked by another build while this runs.
cp "$bin" "$work/capstan"
bin=$work/capstan
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com

echo "capstan: $bin, tree $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- Sources Package.swift 2>/dev/null || echo " + uncommitted changes")"
echo "machine: $(nproc) cores, $(uname -m), $(. /etc/os-release && echo "$PRETTY_NAME"), $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg)"

# apply N: a fresh repository of N models and a real apply of it from an empty state folder.
# Sets $seconds (the apply's wall time) and leaves the state in $work/N/state.
apply() {
  local n=$1 dir=$work/$1 t0 t1 status=0
  mkdir -p "$dir"
  python3 scripts/generate-models-repo.py repo "$dir/repo" --models "$n" --timed >/dev/null
  t0=$(date +%s%N)
  "$bin" apply --repo "$dir/repo" --state-dir "$dir/state" --no-fetch --no-color >"$dir/apply.log" 2>&1 || status=$?
  t1=$(date +%s%N)
  [[ $status == 0 ]] || { tail -20 "$dir/apply.log" >&2; die "capstan apply of $n models exited $status"; }
  status=0
  "$bin" plan --repo "$dir/repo" --state-dir "$dir/state" --no-fetch --detailed-exitcode >"$dir/plan-after.txt" 2>&1 || status=$?
  [[ $status == 0 ]] || { head -20 "$dir/plan-after.txt" >&2; die "after the apply of $n models, capstan plan --detailed-exitcode exits $status, not 0"; }
  seconds=$(awk -v ns=$((t1 - t0)) 'BEGIN { printf "%.2f", ns / 1e9 }')
  echo "$n models ($(git -C "$dir/repo" ls-files | wc -l) files): capstan apply took $seconds s ($(awk -v s="$seconds" -v n="$n" 'BEGIN { printf "%.1f", 1000 * s / n }') ms per model), converged after"
}

apply "$models"
python3 - "$work/$models/state/capstan.db" "$models" <<'EOF'
import json, sqlite3, statistics, sys
path, models = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
rows = db.execute("""
    SELECT journal.id, journal.subject, journal.started_at, journal.finished_at, versions.metrics
    FROM journal JOIN versions ON versions.model = substr(journal.subject, 7) AND versions.number = 1
    WHERE journal.operation = 'train' AND journal.state = 'finished'
    ORDER BY journal.id""").fetchall()
if len(rows) != models:
    sys.exit(f"bench-apply: {len(rows)} finished trainings in the journal, expected {models}")
figures = []
for id_, subject, started, finished, metrics in rows:
    m = json.loads(metrics)
    command = (m["bench_finished"] - m["bench_started"]) * 1000
    step = finished - started
    figures.append((subject.removeprefix("model/"), step, command, step - command))

def show(label, chosen):
    print(f"  {label}: step {statistics.median(f[1] for f in chosen):.1f} ms, command {statistics.median(f[2] for f in chosen):.1f} ms, "
          f"overhead {statistics.median(f[3] for f in chosen):.1f} ms")

print(f"per training, {models} models (journal step − the command's own time; ms, the journal in whole ms):")
first, last = figures[0], figures[-1]
print(f"  first training ({first[0]}): step {first[1]} ms, command {first[2]:.1f} ms, overhead {first[3]:.1f} ms")
print(f"  last training ({last[0]}): step {last[1]} ms, command {last[2]:.1f} ms, overhead {last[3]:.1f} ms")
k = min(20, len(figures))
show(f"median of the first {k}", figures[:k])
show(f"median of the last {k}", figures[-k:])
overheads = sorted(f[3] for f in figures)
print(f"  all: overhead median {statistics.median(overheads):.1f} ms, p95 {overheads[int(0.95 * (len(overheads) - 1))]:.1f} ms, max {overheads[-1]:.1f} ms")
ok = first[3] < 50 and last[3] < 50
print(f"target: overhead under 50 ms at the first and the last training: {'PASS' if ok else 'FAIL'}")
EOF

apply "$small"
small_seconds=$seconds
apply "$large"
large_seconds=$seconds
awk -v s="$small_seconds" -v l="$large_seconds" -v ns="$small" -v nl="$large" 'BEGIN {
  ps = 1000 * s / ns; pl = 1000 * l / nl; r = pl / ps
  printf "time per model: %.1f ms at %d models, %.1f ms at %d models: %.2f× (target within 1.5×: %s)\n", ps, ns, pl, nl, r, (r <= 1.5 ? "PASS" : "FAIL")
}'
