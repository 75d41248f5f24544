#!/usr/bin/env bash
# Rewrites the expected plans of the golden plan corpus (Tests/CapstanCLITests/GoldenPlans/*/
# expected.txt and expected.json) from what the planner and the renderer produce now, for every
# case (a new case's expected files are written the first time).
#
# Use it after a deliberate change of the planner or of the plan's text or JSON rendering, then
# read `git diff Tests/CapstanCLITests/GoldenPlans` as part of the change: every changed line is
# a plan that reads differently to users. Never run it just to make a failing test pass.
set -euo pipefail
cd "$(dirname "$0")/.."
CAPSTAN_UPDATE_GOLDEN=1 swift test --filter "GoldenPlanTests/planMatchesTheExpectedFiles"
git status --short -- Tests/CapstanCLITests/GoldenPlans
