#!/usr/bin/env bash
# Benchmarks `capstan plan` (release build) on generated Git repositories of N models with
# in-repository inputs (models/m<i>/train.py and data/m<i>.csv each), against a registry where
# every model is converged, and compares it with `dvc status` on a DVC pipeline of N stages with
# the same inputs. For each N, cases:
#   - nothing changed: `capstan plan` must plan no changes (the benchmark stops otherwise);
#     measured planned in full (`--no-cache`, the figure compared with dvc) and again as a user
#     runs it twice (the second from the plan cache, docs/state.md; its output must be identical);
#   - one data file changed and committed: the plan must train exactly that one model.
# Wall time is the median of RUNS runs (DVC_RUNS for dvc); peak memory the largest max-RSS seen.
#   scripts/bench-plan.sh [N...]       (default: 1000 10000)
# Environment:
#   RUNS=5          runs of each capstan measurement
#   DVC_RUNS=3      runs of each dvc measurement; when the first `dvc status` takes longer than
#   DVC_SLOW=300    seconds, that one run is the measurement (and the output says so)
#   NO_DVC=1        skip dvc; DVC_VENV=DIR reuses (or creates and keeps) a venv with dvc in DIR,
#                   otherwise one is created in the temporary folder (pip install dvc, from PyPI)
#   CAPSTAN_BIN=... use this capstan binary instead of building one
#   KEEP=1          keep the temporary folder (printed) for inspection
#
# The repository is packed after generation (`git gc`), as a clone or Capstan's mirror is; the
# change is a new commit on top (its objects loose).
# The registry is brought to "converged" without training: `capstan plan --format json` against
# the empty registry gives every model's fingerprint and training description exactly as Capstan
# computes them, and `scripts/generate-models-repo.py seed` writes what a converged
# `capstan apply` leaves (the model, a validated v1 with that fingerprint, champion → v1). A real
# apply is not used: each training copies the whole commit tree into its run folder, which makes
# applying 1,000 models take tens of minutes on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000 10000)
for n in "${sizes[@]}"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "bench-plan: '$n' is not a number of models" >&2; exit 64; }
done
runs=${RUNS:-5}
dvc_runs=${DVC_RUNS:-3}
dvc_slow=${DVC_SLOW:-300}
work=$(mktemp -d -t capstan-bench-plan.XXXXXX)
cleanup() { if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
export DVC_NO_ANALYTICS=1 GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com \
  GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com
generator="$root/scripts/generate-models-repo.py"
die() { echo "bench-plan: $*" >&2; exit 1; }
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (apt-get install time)"
command -v jq >/dev/null || die "jq is missing (apt-get install jq)"

. "$root/scripts/lib/bench.sh"
bench_binary "$work"
echo "machine: $(nproc) cores, $(uname -m), $(. /etc/os-release && echo "$PRETTY_NAME"), $(date -u +%Y-%m-%d)"

# dvc, from PyPI, in a venv.
dvc=""
if [ -z "${NO_DVC:-}" ]; then
  venv=${DVC_VENV:-$work/venv}
  if [ ! -x "$venv/bin/dvc" ]; then
    echo "installing dvc from PyPI into $venv…"
    if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q dvc; } >"$work/pip.log" 2>&1; then
      tail -3 "$work/pip.log" >&2
      echo "dvc: could not be installed (above); reporting Capstan's figures only"
    fi
  fi
  if [ -x "$venv/bin/dvc" ]; then
    dvc="$venv/bin/dvc"
    echo "dvc: $("$dvc" --version) ($dvc)"
  fi
else
  echo "dvc: skipped (NO_DVC)"
fi

# measure RUNS EXPECTED_EXIT DIR command…: runs the command in DIR RUNS times (stdout and stderr to
# $work/out, kept from the last run); sets $median (seconds, 3 decimals), $peak (MiB), $first
# (seconds of the first run). Stops the benchmark when the exit status is not EXPECTED_EXIT.
measure() {
  local count=$1 expected=$2 dir=$3; shift 3
  local times=() rss=0 status t0 t1 m i
  for i in $(seq "$count"); do
    status=0
    t0=$(date +%s%N)
    (cd "$dir" && /usr/bin/time -f "%M" -o "$work/time" "$@" >"$work/out" 2>&1) || status=$?
    t1=$(date +%s%N)
    if [ "$status" != "$expected" ]; then
      tail -5 "$work/out" >&2
      die "'$*' exited $status, expected $expected"
    fi
    m=$(tail -1 "$work/time")
    (( m > rss )) && rss=$m
    times+=("$(( (t1 - t0) / 1000000 ))")
    [ "$i" = 1 ] && first=$(awk -v ms="${times[0]}" 'BEGIN { printf "%.3f", ms / 1000 }')
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.3f", a[int((NR+1)/2)] / 1000}')
  peak=$((rss / 1024))
}

