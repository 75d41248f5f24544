#!/usr/bin/env bash
# Benchmarks the embedded registry (release build): create a version, move and resolve an alias,
# list versions, at 10,000 versions of one model, in a fresh state directory. Prints the figures
# next to the MLflow REST registry's, measured on this machine (issue 4).
#   scripts/bench-registry.sh [VERSIONS]   (default 10000)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
swift build -c release --product capstan-bench | grep -E "error|Build" | tail -2
"$(swift build -c release --show-bin-path)/capstan-bench" registry --state-dir "$work/state" --versions "${1:-10000}"
