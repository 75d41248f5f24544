"""Trains a churn classifier (logistic regression) with the Python standard library only.

Capstan runs this with:
  CAPSTAN_OUTPUT_DIR    folder to write the model into
  CAPSTAN_METRICS_FILE  file to write a JSON object of metrics into
  CAPSTAN_PARAMS_FILE   JSON file with spec.train.params
Run by hand, it writes to ./out.
"""
import csv
import json
import math
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "data", "churn.csv")
FEATURES = ["tenure_months", "monthly_charges", "support_calls"]


def load_params():
    path = os.environ.get("CAPSTAN_PARAMS_FILE")
    params = {}
    if path:
        with open(path) as f:
            params = json.load(f)
    return {
        "learning_rate": float(params.get("learning_rate", 0.1)),
        "epochs": int(params.get("epochs", 200)),
        "seed": int(params.get("seed", 7)),
    }


def load_rows():
    with open(DATA, newline="") as f:
        rows = list(csv.DictReader(f))
    xs = [[float(r[name]) for name in FEATURES] for r in rows]
    ys = [int(r["churned"]) for r in rows]
    return xs, ys


def standardize(xs):
    cols = list(zip(*xs))
    means = [sum(c) / len(c) for c in cols]
    stds = [math.sqrt(sum((v - m) ** 2 for v in c) / len(c)) or 1.0 for c, m in zip(cols, means)]
    return [[(v - m) / s for v, m, s in zip(row, means, stds)] for row in xs], means, stds


def sigmoid(z):
    if z < -60:
        return 0.0
    if z > 60:
        return 1.0
    return 1.0 / (1.0 + math.exp(-z))


def main():
    params = load_params()
    xs, ys = load_rows()
    xs, means, stds = standardize(xs)
    order = list(range(len(xs)))
    random.Random(params["seed"]).shuffle(order)
    cut = int(len(order) * 0.75)
    train, test = order[:cut], order[cut:]

    weights = [0.0] * len(FEATURES)
    bias = 0.0
    lr = params["learning_rate"]
    for _ in range(params["epochs"]):
        gw = [0.0] * len(weights)
        gb = 0.0
        for i in train:
            err = sigmoid(sum(w * x for w, x in zip(weights, xs[i])) + bias) - ys[i]
            gw = [g + err * x for g, x in zip(gw, xs[i])]
            gb += err
        weights = [w - lr * g / len(train) for w, g in zip(weights, gw)]
        bias -= lr * gb / len(train)

    correct, loss = 0, 0.0
    for i in test:
        p = sigmoid(sum(w * x for w, x in zip(weights, xs[i])) + bias)
        correct += int((p >= 0.5) == bool(ys[i]))
        p = min(max(p, 1e-9), 1 - 1e-9)
        loss -= ys[i] * math.log(p) + (1 - ys[i]) * math.log(1 - p)
    metrics = {"accuracy": round(correct / len(test), 4), "log_loss": round(loss / len(test), 4)}

    out = os.environ.get("CAPSTAN_OUTPUT_DIR", os.path.join(os.getcwd(), "out"))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "model.json"), "w") as f:
        json.dump({"features": FEATURES, "means": means, "stds": stds, "weights": weights, "bias": bias}, f, indent=2)
    metrics_file = os.environ.get("CAPSTAN_METRICS_FILE", os.path.join(out, "metrics.json"))
    with open(metrics_file, "w") as f:
        json.dump(metrics, f)
    print(f"trained on {len(train)} rows, tested on {len(test)}: accuracy={metrics['accuracy']} log_loss={metrics['log_loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
