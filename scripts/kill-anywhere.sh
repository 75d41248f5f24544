#!/usr/bin/env bash
# The kill-anywhere suite (issue 13) for longer runs than CI's: `capstan apply` on a real
# repository, and `capstan run --serve` during canaries, killed with SIGKILL at seeded random
# moments; after each kill the next pass runs and the invariants are checked (integrity check,
# one version per fingerprint, version numbers never reused, aliases on validated versions only,
# no training or validation process and no model server of a killed pass outliving the next pass,
# one audit event per change, the next pass converges). See Tests/CapstanCLITests/KillAnywhereTests.swift.
#
#   scripts/kill-anywhere.sh                          # 300 points, a fresh seed
#   POINTS=1000 scripts/kill-anywhere.sh              # more
#   SEED=123456 POINTS=50 scripts/kill-anywhere.sh    # replay a seed (the draws; timing is the machine's)
#   CANARY_POINTS=40 …                                # how many of the points kill run --serve (default POINTS/6)
#   KEEP=DIR …                                        # copy the folder of every point that broke an invariant to DIR
#   CAPSTAN_TEST_BINARY=path …                        # another build of capstan (e.g. scripts/build-release.sh's)
#
# Prints the seed, then one line per violation, then "N points, V violations"; exits 1 when
# there is any violation. A point takes about 2 s (apply) or 10 s (run --serve) on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

points="${POINTS:-300}"
export CAPSTAN_KILL_POINTS="$points"
[[ -n "${SEED:-}" ]] && export CAPSTAN_KILL_SEED="$SEED"
[[ -n "${CANARY_POINTS:-}" ]] && export CAPSTAN_KILL_CANARY_POINTS="$CANARY_POINTS"
[[ -n "${KEEP:-}" ]] && export CAPSTAN_KILL_KEEP="$KEEP"

echo "==> building (swift build --build-tests)" >&2
swift build --build-tests >/dev/null 2>&1 || swift build --build-tests

log="$(mktemp "${TMPDIR:-/tmp}/capstan-kill-anywhere.XXXXXX")"
trap 'rm -f "$log"' EXIT
# The suite's own lines as they come: the seed, each violation, the summary.
set +o pipefail
swift test --skip-build --filter 'KillAnywhereTests' 2>&1 | tee "$log" | grep --line-buffered '^kill-anywhere:'
status=${PIPESTATUS[0]}
if [[ $status -ne 0 ]] && ! grep -q '^kill-anywhere: seed .*violations' "$log"; then
  echo "the suite did not finish:" >&2
  tail -40 "$log" >&2
fi
exit "$status"
