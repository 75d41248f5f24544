#!/usr/bin/env bash
# The quick start, end to end: builds Capstan, makes a throw-away Git repository from
# examples/quickstart, applies it (trains, validates and promotes the churn model), shows the
# status, commits a parameter change, shows the plan (which says why it retrains), applies it and
# shows the history. Everything lives in a temporary folder, removed at the end unless KEEP=1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

echo "==> building capstan"
swift build --product capstan >/dev/null
capstan="$(swift build --show-bin-path)/capstan"

work="$(mktemp -d "${TMPDIR:-/tmp}/capstan-quickstart.XXXXXX")"
if [[ "${KEEP:-0}" != 1 ]]; then trap 'rm -rf "$work"' EXIT; fi
repo="$work/models-repo"
export CAPSTAN_STATE_DIR="$work/state"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "a throw-away model repository made from examples/quickstart"
cp -R "$here/examples/quickstart" "$repo"
git -C "$repo" init -q -b main
git -C "$repo" -c user.name=Quickstart -c user.email=quickstart@example.invalid add -A
git -C "$repo" -c user.name=Quickstart -c user.email=quickstart@example.invalid commit -q -m "Churn model"
echo "$repo (state in $CAPSTAN_STATE_DIR)"

step "apply: register, train, validate and promote"
run "$capstan" apply --repo "$repo"

step "status"
run "$capstan" status

step "apply again: nothing to do"
run "$capstan" apply --repo "$repo"

step "commit a parameter change (epochs 20 -> 200)"
sed -i "s/epochs: 20,/epochs: 200,/" "$repo/models/churn/model.yaml"
git -C "$repo" -c user.name=Quickstart -c user.email=quickstart@example.invalid commit -q -am "More epochs"
git -C "$repo" log --oneline -2

step "plan: what apply would do, and why"
run "$capstan" plan --repo "$repo"

step "apply the change"
run "$capstan" apply --repo "$repo"

step "status"
run "$capstan" status

step "history"
run "$capstan" history

echo
if [[ "${KEEP:-0}" == 1 ]]; then
  echo "Kept $work. Try: CAPSTAN_STATE_DIR=$CAPSTAN_STATE_DIR $capstan status"
else
  echo "Done. Run with KEEP=1 to keep the repository and state for exploring."
fi
