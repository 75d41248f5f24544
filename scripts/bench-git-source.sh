#!/usr/bin/env bash
# Benchmarks the Git source: a repository with 10,000 model manifests (each file a Model and its
# Deployment) in 100 folders, served by `git daemon` on 127.0.0.1, read by one long-lived process:
#   cold pass (mirror + fetch + read + parse), passes over an unchanged commit, passes after a
#   commit that changes one manifest (each includes the fetch). Prints the figures.
#   scripts/bench-git-source.sh [MODELS]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
models=${1:-10000}
work=$(mktemp -d)
cleanup() { [ -n "${daemon:-}" ] && kill "$daemon" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

swift build -c release --product capstan-bench | grep -E "error|Compiling|Build" | tail -2
bin=$(swift build -c release --show-bin-path)/capstan-bench

python3 scripts/generate-manifests.py "$work/src" --models "$models" --per-file 1 --folders 100 >/dev/null
git -C "$work/src" init -q -b main
git -C "$work/src" add -A
git -C "$work/src" -c user.name=bench -c user.email=bench@example.com commit -qm "generated $models models"
git clone -q --bare "$work/src" "$work/served/models.git"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
git daemon --reuseaddr --export-all --base-path="$work/served" --listen=127.0.0.1 --port="$port" "$work/served" 2>/dev/null &
daemon=$!
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done

file=$(cd "$work/src" && git ls-files 'models/*.yaml' | awk 'NR==1')
change="cd '$work/src' && sed -i 's/epochs: \([0-9]*\)/epochs: 1\1/' '$file' && git -c user.name=bench -c user.email=bench@example.com commit -qam 'change one manifest' && git push -q '$work/served/models.git' main"
echo "repository: $models models + $models deployments in $(cd "$work/src" && git ls-files | grep -c yaml) YAML files, $(cd "$work/src" && git ls-files | wc -l) files; git://127.0.0.1:$port/models.git"
/usr/bin/time -f "process: %e s wall, %M KB max RSS" ${BENCH_WRAPPER:-} "$bin" git-source --repo "git://127.0.0.1:$port/models.git" --state-dir "$work/state" --change-command "$change" --passes "${PASSES:-5}"
