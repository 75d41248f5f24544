import CapstanCore

/// The manifest schema v1: every kind, every field, with its type, default and documentation.
/// Validation, `capstan schema` and the field reference in docs/manifests.md all come from here.
public enum ManifestSchema {
    // MARK: Common

    public static let metadata = ObjectSchema(id: "ObjectMeta", doc: "Identifies the object.", fields: [
        FieldSpec("name", .string(.dnsLabel), required: true,
                  doc: "Unique name among objects of the same kind: a DNS label (lowercase letters, digits and `-`, at most 63 characters).",
                  example: "churn"),
        FieldSpec("labels", .map(keys: .labelKey, values: .string(.any)),
                  doc: "Free-form key/value pairs for people and tools (`team: growth`). Never affect training.",
                  example: "{team: growth}"),
        FieldSpec("annotations", .map(keys: .any, values: .string(.any)),
                  doc: "Free-form notes; unlike labels, keys and values may be any text.",
                  example: "{owner: \"ml-platform@example.com\"}"),
    ])

    // MARK: Config

    static let mlflow = ObjectSchema(id: "MLflowRegistry", doc: "An MLflow tracking server's model registry, over its REST API.", fields: [
        FieldSpec("url", .string(.httpURL), required: true, doc: "Base URL of the MLflow server.", example: "\"http://127.0.0.1:5000\""),
        FieldSpec("tokenEnv", .string(.envName),
                  doc: "Name of the environment variable that holds the bearer token. The token itself never goes in a manifest.",
                  example: "MLFLOW_TRACKING_TOKEN"),
        FieldSpec("usernameEnv", .string(.envName),
                  doc: "Name of the environment variable that holds the user name of HTTP basic auth (MLflow's basic-auth app); needs passwordEnv.",
                  example: "MLFLOW_TRACKING_USERNAME"),
        FieldSpec("passwordEnv", .string(.envName),
                  doc: "Name of the environment variable that holds the password of HTTP basic auth; needs usernameEnv.",
                  example: "MLFLOW_TRACKING_PASSWORD"),
        FieldSpec("experiment", .string(.any), default: "\"capstan/{model}\"",
                  doc: "The MLflow experiment of a model's training runs; {model} stands for the model's name (without it, every model's runs share one experiment).",
                  example: "\"capstan/{model}\""),
        FieldSpec("timeout", .duration(allowZero: false), default: "30s", doc: "The bound of one request to the MLflow server.", example: "30s"),
    ], check: { node, owner, ctx, path in
        let token = node["tokenEnv"] != nil
        let user = node["usernameEnv"] != nil, password = node["passwordEnv"] != nil
        if user != password {
            ctx.error(.invalidValue, "\(path): usernameEnv and passwordEnv go together (HTTP basic auth needs both)", node,
                      hint: user ? "add passwordEnv" : "add usernameEnv")
        }
        if token && (user || password) {
            ctx.error(.invalidValue, "\(path): set either tokenEnv (a bearer token) or usernameEnv and passwordEnv (basic auth), not both", node)
        }
    })

    static let embedded = ObjectSchema(id: "EmbeddedRegistry", doc: "The embedded SQLite registry in the state directory. Takes no settings.", fields: [])

    static let registry = ObjectSchema(
        id: "Registry", doc: "Which model registry holds versions and aliases (the actual state). Set exactly one backend.",
        fields: [
            FieldSpec("embedded", .object(embedded), doc: "The embedded registry (the default).", example: "{}"),
            FieldSpec("mlflow", .object(mlflow), doc: "An MLflow tracking server's registry (docs/mlflow.md).", example: "{url: \"http://127.0.0.1:5000\"}"),
        ], exactlyOneOf: ["embedded", "mlflow"])

    static let localServing = ObjectSchema(id: "LocalServing", doc: "Capstan's own serving agent (`capstan serve`).", fields: [
        FieldSpec("admin", .string(.httpURL), default: "\"http://127.0.0.1:7070\"", doc: "The agent's admin API.",
                  example: "\"http://127.0.0.1:7070\""),
        FieldSpec("tokenEnv", .string(.envName), doc: "Name of the environment variable holding the admin API's bearer token.",
                  example: "CAPSTAN_SERVING_TOKEN"),
    ])

