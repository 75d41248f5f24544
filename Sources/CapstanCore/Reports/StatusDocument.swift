/// What Capstan's state holds, as one document: `capstan status --format json`, the controller's
/// `GET /api/v1/status` and its status page all use this one type (docs/state.md). Fields are
/// added within `format_version` 1; a removal or rename bumps it.
public struct StatusDocument: Hashable, Sendable, Codable {
    public static let currentFormatVersion = 1

    public var formatVersion: Int
    public var stateDir: String
    public var models: [Model]
    public var deployments: [Deployment]
    public var lastPass: Pass?
    public var locks: [Lock]

    public init(stateDir: String, models: [Model] = [], deployments: [Deployment] = [], lastPass: Pass? = nil, locks: [Lock] = []) {
        self.formatVersion = Self.currentFormatVersion
        self.stateDir = stateDir
        self.models = models
        self.deployments = deployments
        self.lastPass = lastPass
        self.locks = locks
    }

    enum CodingKeys: String, CodingKey {
        case formatVersion = "format_version", stateDir = "state_dir", models, deployments, lastPass = "last_pass", locks
    }

    /// A condition, Kubernetes-style (`status` is always `True`: the type is the current one).
    public struct Condition: Hashable, Sendable, Codable {
        public var type: String
        public var status: String
        /// The stable CamelCase reason (`Converged`, `TrainingFailed`, `RolledBack`…).
        public var reason: String
        public var message: String
        public var observedCommit: String?
        public var lastUpdate: String?
        /// For a condition that is not Ready: `stalled`, `waiting`, `transient` or `terminal`.
        public var failureClass: String?
        /// When a waiting condition comes back by itself (ISO 8601).
        public var until: String?

        public init(type: String, status: String = "True", reason: String, message: String, observedCommit: String?,
                    lastUpdate: String?, failureClass: String? = nil, until: String? = nil) {
            self.type = type
            self.status = status
            self.reason = reason
            self.message = message
            self.observedCommit = observedCommit
            self.lastUpdate = lastUpdate
            self.failureClass = failureClass
            self.until = until
        }

        enum CodingKeys: String, CodingKey {
            case type, status, reason, message, observedCommit = "observed_commit", lastUpdate = "last_update"
            case failureClass = "class", until
        }
    }

    public struct Model: Hashable, Sendable, Codable {
        public var name: String
        public var description: String?
        public var labels: [String: String]
        public var aliases: [String: Int]
        public var conditions: [Condition]
        public var versions: [Version]
        /// The metric the model is judged by (its first metric gate), when it has one.
        public var keyMetric: String?

        public init(name: String, description: String?, labels: [String: String], aliases: [String: Int], conditions: [Condition],
                    versions: [Version], keyMetric: String? = nil) {
            self.name = name
            self.description = description
            self.labels = labels
            self.aliases = aliases
            self.conditions = conditions
            self.versions = versions
            self.keyMetric = keyMetric
        }

        enum CodingKeys: String, CodingKey {
            case name, description, labels, aliases, conditions, versions, keyMetric = "key_metric"
        }
    }

    public struct Version: Hashable, Sendable, Codable {
        public var version: Int
        public var status: String
        public var fingerprint: String
        public var commit: String?
        public var metrics: [String: Double]
        public var params: [String: ParamValue]
        public var artifactDigest: String?
        public var gateResults: [GateResult]
        public var created: String?
        public var attempts: Int
        public var failedAt: String?
        public var archivedAt: String?
        /// The last lines of a failed run's output.
        public var logTail: String?

        public init(version: Int, status: String, fingerprint: String, commit: String?, metrics: [String: Double],
                    params: [String: ParamValue], artifactDigest: String?, gateResults: [GateResult], created: String?, attempts: Int,
                    failedAt: String?, archivedAt: String?, logTail: String?) {
            self.version = version
            self.status = status
            self.fingerprint = fingerprint
            self.commit = commit
            self.metrics = metrics
            self.params = params
            self.artifactDigest = artifactDigest
            self.gateResults = gateResults
            self.created = created
            self.attempts = attempts
            self.failedAt = failedAt
            self.archivedAt = archivedAt
            self.logTail = logTail
        }

