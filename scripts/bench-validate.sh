#!/usr/bin/env bash
# Benchmarks `capstan validate` (release build) and prints figures:
#   - generated repositories: 5,000 models + 5,000 deployments (10,000 documents) and
#     10,000 + 10,000 (20,000 documents), each in files of 50+50 across 100 folders;
#   - hostile inputs: how fast each is refused.
# Wall time is the median of RUNS runs; peak memory is the largest max-RSS seen.
#   scripts/bench-validate.sh [RUNS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

swift build -c release --product capstan | grep -E "error|Build" | tail -2
bin=$(swift build -c release --show-bin-path)/capstan
echo "capstan: $bin ($(nproc) cores, $(uname -m))"

measure() { # label, then the command
  local label=$1; shift
  local times=() rss=0 status=0
  for _ in $(seq "$runs"); do
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>&1 || status=$?
    read -r t m < <(tail -1 "$work/time")
    times+=("$t")
    (( m > rss )) && rss=$m
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '%-44s median %6.2f s   peak %5d MiB   exit %d   %s\n' "$label" "$median" $((rss / 1024)) "$status" "$(tail -1 "$work/out" | cut -c1-70)"
}

for models in 5000 10000; do
  python3 scripts/generate-manifests.py "$work/repo-$models" --models "$models" >/dev/null
  measure "validate $models models + $models deployments" "$bin" validate "$work/repo-$models"
done

mkdir -p "$work/hostile"/{laughs,keybomb,deep,deeper,docs,big}
python3 - "$work/hostile" <<'PY'
import sys
d = sys.argv[1]
lol = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
for i in range(1, 10):
    lol.append(f"a{i}: &a{i} [" + ",".join([f"*a{i-1}"] * 9) + "]")
open(f"{d}/laughs/x.yaml", "w").write("\n".join(lol + ["b: *a9"]) + "\n")
open(f"{d}/keybomb/x.yaml", "w").write("\n".join(lol + ["b: {*a9 : 1}"]) + "\n")
open(f"{d}/deep/x.yaml", "w").write("a: " + "[" * 65 + "]" * 65 + "\n")
open(f"{d}/deeper/x.yaml", "w").write("a: " + "[" * 1000000 + "\n")
open(f"{d}/docs/x.yaml", "w").write("---\na: 1\n" * 100000)
open(f"{d}/big/x.yaml", "w").write("# padding\n" * 1000000)
PY
for case in laughs keybomb deep deeper docs big; do
  measure "hostile: $case" "$bin" validate "$work/hostile/$case"
done