    static let serving = ObjectSchema(id: "Serving", doc: "Where deployments are served (the actual state, part 2).", fields: [
        FieldSpec("local", .object(localServing), default: "{}", doc: "The local serving agent.", example: "{admin: \"http://127.0.0.1:7070\"}"),
    ], exactlyOneOf: ["local"])

    static let retry = ObjectSchema(id: "RetryPolicy", doc: "Backoff for a training fingerprint that failed.", fields: [
        FieldSpec("initial", .duration(allowZero: false), default: "1m", doc: "Wait after the first failure; doubles after each further failure.", example: "1m"),
        FieldSpec("max", .duration(allowZero: false), default: "1h", doc: "Longest wait between retries.", example: "1h"),
    ], check: { node, owner, ctx, path in
        if let i = node["initial"]?.scalar.flatMap({ try? ManifestDuration.parse($0).get() }),
           let m = node["max"]?.scalar.flatMap({ try? ManifestDuration.parse($0).get() }), i > m {
            ctx.error(.invalidValue, "\(path).initial (\(i)) is longer than \(path).max (\(m))", node["initial"]!)
        }
    })

    static let policy = ObjectSchema(id: "Policy", doc: "How the reconciler behaves.", fields: [
        FieldSpec("prune", .boolean, default: "false",
                  doc: "When true, objects whose manifests were deleted are retired (deployments stopped, aliases removed). When false they are only reported as orphaned.",
                  example: "false"),
        FieldSpec("drift", .enumeration(DriftPolicy.allCases.map(\.rawValue)), default: "revert",
                  doc: "What to do when the actual state was changed behind Capstan's back: `revert` it, `adopt` it, or only `alert`.",
                  example: "revert"),
        FieldSpec("parallelism", .integer(min: 1, max: 64), default: "2", doc: "How many training steps may run at once.", example: "2"),
        FieldSpec("retry", .object(retry), default: "{initial: 1m, max: 1h}", doc: "Backoff for failed training.", example: "{initial: 1m, max: 1h}"),
    ])

    static let configSpec = ObjectSchema(id: "ConfigSpec", doc: "Repository-level settings.", fields: [
        FieldSpec("manifests", .list(.string(.repoPath)), default: "[] (the whole repository)",
                  doc: "Folders, relative to the repository root, whose `*.yaml`/`*.yml` files are loaded. Empty: the whole repository (hidden folders skipped).",
                  example: "[models, deployments]"),
        FieldSpec("exclude", .list(.string(.glob)), default: "[]",
                  doc: "Glob patterns (relative to the root; `*` within a name, `**` across folders) of YAML files that are not Capstan manifests.",
                  example: "[\"**/params.yaml\", \"ci/**\"]"),
        FieldSpec("dataRoots", .list(.string(.absolutePath)), default: "[]",
                  doc: "Absolute folders under which training inputs outside the repository may live. Any other absolute input path is an error.",
                  example: "[/srv/data]"),
        FieldSpec("registry", .object(registry), default: "{embedded: {}}", doc: "The model registry backend.", example: "{embedded: {}}"),
        FieldSpec("serving", .object(serving), default: "{local: {}}", doc: "The serving backend.", example: "{local: {admin: \"http://127.0.0.1:7070\"}}"),
        FieldSpec("policy", .object(policy), default: "see below", doc: "Reconciler policies.", example: "{prune: false}"),
    ])

    // MARK: Model

    static let inputObject = ObjectSchema(id: "TrainInputObject", doc: "A training input written as a mapping.", fields: [
        FieldSpec("path", .string(.inputPath),
                  doc: "A path: relative paths are inside the repository (identified by their Git object id), absolute ones must be under a data root (identified by content hash).",
                  example: "/srv/data/events.parquet"),
        FieldSpec("uri", .string(.uri), doc: "Data outside the machine, identified by the declared `version`.", example: "s3://bucket/events/"),
        FieldSpec("version", .string(.nonEmpty), doc: "The version of a `uri` input; change it to retrain on new data.", example: "\"2026-11-01\""),
    ])

