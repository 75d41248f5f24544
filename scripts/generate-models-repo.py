#!/usr/bin/env python3
"""Generates a Git repository of N models with in-repository inputs, for `scripts/bench-plan.sh`.

    python3 scripts/generate-models-repo.py repo OUT_DIR --models N
        OUT_DIR/capstan.yaml (manifests: [models]), models/m<i>/model.yaml, models/m<i>/train.py and
        data/m<i>.csv for i in 0..N-1, committed on branch main and packed with `git gc` as a
        clone would be (--loose: leave the 3N+1 objects loose). OUT_DIR is replaced.
        --timed: models/m<i>/train.sh instead of train.py, run by bash (for scripts/bench-apply.sh:
        it starts in a millisecond or two, and records its own start and end, from bash's
        $EPOCHREALTIME, as the metrics bench_started and bench_finished, seconds since the epoch).
    python3 scripts/generate-models-repo.py seed STATE_DIR PLAN_JSON
        Brings the embedded registry in STATE_DIR/capstan.db (created by `capstan plan`, so the
        schema is Capstan's own) to what `capstan apply` leaves after a converged pass: each model
        registered, one validated version whose fingerprint and training description are taken
        from PLAN_JSON (`capstan plan --format json` against the empty registry, so the
        fingerprints are exactly Capstan's) and the champion alias on it. No training runs.
    python3 scripts/generate-models-repo.py dvc OUT_DIR --models N [--no-lock]
        In a clone of the repository with `dvc init` done: OUT_DIR/dvc.yaml with one stage per
        model (the model's script and data file as deps, output out/m<i>), the outputs, and
        dvc.lock plus the two cache objects, as `dvc commit -f` writes them (--no-lock: leave
        those to `dvc commit`).

Every model trains with the same script (one blob) on its own data file; the script writes
$CAPSTAN_OUTPUT_DIR/model.txt and {"accuracy": 0.9} to $CAPSTAN_METRICS_FILE.
"""
import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time

CONFIG = """apiVersion: capstan/v1
kind: Config
metadata:
  name: default
spec:
  manifests: [models]
"""

MODEL = """apiVersion: capstan/v1
kind: Model
metadata:
  name: m{i}
spec:
  train:
    command: [python3, train.py]
    workdir: models/m{i}
    inputs: [models/m{i}/train.py, data/m{i}.csv]
  validate:
    metrics:
      accuracy: {{min: 0.5}}
  aliases: {{champion: latest}}
"""

TRAIN = """import json
import os
import sys

# Capstan sets CAPSTAN_OUTPUT_DIR and CAPSTAN_METRICS_FILE; dvc runs it with an output folder.
out = os.environ.get("CAPSTAN_OUTPUT_DIR") or sys.argv[1]
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "model.txt"), "w") as f:
    f.write("model\\n")
metrics = os.environ.get("CAPSTAN_METRICS_FILE")
if metrics:
    with open(metrics, "w") as f:
        json.dump({"accuracy": 0.9}, f)
"""

MODEL_TIMED = MODEL.replace("command: [python3, train.py]", "command: [bash, train.sh]").replace(
    "inputs: [models/m{i}/train.py,", "inputs: [models/m{i}/train.sh,")

TRAIN_TIMED = """# Records its own start and end (bash's clock: no process is started for it).
started=$EPOCHREALTIME
echo model >"$CAPSTAN_OUTPUT_DIR/model.txt"
printf '{"accuracy": 0.9, "bench_started": %s, "bench_finished": %s}\\n' "$started" "$EPOCHREALTIME" >"$CAPSTAN_METRICS_FILE"
"""

GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", "-c", "gc.auto=0"]


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def repo(args):
    out = args.out
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "data"))
    write(os.path.join(out, "capstan.yaml"), CONFIG)
    for i in range(args.models):
        folder = os.path.join(out, "models", f"m{i}")
        os.makedirs(folder)
        if args.timed:
            write(os.path.join(folder, "model.yaml"), MODEL_TIMED.format(i=i))
            write(os.path.join(folder, "train.sh"), TRAIN_TIMED)
        else:
            write(os.path.join(folder, "model.yaml"), MODEL.format(i=i))
            write(os.path.join(folder, "train.py"), TRAIN)
        write(os.path.join(out, "data", f"m{i}.csv"), f"x,y\n{i},{i % 2}\n")
    subprocess.run(["git", "init", "-q", "-b", "main", out], check=True)
    subprocess.run(GIT + ["-C", out, "add", "-A"], check=True)
    subprocess.run(GIT + ["-C", out, "commit", "-qm", f"generated {args.models} models"], check=True)
    if not args.loose:
        subprocess.run(GIT + ["-C", out, "gc", "-q"], check=True)
    print(f"{out}: {args.models} models, {3 * args.models + 1} files, committed" + (" (objects loose)" if args.loose else " and packed"))


