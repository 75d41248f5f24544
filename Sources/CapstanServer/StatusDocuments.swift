import CapstanCore
import Foundation

// Read-only mirrors of the documents of `capstan status --format json` and `capstan history
// --format json` (docs/state.md), for the status page. They are lenient: unknown fields are
// ignored (fields are added within format_version 1), and a missing or mistyped field becomes
// its default rather than failing the page. Only a document that is not a JSON object fails.

struct JSONKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }

    init(_ name: String) { stringValue = name }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

extension KeyedDecodingContainer where K == JSONKey {
    /// The value at `key`, or nil when it is absent, null or not a `T`.
    func optional<T: Decodable>(_ key: String) -> T? {
        (try? decodeIfPresent(T.self, forKey: JSONKey(key))) ?? nil
    }

    /// The value at `key`, or `fallback` when it is absent, null or not a `T`.
    func value<T: Decodable>(_ key: String, or fallback: T) -> T {
        optional(key) ?? fallback
    }
}

/// A list whose elements that cannot be read are skipped (not the whole list).
struct LenientList<Element: Decodable>: Decodable {
    var items: [Element] = []

    init() {}

    init(from decoder: Decoder) throws {
        var container = try decoder.unkeyedContainer()
        while !container.isAtEnd {
            if let item = try? container.decode(Element.self) {
                items.append(item)
            } else if (try? container.decode(ParamValue.self)) == nil {
                break  // cannot even step over it
            }
        }
    }
}

extension KeyedDecodingContainer where K == JSONKey {
    func list<T: Decodable>(_ key: String) -> [T] {
        (optional(key) as LenientList<T>?)?.items ?? []
    }
}

struct StatusDocument: Decodable {
    var stateDir: String?
    var models: [ModelEntry]
    var deployments: [DeploymentEntry]
    var lastPass: PassEntry?
    var locks: [LockEntry]

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: JSONKey.self)
        stateDir = c.optional("state_dir")
        models = c.list("models")
        deployments = c.list("deployments")
        lastPass = c.optional("last_pass")
        locks = c.list("locks")
    }
}

struct ConditionEntry: Decodable {
    var type: String
    var status: String
    var reason: String
    var message: String
    var observedCommit: String?
    var lastUpdate: String?

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: JSONKey.self)
        type = c.value("type", or: "Unknown")
        status = c.value("status", or: "True")
        reason = c.value("reason", or: "")
        message = c.value("message", or: "")
        observedCommit = c.optional("observed_commit")
        lastUpdate = c.optional("last_update")
    }
}

struct ModelEntry: Decodable {
    var name: String
    var description: String?
    var labels: [String: String]
    var aliases: [String: Int]
    var conditions: [ConditionEntry]
    var versions: [VersionEntry]
    /// The metric the model is judged by, when the document names it (`key_metric`).
    var keyMetric: String?

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: JSONKey.self)
        name = c.value("name", or: "?")
        description = c.optional("description")
        labels = c.value("labels", or: [:])
        aliases = c.value("aliases", or: [:])
        conditions = c.list("conditions")
        versions = c.list("versions")
        keyMetric = c.optional("key_metric")
    }
}

struct GateEntry: Decodable {
    var gate: String
    var passed: Bool
    var detail: String

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: JSONKey.self)
        gate = c.value("gate", or: "")
        passed = c.value("passed", or: true)
        detail = c.value("detail", or: "")
    }
}

struct VersionEntry: Decodable {
    var version: Int
    var status: String
    var commit: String?
    var created: String?
    var metrics: [String: Double]
    var gateResults: [GateEntry]
    var attempts: Int?
    var failedAt: String?
    var archivedAt: String?
    var logTail: String?

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: JSONKey.self)
        version = c.value("version", or: 0)
        status = c.value("status", or: "unknown")
        commit = c.optional("commit")
        created = c.optional("created")
        metrics = c.value("metrics", or: [:])
        gateResults = c.list("gate_results")
        attempts = c.optional("attempts")
        failedAt = c.optional("failed_at")
        archivedAt = c.optional("archived_at")
        logTail = c.optional("log_tail")
    }
}