    static let train = ObjectSchema(id: "TrainSpec", doc: "How to produce a version. The command, workdir, inputs, params, env and the names in secretEnv make up the fingerprint (same fingerprint: no retraining); timeout does not.", fields: [
        FieldSpec("command", .argv, required: true,
                  doc: "The program and its arguments (argv), run without a shell. It writes the model to `$CAPSTAN_OUTPUT_DIR` and metrics to `$CAPSTAN_METRICS_FILE`.",
                  example: "[python3, train.py]"),
        FieldSpec("workdir", .string(.repoPath), default: ".", doc: "Working folder, relative to the repository root.", example: "models/churn"),
        FieldSpec("inputs", .list(.trainInput), default: "[]",
                  doc: "What the training reads. A string is a path (a folder in the repository is identified by its tree id, a file by its blob id); `{path: /abs}` must be under a data root; `{uri: …, version: …}` is identified by its version.",
                  example: "[models/churn, data/churn.csv]"),
        FieldSpec("params", .map(keys: .nonEmpty, values: .anyValue), default: "{}",
                  doc: "Hyper-parameters, passed as JSON in `$CAPSTAN_PARAMS_FILE`. Any YAML values.",
                  example: "{learning_rate: 0.05, epochs: 20}"),
        FieldSpec("env", .map(keys: .envName, values: .string(.any)), default: "{}",
                  doc: "Environment variables for the step. Values are part of the fingerprint and may be shown in plans: no secrets here.",
                  example: "{PYTHONHASHSEED: \"0\"}"),
        FieldSpec("secretEnv", .map(keys: .envName, values: .string(.envName)), default: "{}",
                  doc: "Variables the step sees → names of variables in the reconciler's environment that hold the values. Only names are stored, logged or fingerprinted.",
                  example: "{API_TOKEN: CAPSTAN_SECRET_API_TOKEN}"),
        FieldSpec("timeout", .duration(allowZero: false), default: "1h", doc: "Longest a training run may take; then its process group is terminated.", example: "30m"),
    ], check: { node, owner, ctx, path in
        Checks.credentialsInEnv(node["env"], path: "\(path).env", fingerprinted: true, ctx: &ctx)
    })

    static let gate = ObjectSchema(id: "MetricGate", doc: "Bounds a metric must meet.", fields: [
        FieldSpec("min", .number(min: nil, max: nil), doc: "The metric must be at least this.", example: "0.9"),
        FieldSpec("max", .number(min: nil, max: nil), doc: "The metric must be at most this.", example: "50"),
    ], check: { node, owner, ctx, path in
        guard node.mappingPairs != nil else { return }
        let min = node["min"], max = node["max"]
        if min == nil && max == nil {
            ctx.error(.gateBounds, "metric gate \(path) sets neither 'min' nor 'max'", node, length: 1,
                      hint: "add min (the metric must be at least) or max (at most), for example {min: 0.9}")
        }
        if let lo = min?.scalar.flatMap(ScalarSyntax.number), let hi = max?.scalar.flatMap(ScalarSyntax.number), lo > hi {
            ctx.error(.gateBounds, "metric gate \(path) has min \(min!.scalar!) greater than max \(max!.scalar!); no value can pass", min!,
                      hint: "swap them or correct one")
        }
    })

