"""Trains a churn classifier with scikit-learn and saves it as an MLflow model.

Capstan runs this with CAPSTAN_OUTPUT_DIR (the folder to save the model into: it becomes the
MLflow version's files), CAPSTAN_METRICS_FILE (a JSON object of metrics: the gates read them,
and Capstan logs them on the MLflow run) and CAPSTAN_PARAMS_FILE (spec.train.params).
Run by hand, it writes to ./out.
"""
import json
import os
import sys

import mlflow.sklearn
import pandas as pd
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import accuracy_score, log_loss
from sklearn.model_selection import train_test_split

HERE = os.path.dirname(os.path.abspath(__file__))
FEATURES = ["tenure_months", "monthly_charges", "support_calls"]


def main():
    params = {}
    if os.environ.get("CAPSTAN_PARAMS_FILE"):
        with open(os.environ["CAPSTAN_PARAMS_FILE"]) as f:
            params = json.load(f)
    data = pd.read_csv(os.path.join(HERE, "..", "..", "data", "churn.csv"))
    x_train, x_test, y_train, y_test = train_test_split(
        data[FEATURES].astype(float), data["churned"], test_size=0.25, random_state=int(params.get("seed", 7)))
    model = GradientBoostingClassifier(n_estimators=int(params.get("n_estimators", 50)), max_depth=int(params.get("max_depth", 2)),
                                       learning_rate=float(params.get("learning_rate", 0.1)), random_state=0)
    model.fit(x_train, y_train)
    metrics = {"accuracy": round(accuracy_score(y_test, model.predict(x_test)), 4),
               "log_loss": round(log_loss(y_test, model.predict_proba(x_test)), 4)}

    out = os.environ.get("CAPSTAN_OUTPUT_DIR", os.path.join(os.getcwd(), "out"))
    # An MLflow model (MLmodel, model.pkl, conda.yaml, requirements.txt…) in the output folder:
    # `mlflow models serve` and `mlflow.pyfunc.load_model("models:/churn-sklearn@champion")` load it.
    # skops (MLflow's safe format) loads tree models only when told to trust their node storage:
    # this model is our own.
    mlflow.sklearn.save_model(model, out, input_example=x_train.head(2), skops_trusted_types=["sklearn.tree._tree.Tree"])
    with open(os.environ.get("CAPSTAN_METRICS_FILE", os.path.join(out, "..", "metrics.json")), "w") as f:
        json.dump(metrics, f)
    print(f"trained on {len(x_train)} rows, tested on {len(x_test)}: accuracy={metrics['accuracy']} log_loss={metrics['log_loss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
