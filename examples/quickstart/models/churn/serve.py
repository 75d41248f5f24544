"""Serves the churn model over HTTP with the Python standard library only.

Capstan runs this with PORT (listen on 127.0.0.1:PORT) and CAPSTAN_MODEL_DIR (the trained model).
  GET  /healthz  -> 200 once the model is loaded
  POST /predict  {"tenure_months": 3, "monthly_charges": 99.5, "support_calls": 4}
                 -> {"churn_probability": 0.87}
"""
import json
import math
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

with open(os.path.join(os.environ.get("CAPSTAN_MODEL_DIR", "out"), "model.json")) as f:
    MODEL = json.load(f)


def predict(row):
    xs = [(float(row[n]) - m) / s for n, m, s in zip(MODEL["features"], MODEL["means"], MODEL["stds"])]
    z = sum(w * x for w, x in zip(MODEL["weights"], xs)) + MODEL["bias"]
    return 1.0 / (1.0 + math.exp(-max(min(z, 60), -60)))


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, as production model servers do: one connection serves many requests. The
    # head and the body go out in two writes: without TCP_NODELAY the second one would wait for
    # the peer's delayed ACK (40 ms) on a kept-alive connection.
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/healthz":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/predict":
            self._send(404, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            row = json.loads(self.rfile.read(length) or b"{}")
            self._send(200, {"churn_probability": round(predict(row), 4)})
        except (KeyError, ValueError, TypeError) as e:
            self._send(400, {"error": f"bad request: {e}"})

    def log_message(self, fmt, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog (http.server's default is 5)


if __name__ == "__main__":
    Server(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Handler).serve_forever()