# Table rows: models|case|capstan s|capstan MiB|dvc s|dvc MiB|ratio
rows=()
notes=()

for n in "${sizes[@]}"; do
  echo
  echo "== $n models =="
  dir=$work/$n
  repo=$dir/repo
  state=$dir/state
  mkdir -p "$dir"
  t0=$(date +%s)
  python3 "$generator" repo "$repo" --models "$n" >/dev/null
  echo "repository: $n models, $(git -C "$repo" ls-files | wc -l) files, commit $(git -C "$repo" rev-parse --short HEAD) ($(( $(date +%s) - t0 )) s to generate)"

  # A converged registry: fingerprints from Capstan itself, then seeded.
  "$bin" plan --repo "$repo" --state-dir "$state" --no-fetch --format json >"$dir/plan-empty.json" \
    || die "capstan plan against the empty registry failed"
  trains=$(jq '.summary.train' "$dir/plan-empty.json")
  [ "$trains" = "$n" ] || die "the plan against the empty registry trains $trains models, expected $n"
  python3 "$generator" seed "$state" "$dir/plan-empty.json" >/dev/null
  status=0
  "$bin" plan --repo "$repo" --state-dir "$state" --no-fetch --detailed-exitcode >"$dir/plan-converged.txt" 2>&1 || status=$?
  if [ "$status" != 0 ]; then
    head -20 "$dir/plan-converged.txt" >&2
    die "after seeding, capstan plan --detailed-exitcode exits $status, not 0: the registry is not converged; the benchmark is invalid"
  fi
  echo "registry: converged ($(tail -1 "$dir/plan-converged.txt"))"

  # The DVC pipeline: a clone of the same commit, `dvc init`, one stage per model with the same
  # inputs, and dvc.lock + cache as `dvc commit -f` writes them (no stage runs; see the generator
  # for why it does not call `dvc commit`). `dvc status` then checks every hash.
  if [ -n "$dvc" ]; then
    dwork=$dir/dvc
    git clone -q "$repo" "$dwork"
    (cd "$dwork" && "$dvc" init -q && python3 "$generator" dvc "$dwork" --models "$n" >/dev/null && echo /out >.gitignore)
    git -C "$dwork" add -A && git -C "$dwork" commit -qm "dvc pipeline of $n stages"
    echo "dvc pipeline: $n stages in a clone, dvc.lock up to date"
  fi

  # Loading alone, to separate it from the rest of a plan.
  measure "$runs" 0 "$dir" "$bin" validate --repo "$repo"
  rows+=("$n|load manifests (validate --repo)|$median|$peak|||")
  echo "capstan validate --repo (loading only): median $median s, peak $peak MiB"

  # a. Nothing changed: planned in full (--no-cache: every manifest and the whole registry read;
  # the figure compared with dvc), then as a user runs it again (the plan cache of the run above).
  measure "$runs" 0 "$dir" "$bin" plan --repo "$repo" --state-dir "$state" --no-fetch --detailed-exitcode --no-cache
  cp "$work/out" "$dir/plan-full.txt"
  c_median=$median c_peak=$peak
  echo "capstan plan --no-cache, nothing changed: median $c_median s, peak $c_peak MiB ($(tail -1 "$work/out"))"
  measure "$runs" 0 "$dir" "$bin" plan --repo "$repo" --state-dir "$state" --no-fetch --detailed-exitcode
  cmp -s "$work/out" "$dir/plan-full.txt" || { diff "$dir/plan-full.txt" "$work/out" | head -10 >&2; die "the cached plan differs from the plan computed in full"; }
  [ -f "$state/cache/plan-cache" ] || die "no plan cache in $state/cache after capstan plan"
  rows+=("$n|nothing changed, plan cache|$median|$peak|||")
  echo "capstan plan, nothing changed (plan cache): median $median s, peak $peak MiB (output identical to --no-cache)"
  d_median="" d_peak="" ratio=""
  if [ -n "$dvc" ]; then
    measure 1 0 "$dwork" "$dvc" status
    grep -q "up to date" "$work/out" || { head -10 "$work/out" >&2; die "dvc status does not report the pipeline up to date"; }
    if awk -v f="$first" -v s="$dvc_slow" 'BEGIN { exit !(f > s) }'; then
      notes+=("$n models, dvc status with nothing changed: 1 run (it took ${first} s, over ${dvc_slow} s)")
    else
      measure "$dvc_runs" 0 "$dwork" "$dvc" status
      grep -q "up to date" "$work/out" || die "dvc status does not report the pipeline up to date"
    fi
    d_median=$median d_peak=$peak
    ratio=$(awk -v d="$d_median" -v c="$c_median" 'BEGIN { printf "%.0f×", d / c }')
    echo "dvc status, nothing changed: median $d_median s, peak $d_peak MiB ($(tail -1 "$work/out")); dvc/capstan $ratio"
  fi
  rows+=("$n|nothing changed, planned in full (--no-cache)|$c_median|$c_peak|$d_median|$d_peak|$ratio")

  # b. One model's data file changed and committed.
  k=$(( n / 2 ))
  printf '%s,%s\n' "$k" 7 >>"$repo/data/m$k.csv"
  git -C "$repo" commit -qam "change data/m$k.csv"
  "$bin" plan --repo "$repo" --state-dir "$state" --no-fetch --format json >"$dir/plan-changed.json" || die "capstan plan failed"
  trained=$(jq -r '[.changes[] | select(.action == "train") | .name] | join(",")' "$dir/plan-changed.json")
  [ "$trained" = "m$k" ] || die "after changing data/m$k.csv the plan trains '$trained', expected exactly m$k"
  measure "$runs" 2 "$dir" "$bin" plan --repo "$repo" --state-dir "$state" --no-fetch --detailed-exitcode --no-cache
  c_median=$median c_peak=$peak
  echo "capstan plan --no-cache, data/m$k.csv changed: median $c_median s, peak $c_peak MiB ($(tail -1 "$work/out"))"
  d_median="" d_peak="" ratio=""
  if [ -n "$dvc" ]; then
    printf '%s,%s\n' "$k" 7 >>"$dwork/data/m$k.csv"
    git -C "$dwork" commit -qam "change data/m$k.csv"
    check_dvc_changed() { # exactly one stage reported, m$k, for its data file
      local stages
      stages=$(grep -E '^[^[:space:]].*:[[:space:]]*$' "$work/out" | sed 's/:[[:space:]]*$//' | paste -sd, -)
      [ "$stages" = "m$k" ] && grep -q "modified:.*data/m$k.csv" "$work/out" \
        || { head -10 "$work/out" >&2; die "dvc status reports stages '$stages', expected exactly m$k"; }
    }
    measure 1 0 "$dwork" "$dvc" status
    check_dvc_changed
    if awk -v f="$first" -v s="$dvc_slow" 'BEGIN { exit !(f > s) }'; then
      notes+=("$n models, dvc status after the change: 1 run (it took ${first} s, over ${dvc_slow} s)")
    else
      measure "$dvc_runs" 0 "$dwork" "$dvc" status
      check_dvc_changed
    fi
    d_median=$median d_peak=$peak
    ratio=$(awk -v d="$d_median" -v c="$c_median" 'BEGIN { printf "%.0f×", d / c }')
    echo "dvc status, data/m$k.csv changed: median $d_median s, peak $d_peak MiB (reports stage m$k); dvc/capstan $ratio"
  fi
  rows+=("$n|one data file changed (--no-cache)|$c_median|$c_peak|$d_median|$d_peak|$ratio")
done

echo
printf '%-7s %-46s %13s %9s %12s %9s %7s\n' models case "capstan" "peak MiB" "dvc status" "peak MiB" ratio
for row in "${rows[@]}"; do
  IFS='|' read -r n case cs cm ds dm ratio <<<"$row"
  printf '%-7s %-46s %11s s %9s %12s %9s %7s\n' "$n" "$case" "$cs" "$cm" "${ds:+$ds s}" "$dm" "$ratio"
done
echo
echo "capstan = capstan plan --repo R --state-dir S --no-fetch --detailed-exitcode (text output; median of $runs);"
echo "dvc = dvc status in a clone with a dvc.yaml of one stage per model (median of $dvc_runs)."
for note in "${notes[@]+"${notes[@]}"}"; do echo "note: $note"; done
echo "The comparison is conservative for Capstan: besides deciding which models must retrain, capstan plan"
echo "validates every manifest, reads the whole registry and plans metadata, validations and aliases."
echo "Targets: 10,000 models planned in under 1 s and 300 MiB; at least 20× faster than dvc status."