        enum CodingKeys: String, CodingKey {
            case version, status, fingerprint, commit, metrics, params, artifactDigest = "artifact_digest", gateResults = "gate_results"
            case created, attempts, failedAt = "failed_at", archivedAt = "archived_at", logTail = "log_tail"
        }
    }

    public struct Backend: Hashable, Sendable, Codable {
        public var version: Int
        public var weight: Int
        public var replicas: Int
        public var readyReplicas: Int
        public var health: String
        public var restarts: Int
        public var lastError: String?
        public var requests: Int64
        public var errors5xx: Int64
        public var connectionErrors: Int64
        public var p95Milliseconds: Double?

        public init(version: Int, weight: Int, replicas: Int, readyReplicas: Int, health: String, restarts: Int, lastError: String?,
                    requests: Int64, errors5xx: Int64, connectionErrors: Int64, p95Milliseconds: Double?) {
            self.version = version
            self.weight = weight
            self.replicas = replicas
            self.readyReplicas = readyReplicas
            self.health = health
            self.restarts = restarts
            self.lastError = lastError
            self.requests = requests
            self.errors5xx = errors5xx
            self.connectionErrors = connectionErrors
            self.p95Milliseconds = p95Milliseconds
        }

        enum CodingKeys: String, CodingKey {
            case version, weight, replicas, readyReplicas = "ready_replicas", health, restarts, lastError = "last_error", requests
            case errors5xx = "errors_5xx", connectionErrors = "connection_errors", p95Milliseconds = "p95_ms"
        }
    }

    public struct Rollout: Hashable, Sendable, Codable {
        public var from: Int?
        public var to: Int
        public var phase: String
        public var step: Int?
        public var stepStarted: String?
        public var started: String?

        public init(from: Int?, to: Int, phase: String, step: Int?, stepStarted: String?, started: String?) {
            self.from = from
            self.to = to
            self.phase = phase
            self.step = step
            self.stepStarted = stepStarted
            self.started = started
        }

        enum CodingKeys: String, CodingKey {
            case from, to, phase, step, stepStarted = "step_started", started
        }
    }

    public struct Quarantined: Hashable, Sendable, Codable {
        public var version: Int
        public var reason: String
        public var at: String?

        public init(version: Int, reason: String, at: String?) {
            self.version = version
            self.reason = reason
            self.at = at
        }
    }

    public struct Deployment: Hashable, Sendable, Codable {
        public var name: String
        public var model: String?
        public var conditions: [Condition]
        public var backends: [Backend]
        public var rollout: Rollout?
        public var quarantined: [Quarantined]

        public init(name: String, model: String?, conditions: [Condition], backends: [Backend], rollout: Rollout?, quarantined: [Quarantined]) {
            self.name = name
            self.model = model
            self.conditions = conditions
            self.backends = backends
            self.rollout = rollout
            self.quarantined = quarantined
        }
    }

    public struct Pass: Hashable, Sendable, Codable {
        public var command: String
        public var commit: String?
        public var outcome: String
        public var started: String?
        public var finished: String?
        public var summary: String

        public init(command: String, commit: String?, outcome: String, started: String?, finished: String?, summary: String) {
            self.command = command
            self.commit = commit
            self.outcome = outcome
            self.started = started
            self.finished = finished
            self.summary = summary
        }
    }

    public struct Lock: Hashable, Sendable, Codable {
        public var holder: String
        public var generation: Int64
        public var command: String
        public var pid: Int64
        public var host: String
        public var started: String?
        public var expires: String?

        public init(holder: String, generation: Int64, command: String, pid: Int64, host: String, started: String?, expires: String?) {
            self.holder = holder
            self.generation = generation
            self.command = command
            self.pid = pid
            self.host = host
            self.started = started
            self.expires = expires
        }
    }
}

extension StatusDocument.Condition {
    /// The status-document form of an object's condition.
    public init(_ c: ObjectCondition) {
        self.init(type: c.type.rawValue, reason: c.reason, message: c.message, observedCommit: c.commit,
                  lastUpdate: Timestamp.iso8601(milliseconds: c.updatedAt, fractional: false),
                  failureClass: c.failureClass?.name,
                  until: c.failureClass?.until.map { Timestamp.iso8601(milliseconds: $0, fractional: false) })
    }
}
