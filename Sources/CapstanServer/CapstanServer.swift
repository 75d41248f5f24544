// The controller's HTTP side (`capstan run`): /healthz, /readyz, /metrics, /api/v1/status,
// POST /api/v1/reconcile, signed Git webhooks (POST /hooks/git) and the status page (/);
// and the outgoing notifications. It knows nothing of Git, SQLite or the engine: the command
// layer hands it the status and history documents (the JSON of `capstan status` and
// `capstan history`) and a way to ask for a pass.
