#!/usr/bin/env python3
"""Generates a repository with many Model and Deployment manifests, for benchmarks.

    python3 scripts/generate-manifests.py OUT_DIR [--models N] [--per-file K] [--folders F]

Writes OUT_DIR/capstan.yaml, N models and N deployments (each model with a deployment) in files
of K models + K deployments, spread over F folders, plus the training inputs the models name, so
the result validates cleanly.
"""
import argparse
import os
import shutil

MODEL = """apiVersion: capstan/v1
kind: Model
metadata:
  name: {name}
  labels: {{team: team-{team}, tier: "{tier}"}}
spec:
  description: Generated model number {i} for benchmarks.
  train:
    command: [python3, train.py, --model, {name}]
    workdir: {folder}
    inputs:
      - {folder}/code
      - {folder}/data/{name}.csv
      - {{uri: "s3://bucket/events/{name}/", version: "2026-11-{day:02d}"}}
    params: {{learning_rate: 0.{lr}, epochs: {epochs}, layers: [64, 32], optimizer: {{name: adam, beta: 0.9}}}}
    env: {{PYTHONHASHSEED: "0", SHARD: "{i}"}}
    secretEnv: {{API_TOKEN: CAPSTAN_SECRET_API_TOKEN}}
    timeout: 30m
  validate:
    metrics:
      accuracy: {{min: 0.90}}
      p95_latency_ms: {{max: 50}}
    noRegressionAgainst: champion
    tolerance: {{accuracy: 0.005}}
    command: [python3, evaluate.py]
  serve:
    command: [python3, serve.py]
    workdir: {folder}
    readiness: {{path: /healthz, timeout: 60s}}
  aliases:
    champion: {champion}
    candidate: latest
  retention: {{keepVersions: 10}}
---
apiVersion: capstan/v1
kind: Deployment
metadata:
  name: {name}-prod
spec:
  model: {name}
  alias: champion
  replicas: 1
  strategy:
    canary:
      steps:
        - {{weight: 10, pause: 2m}}
        - {{weight: 50, pause: 5m}}
      analysis:
        interval: 15s
        minRequests: 50
        maxErrorRate: 0.01
        maxLatencyP95: 250ms
"""

CONFIG = """apiVersion: capstan/v1
kind: Config
metadata:
  name: default
spec:
  manifests: [models]
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--models", type=int, default=10000)
    parser.add_argument("--per-file", type=int, default=50)
    parser.add_argument("--folders", type=int, default=100)
    args = parser.parse_args()

    if os.path.exists(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)
    with open(os.path.join(args.out, "capstan.yaml"), "w") as f:
        f.write(CONFIG)

    per_folder = max(1, -(-args.models // args.folders))
    files = {}
    for i in range(args.models):
        group = i // per_folder
        folder = f"models/group-{group:03d}"
        name = f"model-{i:05d}"
        doc = MODEL.format(name=name, i=i, team=i % 17, tier=i % 3, folder=folder, day=1 + i % 28,
                           lr=1 + i % 9, epochs=10 + i % 50, champion=1 + i % 7)
        key = (folder, (i % per_folder) // args.per_file)
        files.setdefault(key, []).append(doc)
        data = os.path.join(args.out, folder, "data")
        os.makedirs(data, exist_ok=True)
        with open(os.path.join(data, f"{name}.csv"), "w") as f:
            f.write(f"x,y\n{i},1\n")
        code = os.path.join(args.out, folder, "code")
        if not os.path.exists(code):
            os.makedirs(code)
            with open(os.path.join(code, "train.py"), "w") as f:
                f.write("print('train')\n")
    for (folder, chunk), docs in files.items():
        with open(os.path.join(args.out, folder, f"models-{chunk:03d}.yaml"), "w") as f:
            f.write("---\n".join(docs))
    print(f"{args.out}: {args.models} models and {args.models} deployments in {len(files)} files, {args.folders} folders")


if __name__ == "__main__":
    main()
