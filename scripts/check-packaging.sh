#!/usr/bin/env bash
# Checks the packaging in manifests/ and examples/github-actions/ without Docker or a cluster:
#
#   1. every YAML file parses (PyYAML);
#   2. Kubernetes objects against the API schemas (kubernetes-validate, when installed), the
#      kustomization renders (kubectl, when installed), the workflow against GitHub's workflow
#      schema (check-jsonschema's built-in copy, when installed) and its script's syntax (node);
#   3. the Debian packages the Dockerfile installs exist in bookworm, and the files it copies exist;
#   4. every capstan option used by the Dockerfile, the Kubernetes manifests, the systemd units,
#      env.example and the workflow exists in `capstan <command> --help`;
#   5. the systemd units with `systemd-analyze verify` (when present), in a temporary root with a
#      stand-in binary at /usr/local/bin/capstan; any warning fails;
#   6. the workflow's own validate / state / plan step scripts, extracted from the YAML and run
#      with bash against a temporary Git copy of examples/quickstart: validate exits 0, plan
#      exits 2 (changes) and its comment is Markdown with the marker.
#
# CAPSTAN=path/to/capstan (default: $(swift build --show-bin-path)/capstan, built beforehand).
# Prints what it checked; exits 1 on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

capstan=${CAPSTAN:-"$(swift build --show-bin-path)/capstan"}
[ -x "$capstan" ] || { echo "check-packaging: no capstan binary at $capstan (build it, or set CAPSTAN)" >&2; exit 1; }
capstan=$(cd "$(dirname "$capstan")" && pwd)/$(basename "$capstan")

work=$(mktemp -d "${TMPDIR:-/tmp}/capstan-packaging.XXXXXX")
trap 'rm -rf "$work"' EXIT

