#!/usr/bin/env bash
# Regenerates scripts/capstan.order, the link order scripts/build-release.sh gives lld: the names
# of the functions of the capstan binary that run when the controller works. It runs the release
# binary under Valgrind's callgrind (apt-get install valgrind) on the quick start:
#   1. `capstan run` alone, 2. `capstan run --serve` (the in-process serving agent rolls the
#   quick start's deployment out), each through its first pass, the status page, /metrics, the
#   status API, a signed and a forged webhook and a new commit, then SIGTERM;
#   3. `capstan plan`, `capstan apply` and `capstan status` (the cron variant).
# callgrind records every function that ran, however briefly; sampling profilers miss the ones
# that run once, and each of those would otherwise keep a stretch of cold code resident.
# The list is sorted (stable diffs); the order inside the hot set does not matter, that it is
# together does. Takes about 3 minutes after the build.
#
#   scripts/gen-order-file.sh && git diff --stat scripts/capstan.order
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
command -v valgrind >/dev/null || { echo "gen-order-file: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
bin="$(scripts/build-release.sh)"
work="$(mktemp -d "${TMPDIR:-/tmp}/capstan-order.XXXXXX")"
pid=""
cleanup() {
  if [[ -n "$pid" ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  [[ "${KEEP:-0}" == 1 ]] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT
# Valgrind 3.19 (Debian 12) cannot read the DWARF 5 the Swift 6 compiler emits; the symbol
# table, which is what callgrind names functions by, survives --strip-debug.
objcopy --strip-debug "$bin" "$work/capstan"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
git_in() { git -C "$1" -c user.name=capstan -c user.email=capstan@example.invalid "${@:2}"; }
callgrind=(valgrind --tool=callgrind --dump-instr=no --demangle=no)

scenario_controller() { # serve(0|1)
  local serve=$1 dir="$work/run$1"
  local http gateway admin
  http="$(free_port)"; gateway="$(free_port)"; admin="$(free_port)"
  cp -R "$root/examples/quickstart" "$dir"
  sed -i "s#http://127.0.0.1:7070#http://127.0.0.1:$admin#" "$dir/capstan.yaml"
  git_in "$dir" init -q -b main && git_in "$dir" add -A && git_in "$dir" commit -q -m quickstart
  local args=(run --repo "$dir" --state-dir "$dir/.state" --http "127.0.0.1:$http" --tick 2s
    --webhook-secret-env ORDER_WEBHOOK_SECRET --log-format json)
  [[ "$serve" == 1 ]] && args+=(--serve --gateway "127.0.0.1:$gateway" --admin "127.0.0.1:$admin")
  ORDER_WEBHOOK_SECRET=order-secret "${callgrind[@]}" --callgrind-out-file="$work/cg.run$serve.out" \
    "$work/capstan" "${args[@]}" 2>"$dir.log" &
  pid=$!
  for _ in $(seq 1 1500); do
    kill -0 "$pid" 2>/dev/null || { echo "gen-order-file: the controller exited" >&2; tail -20 "$dir.log" >&2; exit 1; }
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http/readyz")" == 200 ]] && break
    sleep 0.2
  done
  for path in / /metrics /api/v1/status /healthz /missing; do curl -s -o /dev/null "http://127.0.0.1:$http$path"; done
  python3 - "$http" <<'PY'
import hashlib, hmac, sys, urllib.request
port = sys.argv[1]
body = b'{"ref":"refs/heads/main"}'
for sig in ("sha256=" + hmac.new(b"order-secret", body, hashlib.sha256).hexdigest(), "sha256=forged"):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/git", data=body, method="POST",
                                 headers={"X-Hub-Signature-256": sig, "X-GitHub-Event": "push"})
    try:
        urllib.request.urlopen(req).read()
    except Exception:
        pass
PY
  echo "# touched by gen-order-file" >> "$dir/README.md"
  git_in "$dir" commit -qam "a new commit"
  sleep 60
  for path in / /metrics /api/v1/status; do curl -s -o /dev/null "http://127.0.0.1:$http$path"; done
  kill -TERM "$pid"; wait "$pid" || true; pid=""
  [[ -s "$work/cg.run$serve.out" ]] || { echo "gen-order-file: callgrind wrote no profile for capstan run" >&2; tail -20 "$dir.log" >&2; exit 1; }
}

scenario_cron() {
  local dir="$work/cron"
  cp -R "$root/examples/quickstart" "$dir"
  git_in "$dir" init -q -b main && git_in "$dir" add -A && git_in "$dir" commit -q -m quickstart
  "${callgrind[@]}" --callgrind-out-file="$work/cg.plan.out" "$work/capstan" plan --repo "$dir" --state-dir "$dir/.state" >/dev/null 2>&1 || true
  "${callgrind[@]}" --callgrind-out-file="$work/cg.apply.out" "$work/capstan" apply --repo "$dir" --state-dir "$dir/.state" >/dev/null 2>&1 || true
  "${callgrind[@]}" --callgrind-out-file="$work/cg.status.out" "$work/capstan" status --state-dir "$dir/.state" >/dev/null 2>&1 || true
}

echo "==> callgrind: capstan run" >&2; scenario_controller 0
echo "==> callgrind: capstan run --serve" >&2; scenario_controller 1
echo "==> callgrind: plan, apply, status" >&2; scenario_cron

python3 - "$work/capstan" "$work"/cg.*.out > "$work/order" <<'PY'
# Every function that callgrind saw run inside the capstan binary (`fn=` entries under its `ob=`).
import re, sys
binary, outs = sys.argv[1], sys.argv[2:]
ran = set()
for path in outs:
    objects, names, current = {}, {}, ""
    for line in open(path, errors="replace"):
        m = re.match(r"^(c?ob)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            if m.group(3):
                objects[m.group(2)] = m.group(3)
            if m.group(1) == "ob":
                current = objects[m.group(2)]
            continue
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            if m.group(3):
                names[m.group(2)] = m.group(3)
            if m.group(1) == "fn" and current == binary:
                ran.add(names[m.group(2)])
if len(ran) < 1000:
    sys.exit(f"gen-order-file: only {len(ran)} functions seen; callgrind did not profile the binary")
print("\n".join(sorted(ran)))
PY
LC_ALL=C sort -u "$work/order" > scripts/capstan.order
echo "scripts/capstan.order: $(wc -l < scripts/capstan.order) functions" >&2