    static let validate = ObjectSchema(id: "ValidateSpec", doc: "Gates a version must pass before any alias or deployment may use it.", fields: [
        FieldSpec("metrics", .map(keys: .metricName, values: .object(gate)), default: "{}",
                  doc: "Metric name → bounds (`{min: 0.9}`, `{max: 50}`). The metric must be in the training's metrics file.",
                  example: "{accuracy: {min: 0.90}, p95_latency_ms: {max: 50}}"),
        FieldSpec("noRegressionAgainst", .string(.aliasName),
                  doc: "An alias of this model; a new version must not be worse than the version it points at on any gated metric (higher is better for `min` gates, lower for `max` gates).",
                  example: "champion"),
        FieldSpec("tolerance", .map(keys: .metricName, values: .number(min: 0, max: nil)), default: "{}",
                  doc: "Metric name → how much worse than the alias holder still passes the no-regression gate.",
                  example: "{accuracy: 0.005}"),
        FieldSpec("command", .argv,
                  doc: "An extra validation program (argv, no shell), run with the training environment plus `CAPSTAN_MODEL_DIR`; a non-zero exit rejects the version.",
                  example: "[python3, evaluate.py]"),
        FieldSpec("workdir", .string(.repoPath), default: "the training workdir", doc: "Working folder of the validation command.", example: "models/churn"),
        FieldSpec("timeout", .duration(allowZero: false), default: "10m", doc: "Longest the validation command may take.", example: "10m"),
    ], check: { node, owner, ctx, path in
        guard let tolerance = node["tolerance"]?.mappingPairs else { return }
        if node["noRegressionAgainst"] == nil, let key = node.mappingPairs?.first(where: { $0.key.scalar == "tolerance" })?.key {
            ctx.warning(.unknownGateMetric, "\(path).tolerance has no effect without \(path).noRegressionAgainst", key,
                        length: key.scalar?.count, hint: "add noRegressionAgainst: <alias> or remove the tolerance")
        }
        let gated = Set(node["metrics"]?.mappingPairs?.compactMap { $0.key.scalar } ?? [])
        for (k, _) in tolerance {
            guard let name = k.scalar, !gated.contains(name) else { continue }
            ctx.warning(.unknownGateMetric, "\(path).tolerance names metric '\(name)', which no gate in \(path).metrics checks", k,
                        length: name.count,
                        hint: Suggest.closest(to: name, among: gated).map { "did you mean '\($0)'?" } ?? "add a gate for it or remove the tolerance")
        }
    })

    static let readiness = ObjectSchema(id: "Readiness", doc: "How to tell a model server is ready.", fields: [
        FieldSpec("path", .string(.urlPath), default: "/healthz", doc: "HTTP path that answers 2xx once the server is ready.", example: "/healthz"),
        FieldSpec("timeout", .duration(allowZero: false), default: "60s", doc: "How long to wait for readiness before the start counts as failed.", example: "60s"),
    ])

    static let serve = ObjectSchema(id: "ServeSpec", doc: "How a deployment runs a version of this model.", fields: [
        FieldSpec("command", .argv, required: true,
                  doc: "The model server (argv, no shell). It gets `PORT` to listen on (127.0.0.1) and `CAPSTAN_MODEL_DIR` with the version's artifact.",
                  example: "[python3, serve.py]"),
        FieldSpec("workdir", .string(.repoPath), default: ".", doc: "Working folder, relative to the repository root.", example: "models/churn"),
        FieldSpec("env", .map(keys: .envName, values: .string(.any)), default: "{}",
                  doc: "Extra environment for the server. Values are stored and shown in plans: no secrets here.", example: "{WORKERS: \"2\"}"),
        FieldSpec("secretEnv", .map(keys: .envName, values: .string(.envName)), default: "{}",
                  doc: "Variables the server sees → names of variables in the serving agent's environment that hold the values.",
                  example: "{FEATURE_STORE_TOKEN: CAPSTAN_SECRET_FEATURE_STORE}"),
        FieldSpec("readiness", .object(readiness), default: "{path: /healthz, timeout: 60s}", doc: "Readiness check.", example: "{path: /healthz, timeout: 60s}"),
    ], check: { node, owner, ctx, path in
        Checks.credentialsInEnv(node["env"], path: "\(path).env", fingerprinted: false, ctx: &ctx)
    })

    static let retention = ObjectSchema(id: "Retention", doc: "How many versions to keep.", fields: [
        FieldSpec("keepVersions", .integer(min: 1, max: nil), required: true,
                  doc: "Versions beyond the newest N are archived, except those an alias or deployment uses.", example: "10"),
    ])

