#!/usr/bin/env bash
# Benchmarks hostile repositories (release build) and prints figures (docs/security.md,
# "Untrusted repository content"; docs/benchmarks.md):
#   - 100,000 files in 1,000 folders (a third valid Models, a third empty, a third not UTF-8):
#     `validate --repo` (from Git objects) and `validate PATH` (a checkout);
#   - 100,000 valid Models: `validate --repo`, `validate PATH`, and `plan` (a fresh state);
#   - a 100 MB blob and a 100 MB (sparse) file named *.yaml: refused by size, never read;
#   - 10,000 symlinks out of the repository, and 1,000 chains of 40 links: refused unread.
# Wall time is the median of RUNS runs; peak memory is the largest max-RSS seen.
#   scripts/bench-hostile.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

swift build -c release --product capstan | grep -E "error|Build" | tail -2
bin=$(swift build -c release --show-bin-path)/capstan
echo "capstan: $bin ($(nproc) cores, $(uname -m))"

measure() { # label, then the command
  local label=$1; shift
  local times=() rss=0 status=0
  for _ in $(seq "$runs"); do
    status=0
    /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>&1 || status=$?
    read -r t m < <(tail -1 "$work/time")
    times+=("$t")
    (( m > rss )) && rss=$m
  done
  local median
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  printf '%-52s median %6.2f s   peak %5d MiB   exit %d   %s\n' "$label" "$median" $((rss / 1024)) "$status" "$(tail -1 "$work/out" | cut -c1-60)"
}

# A fast-import stream of N files: mixed (models, empty, not UTF-8) or all models.
generate() { # kind, count, repository
  git init -q --bare "$3"
  python3 - "$1" "$2" <<'PY' | git -C "$3" fast-import --quiet
import sys
kind, n = sys.argv[1], int(sys.argv[2])
out = sys.stdout.buffer
empty, latin1 = b"# nothing here\n", b"name: caf\xe9\n"
out.write(b"blob\nmark :1\ndata %d\n%s\nblob\nmark :2\ndata %d\n%s\n" % (len(empty), empty, len(latin1), latin1))
marks = []
for i in range(n):
    if kind == "models" or i % 3 == 0:
        body = b"apiVersion: capstan/v1\nkind: Model\nmetadata:\n  name: m%d\nspec:\n  train:\n    command: [python3, train.py]\n" % i
        out.write(b"blob\nmark :%d\ndata %d\n%s\n" % (i + 3, len(body), body))
        marks.append(i + 3)
    else:
        marks.append(1 if i % 3 == 1 else 2)
out.write(b"commit refs/heads/main\ncommitter Bench <bench@capstan.invalid> 1700000000 +0000\ndata 6\nbench\n")
for i, mark in enumerate(marks):
    out.write(b"M 100644 :%d models/d%d/f%d.yaml\n" % (mark, i % 1000, i))
out.write(b"\n")
PY
}

for kind in mixed models; do
  generate "$kind" 100000 "$work/$kind.git"
  git clone -q -b main "$work/$kind.git" "$work/$kind"
  measure "100,000 files ($kind): validate --repo" "$bin" validate --repo "$work/$kind.git" --ref main --no-fetch
  measure "100,000 files ($kind): validate PATH" "$bin" validate "$work/$kind"
done
measure "100,000 Models: plan (fresh state)" "$bin" plan --repo "$work/models.git" --ref main --no-fetch --state-dir "$work/state"

git init -q --bare "$work/big.git"
python3 - <<'PY' | git -C "$work/big.git" fast-import --quiet
import sys
out = sys.stdout.buffer
size = 100 << 20
out.write(b"blob\nmark :1\ndata %d\n" % size)
chunk = b"#" * (1 << 20)
for _ in range(size >> 20):
    out.write(chunk)
out.write(b"\ncommit refs/heads/main\ncommitter Bench <bench@capstan.invalid> 1700000000 +0000\ndata 3\nbig\nM 100644 :1 models/big.yaml\n\n")
PY
measure "100 MB blob: validate --repo (refused by header)" "$bin" validate --repo "$work/big.git" --ref main --no-fetch
mkdir -p "$work/sparse/models"
truncate -s 100M "$work/sparse/models/big.yaml"
measure "100 MB sparse file: validate PATH (refused by size)" "$bin" validate "$work/sparse"

mkdir -p "$work/links/models"
for i in $(seq 0 9999); do ln -s "../../../outside-$i.yaml" "$work/links/models/out-$i.yaml"; done
measure "10,000 symlinks out: validate PATH" "$bin" validate "$work/links"
mkdir -p "$work/chains/models"
(
  cd "$work/chains/models"
  for c in $(seq 0 999); do
    for h in $(seq 0 38); do ln -s "c$c-$((h + 1)).yaml" "c$c-$h.yaml"; done
    ln -s /proc/self/environ "c$c-39.yaml"
  done
)
measure "1,000 chains of 40 links (40,000 links): validate" "$bin" validate "$work/chains"