struct BackendEntry: Decodable {
    var version: Int
    var weight: Double
    var replicas: Int?
    var readyReplicas: Int?
    var health: String
    var restarts: Int?
    var lastError: String?
    var requests: Int64?
    var errors5xx: Int64?
    var connectionErrors: Int64?
    var p95Milliseconds: Double?

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: JSONKey.self)
        version = c.value("version", or: 0)
        weight = max(0, c.value("weight", or: 0.0))
        replicas = c.optional("replicas")
        readyReplicas = c.optional("ready_replicas")
        health = c.value("health", or: "unknown")
        restarts = c.optional("restarts")
        lastError = c.optional("last_error")
        requests = c.optional("requests")
        errors5xx = c.optional("errors_5xx")
        connectionErrors = c.optional("connection_errors")
        p95Milliseconds = c.optional("p95_ms")
    }
}

struct RolloutEntry: Decodable {
    var from: Int?
    var to: Int
    var phase: String
    var step: Int?
    var stepStarted: String?
    var started: String?

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: JSONKey.self)
        from = c.optional("from")
        to = c.value("to", or: 0)
        phase = c.value("phase", or: "unknown")
        step = c.optional("step")
        stepStarted = c.optional("step_started")
        started = c.optional("started")
    }
}

struct QuarantineEntry: Decodable {
    var version: Int
    var reason: String
    var at: String?

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: JSONKey.self)
        version = c.value("version", or: 0)
        reason = c.value("reason", or: "")
        at = c.optional("at")
    }
}

struct DeploymentEntry: Decodable {
    var name: String
    var model: String?
    /// Where the deployment answers, when the document says (`endpoint` or `url`).
    var endpoint: String?
    var conditions: [ConditionEntry]
    var backends: [BackendEntry]
    var rollout: RolloutEntry?
    var quarantined: [QuarantineEntry]

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: JSONKey.self)
        name = c.value("name", or: "?")
        model = c.optional("model")
        endpoint = c.optional("endpoint") ?? c.optional("url")
        conditions = c.list("conditions")
        backends = c.list("backends")
        rollout = c.optional("rollout")
        quarantined = c.list("quarantined")
    }
}

struct PassEntry: Decodable {
    var command: String
    var commit: String?
    var outcome: String
    var started: String?
    var finished: String?
    var summary: String

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: JSONKey.self)
        command = c.value("command", or: "")
        commit = c.optional("commit")
        outcome = c.value("outcome", or: "unknown")
        started = c.optional("started")
        finished = c.optional("finished")
        summary = c.value("summary", or: "")
    }
}

struct LockEntry: Decodable {
    var holder: String
    var command: String
    var pid: Int64?
    var host: String
    var started: String?
    var expires: String?

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: JSONKey.self)
        holder = c.value("holder", or: "?")
        command = c.value("command", or: "")
        pid = c.optional("pid")
        host = c.value("host", or: "")
        started = c.optional("started")
        expires = c.optional("expires")
    }
}

struct HistoryDocument: Decodable {
    var events: [HistoryEntry]

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: JSONKey.self)
        events = c.list("events")
    }
}

struct HistoryEntry: Decodable {
    var id: Int64?
    var at: String?
    var actor: String
    var commit: String?
    var object: String
    var action: String
    var before: ParamValue?
    var after: ParamValue?
    var reason: String

    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: JSONKey.self)
        id = c.optional("id")
        at = c.optional("at")
        actor = c.value("actor", or: "")
        commit = c.optional("commit")
        object = c.value("object", or: "")
        action = c.value("action", or: "")
        before = c.optional("before")
        after = c.optional("after")
        reason = c.value("reason", or: "")
    }
}
