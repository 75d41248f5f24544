#!/bin/sh
# Serves the version's MLflow model with MLflow's own scoring server (POST /invocations, GET /ping),
# on the port the serving agent gives. --env-manager local: in this Python environment, which has
# what train.py used (mlflow, scikit-learn).
exec mlflow models serve -m "$CAPSTAN_MODEL_DIR" --env-manager local -h 127.0.0.1 -p "$PORT" --workers 1