    static let card = ObjectSchema(id: "Card", doc: "What the model card (`capstan card`) says besides the records: who owns the model and what it is for. Never part of the fingerprint.", fields: [
        FieldSpec("owners", .list(.string(.nonEmpty)), default: "[]", doc: "Who answers for the model (people, teams, addresses).", example: "[growth-ml@example.com]"),
        FieldSpec("intendedUse", .string(.nonEmpty), doc: "What the model is for, and for whom.", example: "Rank accounts for retention offers."),
        FieldSpec("limitations", .string(.nonEmpty), doc: "Where it is known to be weak or must not be used.", example: "Not trained on accounts younger than 30 days."),
        FieldSpec("ethicalConsiderations", .string(.nonEmpty), doc: "Fairness, privacy and other concerns, and what is done about them.", example: "Age is not a feature; accuracy is gated per region."),
    ])

    static let modelSpec = ObjectSchema(id: "ModelSpec", doc: "A registered model and how to produce its versions.", fields: [
        FieldSpec("description", .string(.any), doc: "What the model does, shown in status and the registry.", example: "Predicts churn in the next 30 days."),
        FieldSpec("train", .object(train),
                  doc: "The training step. Without it the model is registry-only: its versions are registered outside Capstan (another pipeline, a notebook, `capstan register`) and judged on their metrics by the gates.",
                  example: "{command: [python3, train.py]}"),
        FieldSpec("validate", .object(validate), doc: "Validation gates. Without it every version is valid.", example: "{metrics: {accuracy: {min: 0.9}}}"),
        FieldSpec("serve", .object(serve), doc: "How to serve a version. Required for models that a Deployment uses.", example: "{command: [python3, serve.py]}"),
        FieldSpec("aliases", .map(keys: .aliasName, values: .aliasTarget), default: "{}",
                  doc: "Alias → a version number (promotion by pull request) or `latest` (the newest validated version). Never part of the fingerprint.",
                  example: "{champion: 7, candidate: latest}"),
        FieldSpec("retention", .object(retention), doc: "Version retention. Without it, nothing is archived.", example: "{keepVersions: 10}"),
        FieldSpec("card", .object(card), doc: "The model card's own text: owners, intended use, limitations, ethical considerations.",
                  example: "{owners: [growth-ml@example.com], intendedUse: Rank accounts for retention offers.}"),
    ], check: { node, owner, ctx, path in
        if node.mappingPairs != nil, node["train"] == nil {
            // Registry-only: Capstan judges versions it did not make on their metrics only.
            if let command = node["validate"]?["command"] {
                ctx.error(.registryOnlyUnsupported,
                          "\(path).validate.command is set, but the model has no \(path).train: Capstan does not run a validation command on versions registered outside Capstan (it judges them on their metrics)",
                          command, length: 1, hint: "remove validate.command and gate on metrics the versions' runs record, or add spec.train so that Capstan trains the model")
            }
            if let retention = node["retention"] {
                ctx.error(.registryOnlyUnsupported,
                          "\(path).retention is set, but the model has no \(path).train: Capstan does not archive versions registered outside Capstan",
                          retention, length: 1, hint: "remove retention (delete old versions with the registry's own tools), or add spec.train")
            }
        }
        guard let against = node["validate"]?["noRegressionAgainst"], let alias = against.scalar else { return }
        let declared = node["aliases"]?.mappingPairs?.compactMap { $0.key.scalar } ?? []
        if !declared.contains(alias) {
            let list = declared.isEmpty ? "the model declares no aliases" : "declared: " + declared.map { "'\($0)'" }.joined(separator: ", ")
            ctx.error(.undeclaredAlias, "\(path).validate.noRegressionAgainst names alias '\(alias)', which \(path).aliases does not declare (\(list))",
                      against, hint: Suggest.closest(to: alias, among: declared).map { "did you mean '\($0)'?" }
                        ?? "declare it under \(path).aliases (for example \(alias): latest) or remove noRegressionAgainst")
        }
    })

    // MARK: Deployment

    static let canaryStep = ObjectSchema(id: "CanaryStep", doc: "One canary step.", fields: [
        FieldSpec("weight", .integer(min: 1, max: 99), required: true, doc: "Percent of traffic the new version gets in this step (1–99).", example: "10"),
        FieldSpec("pause", .duration(allowZero: true), required: true, doc: "How long the step lasts while analysis runs.", example: "2m"),
    ])