def seed(args):
    with open(args.plan) as f:
        plan = json.load(f)
    trains = [c for c in plan["changes"] if c["action"] == "train"]
    if not trains:
        sys.exit("seed: the plan has no train entries; seed an empty registry")
    db = sqlite3.connect(os.path.join(args.state, "capstan.db"))
    db.execute("PRAGMA foreign_keys = ON")
    if db.execute("SELECT COUNT(*) FROM versions").fetchone()[0]:
        sys.exit("seed: the registry already holds versions")
    now = int(time.time() * 1000)
    commit = plan["commit"]
    gates = '[{"detail":"accuracy = 0.9","gate":"accuracy >= 0.5","passed":true}]'

    def swift_json(value):  # JSONEncoder with .sortedKeys: compact, "/" escaped
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).replace("/", "\\/")

    with db:
        for t in trains:
            name, tr = t["name"], t["training"]
            # The training description as the registry stores it (Swift's Codable form, sorted keys).
            training = swift_json({
                "command": tr["command"], "env": tr["env"], "inputs": tr["inputs"], "params": tr["params"],
                "secretEnv": tr["secret_env"], "workdir": tr["workdir"],
            })
            db.execute("INSERT INTO models (name, description, labels, created_at, updated_at) VALUES (?, '', '{}', ?, ?)",
                       (name, now, now))
            db.execute("""INSERT INTO versions (model, number, status, fingerprint, commit_id, params, metrics,
                              artifact_digest, artifact_path, gate_results, created_at, tags, attempts, training)
                          VALUES (?, 1, 'validated', ?, ?, ?, '{"accuracy":0.9}', NULL, NULL, ?, ?, '{}', 1, ?)""",
                       (name, t["fingerprint"], commit, swift_json(tr["params"]), gates, now, training))
            db.execute("INSERT INTO aliases (model, alias, version, updated_at) VALUES (?, 'champion', 1, ?)", (name, now))
            db.execute("""INSERT INTO alias_history (model, alias, from_version, to_version, at, commit_id, reason)
                          VALUES (?, 'champion', NULL, 1, ?, ?, 'seeded by scripts/generate-models-repo.py')""",
                       (name, now, commit))
    db.close()
    print(f"{args.state}: seeded {len(trains)} models, each with a validated v1 and champion → v1")


def md5(path):
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def dvc(args):
    """dvc.yaml, the outputs, and what `dvc commit -f` would record (dvc.lock, the cache objects).

    `dvc commit` itself is quadratic in the number of outputs in a Git repository (for each
    output, `Output.ignore` scans the Git index): it takes about a minute for 1,000 stages here and
    did not finish in 12 minutes for 10,000. Writing the lock directly gives byte for byte what
    dvc 3 writes (checked against `dvc commit -f` at 1,000 stages), and `dvc status` verifies it:
    a wrong hash would show as a changed stage.
    """
    out = args.out
    model = "model\n"
    model_md5 = hashlib.md5(model.encode()).hexdigest()
    # A directory's hash: the md5 of its sorted listing as dvc serializes it, plus ".dir".
    listing = json.dumps([{"md5": model_md5, "relpath": "model.txt"}], sort_keys=True)
    dir_md5 = hashlib.md5(listing.encode()).hexdigest() + ".dir"
    stages = ["stages:"]
    lock = ["schema: '2.0'", "stages:"]
    for i in range(args.models):
        deps = [f"models/m{i}/train.py", f"data/m{i}.csv"]
        stages += [
            f"  m{i}:",
            f"    cmd: python3 models/m{i}/train.py out/m{i}",
            f"    deps: [{', '.join(deps)}]",
            f"    outs: [out/m{i}]",
        ]
        lock += [f"  m{i}:", f"    cmd: python3 models/m{i}/train.py out/m{i}", "    deps:"]
        for dep in sorted(deps):
            path = os.path.join(out, dep)
            lock += [f"    - path: {dep}", "      hash: md5", f"      md5: {md5(path)}",
                     f"      size: {os.path.getsize(path)}"]
        lock += ["    outs:", f"    - path: out/m{i}", "      hash: md5", f"      md5: {dir_md5}",
                 f"      size: {len(model)}", "      nfiles: 1"]
        folder = os.path.join(out, "out", f"m{i}")
        os.makedirs(folder, exist_ok=True)
        write(os.path.join(folder, "model.txt"), model)
    write(os.path.join(out, "dvc.yaml"), "\n".join(stages) + "\n")
    if not args.no_lock:
        write(os.path.join(out, "dvc.lock"), "\n".join(lock) + "\n")
        cache = os.path.join(out, ".dvc", "cache", "files", "md5")
        for name, content in ((model_md5, model), (dir_md5, listing)):
            os.makedirs(os.path.join(cache, name[:2]), exist_ok=True)
            path = os.path.join(cache, name[:2], name[2:])
            write(path, content)
            os.chmod(path, 0o444)
    print(f"{out}/dvc.yaml: {args.models} stages, outputs" + ("" if args.no_lock else ", dvc.lock and cache") + " written")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("repo")
    p.add_argument("out")
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--loose", action="store_true", help="leave the objects loose (default: git gc, as a clone is packed)")
    p.add_argument("--timed", action="store_true", help="train.sh run by bash, recording its own start and end in the metrics")
    p.set_defaults(run=repo)
    p = sub.add_parser("seed")
    p.add_argument("state")
    p.add_argument("plan")
    p.set_defaults(run=seed)
    p = sub.add_parser("dvc")
    p.add_argument("out")
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--no-lock", action="store_true", help="only dvc.yaml and the outputs (for `dvc commit`)")
    p.set_defaults(run=dvc)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
