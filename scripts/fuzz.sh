#!/usr/bin/env bash
# Fuzzes Capstan's untrusted-input parsers with libFuzzer and AddressSanitizer (docs/security.md,
# "Fuzzing"):
#   manifest      bytes → files → YAML → manifests → validation → diagnostics as printed
#   webhook       signature headers + body → the webhook authenticator's verdict
#   gateway-head  bytes on a client connection → NIO's HTTP decoder → the gateway's rules
#                 (routing by /<deployment>/, the head sent upstream, the head sent back)
# Each target checks invariants, not only crashes (Sources/Fuzz/CapstanFuzz).
#
#   scripts/fuzz.sh [TARGET|all] [SECONDS]     (default: all 60)
#
# Builds FuzzManifest, FuzzWebhook and FuzzGatewayHead with -sanitize=fuzzer,address -DFUZZING
# into .build-fuzz (a plain `swift build` builds them without libFuzzer, as input replayers),
# seeds each corpus from the test fixtures (the manifest fixture folders and examples/, and
# Tests/CapstanFuzzTests/Seeds), adds every past finding (Tests/CapstanFuzzTests/Regressions),
# runs each target for SECONDS and prints executions, new inputs and findings per target.
# The corpus grows across runs in .build-fuzz/corpus/TARGET. A finding is kept in
# .build-fuzz/findings/TARGET/ and the script exits 1; reproduce it without libFuzzer with
# `swift run FuzzManifest FILE`, fix the code, then add the file to
# Tests/CapstanFuzzTests/Regressions/TARGET/ (FuzzRegressionTests runs it on every swift test).
set -euo pipefail
cd "$(dirname "$0")/.."

which=${1:-all}
seconds=${2:-60}
scratch=.build-fuzz
declare -A products=([manifest]=FuzzManifest [webhook]=FuzzWebhook [gateway-head]=FuzzGatewayHead)
if [[ $which == all ]]; then
  targets=(manifest webhook gateway-head)
elif [[ -n ${products[$which]:-} ]]; then
  targets=("$which")
else
  echo "usage: scripts/fuzz.sh [manifest|webhook|gateway-head|all] [SECONDS]" >&2
  exit 64
fi
[[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || { echo "SECONDS must be a positive whole number" >&2; exit 64; }

flags=(--scratch-path "$scratch" --disable-index-store -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING)
mkdir -p "$scratch"
build_start=$(date +%s)
for target in "${targets[@]}"; do
  echo "building ${products[$target]} (-sanitize=fuzzer,address) ..." >&2
  if ! swift build "${flags[@]}" --product "${products[$target]}" >"$scratch/build.log" 2>&1; then
    grep -v "Cannot export local symbol" "$scratch/build.log" | tail -30 >&2
    echo "fuzz build failed (full log: $scratch/build.log)" >&2
    exit 2
  fi
done
bin=$(swift build "${flags[@]}" --show-bin-path)
build_seconds=$(( $(date +%s) - build_start ))
echo "fuzz build: ${build_seconds} s" >&2

# Seeds, written afresh each run.
seeds=$scratch/seeds
rm -rf "$seeds"
mkdir -p "$seeds"/{manifest,webhook,gateway-head}
python3 - "$seeds/manifest" <<'PY'
# Each manifest fixture folder as one input ("#@@ PATH" before each file, as ManifestFuzz reads
# it), and each of its files alone. Symlinks are skipped: fixtures point at /proc on purpose.
import hashlib, os, sys
out = sys.argv[1]
folders = ["examples/quickstart"]
for kind in ("valid", "invalid"):
    base = os.path.join("Tests/CapstanManifestsTests/Fixtures", kind)
    folders += sorted(os.path.join(base, d) for d in os.listdir(base))
def write(data):
    open(os.path.join(out, hashlib.sha1(data).hexdigest()), "wb").write(data)
for folder in folders:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in names:
            path = os.path.join(root, name)
            if name.endswith((".yaml", ".yml")) and os.path.isfile(path) and not os.path.islink(path):
                files.append(os.path.relpath(path, folder))
    joined = b""
    for rel in sorted(files):
        data = open(os.path.join(folder, rel), "rb").read()
        write(data)
        joined += b"#@@ " + rel.encode() + b"\n" + data + (b"" if data.endswith(b"\n") else b"\n")
    if joined:
        write(joined)
PY
# A dictionary of the manifest schema's words (field names, enum values) for the manifest target.
python3 - docs/capstan.schema.json "$seeds/manifest.dict" <<'PY'
import json, sys
words = {"apiVersion: capstan/v1", "kind: Model", "kind: Deployment", "kind: Config", "---", "&a", "*a", "!!str", "\"", "'"}
def walk(node):
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            words.add(key + ":")
        for value in node.get("enum", []):
            words.add(str(value))
        for value in node.values():
            walk(value)
    elif isinstance(node, list):
        for value in node:
            walk(value)
walk(json.load(open(sys.argv[1])))
with open(sys.argv[2], "w") as out:
    for word in sorted(words):
        out.write('"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"\n')
PY
cp Tests/CapstanFuzzTests/Seeds/webhook/* "$seeds/webhook/"
cp Tests/CapstanFuzzTests/Seeds/gateway-head/* "$seeds/gateway-head/"

status=0
results=()
for target in "${targets[@]}"; do
  corpus=$scratch/corpus/$target
  findings=$scratch/findings/$target
  regressions=Tests/CapstanFuzzTests/Regressions/$target
  mkdir -p "$corpus" "$findings" "$regressions"
  before=$(find "$findings" -type f | wc -l)
  log=$scratch/$target.log
  echo "fuzzing $target for ${seconds} s ..." >&2
  # Leak checks are off: Swift's lazily initialized globals (the manifest schema) read as leaks.
  # The Swift backtracer is off: libFuzzer reports the crash and keeps the input itself.
  extra=()
  [[ $target == manifest ]] && extra=(-dict="$seeds/manifest.dict")
  set +e
  SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 \
    "$bin/${products[$target]}" "$corpus" "$seeds/$target" "$regressions" "${extra[@]}" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$findings/" >"$log" 2>&1
  code=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  added=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  found=$(( $(find "$findings" -type f | wc -l) - before ))
  results+=("$(printf '%-13s %7ss %12s %9s %8s %9s %9s' "$target" "$seconds" "${runs:-?}" "${rate:-?}" "${added:-?}" "${rss:-?}" "$found")")
  if (( code != 0 || found > 0 )); then
    status=1
    echo "$target: finding (libFuzzer exit $code); log: $log" >&2
    grep -E "invariant violated|^ERROR|SUMMARY|Test unit written" -A3 "$log" | head -40 >&2
    find "$findings" -type f -newer "$seeds" | sed "s|^|  kept: |" >&2
  fi
done

printf '\n%-13s %8s %12s %9s %8s %9s %9s\n' target time executions "exec/s" "new" "peak MB" findings
printf '%s\n' "${results[@]}"
echo "fuzz build took ${build_seconds} s; corpora in $scratch/corpus, findings in $scratch/findings"
exit $status
