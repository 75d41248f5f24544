#!/usr/bin/env bash
# Benchmarks the embedded registry (release build), each in a fresh state directory:
#  - create a version, move and resolve an alias, list versions, at 10,000 versions of one model,
#    next to the MLflow REST registry's figures measured on this machine (issue 4);
#  - read the registry snapshot the planner reads, at 10,000 models with a validated version each:
#    in full, the generation alone, and refreshing a snapshot (unchanged, one version changed).
#   scripts/bench-registry.sh [VERSIONS [MODELS]]   (defaults 10000 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
swift build -c release --product capstan-bench | grep -E "error|Build" | tail -2
bench="$(swift build -c release --show-bin-path)/capstan-bench"
"$bench" registry --state-dir "$work/versions" --versions "${1:-10000}"
echo
"$bench" registry-snapshot --state-dir "$work/models" --models "${2:-10000}"