    static let analysis = ObjectSchema(id: "CanaryAnalysis", doc: "How the canary is judged during each step.", fields: [
        FieldSpec("interval", .duration(allowZero: false), default: "15s", doc: "How often live stats are read.", example: "15s"),
        FieldSpec("minRequests", .integer(min: 0, max: nil), default: "50", doc: "Requests the canary must have served before it can fail the step.", example: "50"),
        FieldSpec("maxErrorRate", .number(min: 0, max: 1), default: "0.01", doc: "Highest share of 5xx answers and connection errors (0–1).", example: "0.01"),
        FieldSpec("maxLatencyP95", .duration(allowZero: false), doc: "Highest 95th-percentile latency. Unset: latency is not judged.", example: "250ms"),
    ])

    static let canary = ObjectSchema(id: "Canary", doc: "Progressive rollout with analysis and automatic rollback.", fields: [
        FieldSpec("steps", .list(.object(canaryStep)), required: true,
                  doc: "Steps with strictly increasing weights; after the last one the new version takes 100%.",
                  example: "[{weight: 10, pause: 2m}, {weight: 50, pause: 5m}]"),
        FieldSpec("analysis", .object(analysis), default: "{interval: 15s, minRequests: 50, maxErrorRate: 0.01}",
                  doc: "Analysis settings.", example: "{maxErrorRate: 0.01, maxLatencyP95: 250ms}"),
    ], check: { node, owner, ctx, path in
        guard let steps = node["steps"]?.sequenceItems else { return }
        if steps.isEmpty {
            ctx.error(.canaryWeights, "\(path).steps is empty", node["steps"]!, hint: "add at least one step, or use strategy: {replace: {}}")
            return
        }
        var previous: Int64?
        for (i, step) in steps.enumerated() {
            guard let weightNode = step["weight"], let w = weightNode.isPlainScalar ? weightNode.scalar.flatMap(ScalarSyntax.integer) : nil else { continue }
            if let p = previous, w <= p, (1...99).contains(w) {
                ctx.error(.canaryWeights, "\(path).steps[\(i)].weight is \(w), not more than the previous step's \(p); weights must increase strictly",
                          weightNode, hint: "order the steps by increasing weight, for example 10, 25, 50")
            }
            previous = w
        }
    })

    static let replace = ObjectSchema(id: "Replace", doc: "Start the new version, wait until ready, switch all traffic, stop the old one.", fields: [])

    static let strategy = ObjectSchema(id: "Strategy", doc: "How a new version takes over. Set exactly one.", fields: [
        FieldSpec("replace", .object(replace), doc: "All at once, after readiness.", example: "{}"),
        FieldSpec("canary", .object(canary), doc: "Canary steps with analysis.", example: "{steps: [{weight: 10, pause: 2m}]}"),
    ], exactlyOneOf: ["replace", "canary"])

    static let deploymentSpec = ObjectSchema(id: "DeploymentSpec", doc: "An endpoint serving one model's version.", fields: [
        FieldSpec("model", .string(.dnsLabel), required: true, doc: "Name of the Model to serve.", example: "churn"),
        FieldSpec("alias", .string(.aliasName), doc: "Serve the version this alias of the model points at. Set `alias` or `version`, not both.", example: "champion"),
        FieldSpec("version", .integer(min: 1, max: nil), doc: "Serve this exact version number. Set `alias` or `version`, not both.", example: "7"),
        FieldSpec("replicas", .integer(min: 1, max: 64), default: "1", doc: "Model server processes per version.", example: "1"),
        FieldSpec("strategy", .object(strategy), default: "{replace: {}}", doc: "Rollout strategy.", example: "{canary: {steps: [{weight: 10, pause: 2m}]}}"),
    ], check: { node, owner, ctx, path in
        guard node.mappingPairs != nil else { return }
        let alias = node["alias"], version = node["version"]
        if let alias, let version {
            let second = (alias.line, alias.column) > (version.line, version.column) ? alias : version
            ctx.error(.versionOrAlias, "\(path) sets both 'alias' and 'version'; set only one", second,
                      hint: "keep alias to follow promotions, or version to pin one version")
        } else if alias == nil && version == nil {
            ctx.error(.versionOrAlias, "\(path) must set 'alias' or 'version'", owner ?? node, length: owner?.scalar?.count ?? 1,
                      hint: "add alias: champion (follow an alias) or version: 7 (pin a version)")
        }
    })