ok() { printf 'ok    %s\n' "$*"; }
skip() { printf 'skip  %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*" >&2; exit 1; }

mapfile -t yaml_files < <(find manifests examples/github-actions -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
[ ${#yaml_files[@]} -gt 0 ] || fail "no YAML files under manifests/ or examples/github-actions/"

# 1. YAML
python3 - "${yaml_files[@]}" <<'EOF' || fail "YAML does not parse"
import sys, yaml
for path in sys.argv[1:]:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    print(f"ok    {path}: parses ({len(docs)} document{'s' if len(docs) != 1 else ''})")
EOF

# 2. Schemas
k8s=(manifests/kubernetes/common.yaml manifests/kubernetes/controller.yaml manifests/kubernetes/cronjob.yaml)
if command -v kubernetes-validate >/dev/null 2>&1; then
  kubernetes-validate --strict --quiet "${k8s[@]}" || fail "Kubernetes objects do not match the API schemas"
  ok "Kubernetes objects match the API schemas, strictly (kubernetes-validate): ${k8s[*]}"
else
  skip "Kubernetes API schemas (pip install kubernetes-validate)"
fi
if command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
  kubectl kustomize manifests/kubernetes > "$work/kustomized.yaml" || fail "kubectl kustomize manifests/kubernetes"
  ok "kustomization renders ($(grep -c '^kind:' "$work/kustomized.yaml") objects)"
else
  skip "kustomization (no kubectl)"
fi
workflow=examples/github-actions/capstan-plan.yml
if command -v check-jsonschema >/dev/null 2>&1; then
  check-jsonschema --builtin-schema vendor.github-workflows "$workflow" >/dev/null || fail "$workflow does not match GitHub's workflow schema"
  ok "$workflow matches GitHub's workflow schema (check-jsonschema)"
else
  skip "GitHub workflow schema (pip install check-jsonschema)"
fi

# The Debian packages the Dockerfile installs exist in bookworm (this machine's apt lists).
if command -v apt-cache >/dev/null 2>&1 && apt-cache show tini >/dev/null 2>&1 \
   && grep -q 'VERSION_CODENAME=bookworm' /etc/os-release; then
  mapfile -t debs < <(python3 - <<'PY'
import re
text = open("manifests/Dockerfile").read().replace("\\\n", " ")
for line in text.splitlines():
    m = re.search(r"apt-get -q install -y --no-install-recommends ([^&]*)", line)
    if m:
        print("\n".join(m.group(1).split()))
PY
)
  [ ${#debs[@]} -gt 5 ] || fail "found no apt-get install lines in manifests/Dockerfile"
  for deb in "${debs[@]}"; do apt-cache show "$deb" >/dev/null 2>&1 || fail "manifests/Dockerfile installs $deb, which Debian 12 does not have"; done
  ok "manifests/Dockerfile: Debian 12 has ${debs[*]}"
else
  skip "Dockerfile packages (no bookworm apt lists here; run apt-get update)"
fi

# Every file the Dockerfile copies from the build context exists (globs like Package.resolve[d]
# may match nothing, by design).
missing_copies=$(python3 - <<'PY'
import glob, re
for line in open("manifests/Dockerfile"):
    m = re.match(r"COPY (?!--from)(.+)", line.strip())
    if m:
        for src in m.group(1).split()[:-1]:
            if not any(c in src for c in "*?[") and not glob.glob(src):
                print(src)
PY
)
[ -z "$missing_copies" ] || fail "manifests/Dockerfile copies what the repository does not have: $missing_copies"
ok "manifests/Dockerfile: every COPY source exists"

# Step scripts of the workflow, by step name, into $work/steps/.
mkdir -p "$work/steps"
python3 - "$workflow" "$work/steps" <<'EOF' || fail "cannot read the workflow's steps"
import re, sys, yaml
workflow, out = sys.argv[1], sys.argv[2]
steps = yaml.safe_load(open(workflow))["jobs"]["plan"]["steps"]
for step in steps:
    name = re.sub(r"[^a-z0-9]+", "-", step.get("name", "").lower()).strip("-")
    if "run" in step:
        open(f"{out}/{name}.sh", "w").write(step["run"])
    elif step.get("uses", "").startswith("actions/github-script"):
        open(f"{out}/{name}.js", "w").write("(async () => {\n" + step["with"]["script"] + "\n})();\n")
EOF
if command -v node >/dev/null 2>&1; then
  for js in "$work"/steps/*.js; do node --check "$js" || fail "the workflow's github-script does not parse ($js)"; done
  ok "the workflow's github-script parses (node --check)"
else
  skip "github-script syntax (no node)"
fi

# 3. Options against `capstan <command> --help`
python3 - "$capstan" "$work/steps" <<'EOF' || fail "an option in the packaging is not in capstan's --help"
import glob, re, shlex, subprocess, sys, yaml
capstan, steps = sys.argv[1], sys.argv[2]
uses = []   # (where, command, [flags])

def flags(tokens):
    return [t.split("=", 1)[0] for t in tokens if t.startswith("--")]

def from_argv(where, argv):
    argv = [a for a in argv if a]
    if argv and argv[0] in ("run", "apply", "plan", "validate", "serve", "status", "diff"):
        uses.append((where, argv[0], flags(argv[1:])))

# Dockerfile CMD
for line in open("manifests/Dockerfile"):
    if line.startswith("CMD ["):
        from_argv("manifests/Dockerfile CMD", yaml.safe_load(line[4:]))
# Kubernetes containers (commented-out options too: they are meant to be uncommented)
for path in ["manifests/kubernetes/controller.yaml", "manifests/kubernetes/cronjob.yaml"]:
    text = open(path).read()
    for doc in yaml.safe_load_all(text):
        spec = doc.get("spec", {})
        pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
        for c in (pod or {}).get("containers", []):
            commented = re.findall(r"^\s*#\s*-\s*(--[a-z-]+)", text, re.M)
            from_argv(f"{path} ({doc['kind']})", c.get("args", []) + commented)
# systemd ExecStart and env.example
for path in glob.glob("manifests/systemd/*.service"):
    for line in open(path):
        if line.startswith("ExecStart="):
            argv = shlex.split(line.split("=", 1)[1])
            from_argv(path, argv[1:])
for line in open("manifests/systemd/env.example"):
    m = re.match(r"CAPSTAN_(RUN|APPLY)_ARGS=(.*)", line)
    if m:
        from_argv("manifests/systemd/env.example", [m.group(1).lower()] + shlex.split(m.group(2)))
# The workflow's scripts
for path in glob.glob(f"{steps}/*.sh"):
    script = open(path).read().replace("\\\n", " ")
    for m in re.finditer(r"(?:^|\s)capstan\s+([a-z]+)([^\n;|>]*)", script):
        from_argv(f"workflow step {path.rsplit('/', 1)[1]}", [m.group(1)] + m.group(2).split())

helps, missing = {}, []
for where, command, used in uses:
    if command not in helps:
        p = subprocess.run([capstan, command, "--help"], capture_output=True, text=True)
        # An unknown command prints the top-level help (exit 0): look for the command's own usage.
        ours = p.returncode == 0 and f"USAGE: capstan {command} " in p.stdout
        helps[command] = set(re.findall(r"--[a-z][a-z0-9-]*", p.stdout)) if ours else None
    known = helps[command]
    if known is None:
        print(f"skip  {where}: this capstan has no `{command}` command (an older build?)")
        continue
    bad = [f for f in used if f not in known]
    if bad:
        missing.append(f"{where}: capstan {command} has no {', '.join(bad)}")
    else:
        print(f"ok    {where}: capstan {command} {' '.join(sorted(set(used)))}")
if missing:
    print("\n".join(missing), file=sys.stderr)
    sys.exit(1)
EOF

# 4. systemd
if command -v systemd-analyze >/dev/null 2>&1; then
  sroot="$work/sysroot"
  mkdir -p "$sroot/usr/local/bin" "$sroot/etc/systemd/system" "$sroot/usr/lib/systemd"
  cp -a /usr/lib/systemd/system "$sroot/usr/lib/systemd/"
  printf '#!/bin/sh\nexit 0\n' > "$sroot/usr/local/bin/capstan"
  chmod +x "$sroot/usr/local/bin/capstan"
  units=()
  for unit in manifests/systemd/*.service manifests/systemd/*.timer; do
    cp "$unit" "$sroot/etc/systemd/system/"
    units+=("$sroot/etc/systemd/system/$(basename "$unit")")
  done
  out=$(SYSTEMD_LOG_TARGET=console systemd-analyze verify --root="$sroot" "${units[@]}" 2>&1) || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify warns: $out"
  ok "systemd-analyze verify: $(cd manifests/systemd && echo *.service *.timer) (no warnings)"
else
  skip "systemd units (no systemd-analyze)"
fi

# 5. The workflow's steps against a Git copy of examples/quickstart
repo="$work/repo"
cp -R examples/quickstart "$repo"
git -C "$repo" init -q
git -C "$repo" add -A
git -C "$repo" -c user.name=check -c user.email=check@example.invalid commit -q -m "quickstart"
mkdir -p "$work/bin" "$work/runner"
ln -s "$capstan" "$work/bin/capstan"
export PATH="$work/bin:$PATH" RUNNER_TEMP="$work/runner" GITHUB_WORKSPACE="$repo"
export GITHUB_OUTPUT="$work/github-output" GITHUB_ENV="$work/github-env" GITHUB_STEP_SUMMARY="$work/summary.md"
export GITHUB_SHA HEAD_SHA CAPSTAN_COMMIT=0123456789abcdef0123456789abcdef01234567
GITHUB_SHA=$(git -C "$repo" rev-parse HEAD)
HEAD_SHA=$GITHUB_SHA
: > "$GITHUB_OUTPUT"; : > "$GITHUB_ENV"
step() { (cd "$repo" && CAPSTAN_STATE_URL="" bash -eo pipefail "$work/steps/$1.sh") > "$work/$1.out" 2>&1; }

step validate-the-pull-request-s-manifests || { cat "$work/validate-the-pull-request-s-manifests.out" >&2; fail "workflow step 'Validate' exited non-zero on examples/quickstart"; }
ok "workflow step 'Validate the pull request's manifests': capstan validate --repo . --ref <sha> --format github exits 0"

step fetch-production-s-state || { cat "$work/fetch-production-s-state.out" >&2; fail "workflow step 'Fetch production's state'"; }
while IFS='=' read -r name value; do [ -n "$name" ] && export "$name=$value"; done < "$GITHUB_ENV"
if [ ! -d "$RUNNER_TEMP/capstan-state" ] || [ -z "${against:-}" ]; then fail "'Fetch production's state' did not prepare the state directory"; fi
ok "workflow step 'Fetch production's state' (no CAPSTAN_STATE_URL): planning against $against"

step plan || { cat "$work/plan.out" >&2; fail "workflow step 'Plan' failed"; }
grep -qx 'changes=true' "$GITHUB_OUTPUT" || fail "'Plan' did not report changes (exit 2) for a fresh registry: $(cat "$GITHUB_OUTPUT")"
head -1 "$repo/comment.md" | grep -qx '<!-- capstan-plan -->' || fail "comment.md does not start with the marker"
grep -q '^### Capstan plan for HEAD' "$repo/comment.md" || fail "comment.md has no Markdown plan: $(head -5 "$repo/comment.md")"
grep -qF "| \`churn\` | train a new version |" "$repo/comment.md" || fail "the plan does not train churn: $(cat "$repo/comment.md")"
cmp -s "$repo/comment.md" "$GITHUB_STEP_SUMMARY" || fail "the job summary is not the comment"
ok "workflow step 'Plan': capstan plan --repo . --ref HEAD --format markdown --detailed-exitcode exits 2; comment and summary are Markdown"

echo "packaging checks passed"
