import json, os

params = json.load(open(os.environ["CAPSTAN_PARAMS_FILE"]))
os.makedirs(os.environ["CAPSTAN_OUTPUT_DIR"], exist_ok=True)
with open(os.path.join(os.environ["CAPSTAN_OUTPUT_DIR"], "model.json"), "w") as f:
    json.dump(params, f)
with open(os.environ["CAPSTAN_METRICS_FILE"], "w") as f:
    json.dump({"accuracy": 0.91}, f)