    // MARK: Documents

    public static func specSchema(for kind: ManifestKind) -> ObjectSchema {
        switch kind {
        case .config: return configSpec
        case .model: return modelSpec
        case .deployment: return deploymentSpec
        }
    }

    public static func kindDoc(_ kind: ManifestKind) -> String {
        switch kind {
        case .config: return "Repository-level settings, in `capstan.yaml` at the repository root."
        case .model: return "A registered model: how to train, validate, name and serve its versions."
        case .deployment: return "An endpoint serving one model's version, with a rollout strategy."
        }
    }

    /// Every object schema, each once, in documentation order.
    public static var allObjects: [ObjectSchema] {
        var seen = Set<String>()
        var out: [ObjectSchema] = []
        func visit(_ s: ObjectSchema) {
            guard seen.insert(s.id).inserted else { return }
            out.append(s)
            for f in s.fields { visitType(f.type) }
        }
        func visitType(_ t: FieldType) {
            switch t {
            case .object(let s): visit(s)
            case .list(let e): visitType(e)
            case .map(_, let v): visitType(v)
            case .trainInput: visit(inputObject)
            default: break
            }
        }
        visit(metadata)
        for kind in ManifestKind.allCases { visit(specSchema(for: kind)) }
        return out
    }
}

enum Checks {
    /// Warns about `env` values that look like credentials, without ever echoing them.
    static func credentialsInEnv(_ env: YAMLNode?, path: String, fingerprinted: Bool, ctx: inout ValidationContext) {
        guard let pairs = env?.mappingPairs else { return }
        for (k, v) in pairs {
            guard let name = k.scalar, let value = v.scalar, !value.isEmpty else { continue }
            if SecretHeuristics.nameSuggestsSecret(name) || SecretHeuristics.valueLooksLikeSecret(value) {
                ctx.warning(.credentialInEnv,
                            "\(path).\(name) looks like a credential; env values are stored\(fingerprinted ? ", shown in plans and part of the fingerprint" : " and shown in plans")",
                            v, length: 1,
                            hint: "move it to secretEnv: {\(name): SOME_VARIABLE} and set SOME_VARIABLE in the reconciler's environment",
                            redact: true)
            }
        }
    }
}

/// Heuristics for values that should not be in plain `env`.
public enum SecretHeuristics {
    static let secretWords: Set<String> = ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "APIKEY", "CREDENTIAL",
                                           "CREDENTIALS", "AUTH"]
    static let secretPairs: Set<String> = ["API_KEY", "ACCESS_KEY", "PRIVATE_KEY", "SECRET_KEY", "CLIENT_SECRET"]

    /// Whole `_`-separated words only: `HF_TOKEN` and `DB_PASSWORD` count, `MAX_NEW_TOKENS`,
    /// `TOKENIZERS_PARALLELISM` and `GIT_AUTHOR_NAME` do not.
    public static func nameSuggestsSecret(_ name: String) -> Bool {
        let words = name.uppercased().split(separator: "_").map(String.init)
        if words.contains(where: secretWords.contains) { return true }
        return zip(words, words.dropFirst()).contains { secretPairs.contains("\($0)_\($1)") }
    }

    public static func valueLooksLikeSecret(_ value: String) -> Bool {
        let prefixes = ["ghp_", "gho_", "ghs_", "github_pat_", "glpat-", "xoxb-", "xoxp-", "sk-", "AKIA", "ASIA", "AIza", "-----BEGIN"]
        if prefixes.contains(where: { value.hasPrefix($0) }) && value.count >= 16 { return true }
        if value.contains("://"), let at = value.firstIndex(of: "@"), value[..<at].contains(":") { return true }
        return false
    }
}
