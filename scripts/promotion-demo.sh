#!/usr/bin/env bash
# Promotion by pull request, end to end on this machine (docs/promotion.md):
#   1. a bare repository plays the remote (as GitHub would), with examples/quickstart (no
#      Deployment: the registry side only), and a clone of it plays the reviewer's laptop;
#   2. apply: v1 is trained and becomes champion; the team pins champion to 1 and changes the
#      training; apply: v2 is trained and validated, champion stays on v1;
#   3. capstan promote churn --alias champion --candidate: the branch with the pin changed is
#      pushed, and the pull request's body is printed;
#   4. the pull request is "merged" (a fast-forward of main on the remote), and apply moves
#      champion to v2.
# Everything lives in a temporary folder, removed at the end unless KEEP=1.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
. "$here/scripts/lib/packages.sh"
need_packages "the promotion demo" libgit2-dev pkg-config git:git python3:python3
if [[ -n "${CAPSTAN_BIN:-}" ]]; then
  capstan="$CAPSTAN_BIN"
else
  need_swift
  echo "==> building capstan"
  swift build --product capstan >/dev/null
  capstan="$(swift build --show-bin-path)/capstan"
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/capstan-promotion.XXXXXX")"
cleanup() { if [[ -n "${KEEP:-}" ]]; then echo "kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
export CAPSTAN_STATE_DIR="$work/state" GIT_CONFIG_GLOBAL="$work/gitconfig" GIT_CONFIG_NOSYSTEM=1
git config --global user.name "Demo Reviewer"
git config --global user.email "reviewer@example.com"
git config --global init.defaultBranch main
step() { printf '\n==> %s\n' "$*"; }

step "a remote (bare repository) and a clone of it"
git init -q --bare "$work/remote.git"
git clone -q "$work/remote.git" "$work/clone" 2>/dev/null
cd "$work/clone"
cp -R "$here/examples/quickstart/." .
rm -rf deployments
sed -i 's/manifests: \[models, deployments\]/manifests: [models]/' capstan.yaml
git add -A && git commit -q -m "models" && git push -q origin main

step "capstan apply: v1 is trained and becomes champion"
"$capstan" apply --repo "$work/remote.git" | tail -1

step "the team pins champion to v1 and trains longer; capstan apply trains v2"
sed -i 's/champion: latest/champion: 1/; s/epochs: 20,/epochs: 200,/' models/churn/model.yaml
git commit -q -am "pin champion to v1; train longer" && git push -q origin main
"$capstan" apply --repo "$work/remote.git" | tail -1
"$capstan" status | sed -n '1,6p'

step "capstan promote churn --alias champion --candidate"
"$capstan" promote churn --alias champion --candidate
git -C "$work/remote.git" branch --list 'capstan/*'

step "the pull request is merged; capstan apply moves champion"
git fetch -q origin
git merge -q --ff-only origin/capstan/promote/churn/champion-v2
git push -q origin main
"$capstan" apply --repo "$work/remote.git" | grep -E "move-alias|Apply"
"$capstan" status | sed -n '3p'
"$capstan" status | grep -q "champion → 2" || { echo "champion did not move to v2" >&2; exit 1; }
echo
echo "Promotion by pull request: done."
