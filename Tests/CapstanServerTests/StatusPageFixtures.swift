import CapstanCore
import CapstanServer
import Foundation

/// State documents for the status page tests, shaped like `capstan status --format json` and
/// `capstan history --format json` (docs/state.md).
enum StatusFixture {
    static let now = Date(timeIntervalSince1970: 1_795_810_500)  // 2026-11-27T20:15:00Z
    static let commit = "4f07bd39a7068a7a241ca20c7a9cfaa308d9f6e5"

    static func time(_ secondsBeforeNow: Double) -> String {
        now.addingTimeInterval(-secondsBeforeNow).formatted(Date.ISO8601FormatStyle())
    }

    static func version(_ number: Int, _ status: String, metrics: [String: Double] = [:], commit: String? = StatusFixture.commit,
                        gates: [[String: Any]] = [], extra: [String: Any] = [:]) -> [String: Any] {
        var version: [String: Any] = [
            "version": number, "status": status, "fingerprint": String(repeating: "ab", count: 32), "metrics": metrics,
            "params": ["learning_rate": 0.3], "gate_results": gates, "created": time(Double(3600 - number * 60)), "attempts": 1,
        ]
        if let commit { version["commit"] = commit }
        for (key, value) in extra { version[key] = value }
        return version
    }

    static func model(_ name: String, versions: [[String: Any]], aliases: [String: Int] = [:], extra: [String: Any] = [:]) -> [String: Any] {
        var model: [String: Any] = [
            "name": name, "description": "Predicts \(name).", "labels": ["team": "growth"], "aliases": aliases,
            "conditions": [["type": "Ready", "status": "True", "reason": "Converged", "message": "v2 is validated; aliases match the spec",
                            "observed_commit": commit, "last_update": time(120)]],
            "versions": versions,
        ]
        for (key, value) in extra { model[key] = value }
        return model
    }

    static func deployment(_ name: String, model: String, weights: [(Int, Int)], rollout: [String: Any]? = nil,
                           quarantined: [[String: Any]] = []) -> [String: Any] {
        var deployment: [String: Any] = [
            "name": name, "model": model,
            "conditions": [["type": rollout == nil ? "Ready" : "Progressing", "status": "True", "reason": rollout == nil ? "Serving" : "RollingOut",
                            "message": rollout == nil ? "serving v2" : "rolling out v3", "observed_commit": commit, "last_update": time(60)]],
            "backends": weights.map { version, weight -> [String: Any] in
                ["version": version, "weight": weight, "replicas": 2, "ready_replicas": 2, "health": "ready", "restarts": 0,
                 "requests": 1200, "errors_5xx": 3, "connection_errors": 0, "p95_ms": 12.5]
            },
            "quarantined": quarantined,
        ]
        if let rollout { deployment["rollout"] = rollout }
        return deployment
    }

    static func status(models: [[String: Any]], deployments: [[String: Any]] = [], lastPass: [String: Any]? = defaultPass,
                       locks: [[String: Any]] = []) throws -> Data {
        var document: [String: Any] = ["format_version": 1, "state_dir": "/var/lib/capstan", "models": models, "deployments": deployments, "locks": locks]
        if let lastPass { document["last_pass"] = lastPass }
        return try JSONSerialization.data(withJSONObject: document, options: [.sortedKeys])
    }

    static var defaultPass: [String: Any] {
        [
        "command": "run", "commit": commit, "outcome": "converged", "started": time(65), "finished": time(60),
        "summary": "Apply complete at 4f07bd3: 3 done, 0 failed, 0 skipped.",
        ]
    }

    /// The typed documents the page takes, read from their JSON as `capstan status --format json`
    /// and `capstan history --format json` write it.
    static func documents(_ status: Data, _ history: Data) throws -> (StatusDocument, [AuditEvent]) {
        struct History: Decodable { var events: [AuditEvent] }
        let decoder = JSONDecoder()
        return (try decoder.decode(StatusDocument.self, from: status), try decoder.decode(History.self, from: history).events)
    }

    static func history(_ events: [[String: Any]]) throws -> Data {
        try JSONSerialization.data(withJSONObject: ["format_version": 1, "events": events], options: [.sortedKeys])
    }

    static func event(_ id: Int, object: String = "model/churn/v2", action: String = "validated", reason: String = "3 gates passed",
                      secondsAgo: Double, before: Any? = "trained", after: Any? = ["status": "validated", "gates": [["gate": "auc >= 0.8", "passed": true]]],
                      actor: String = "capstan run (vm)") -> [String: Any] {
        var event: [String: Any] = [
            "id": id, "at": time(secondsAgo), "actor": actor, "host": "vm", "commit": commit, "object": object,
            "action": action, "reason": reason,
        ]
        if let before { event["before"] = before }
        if let after { event["after"] = after }
        return event
    }

    /// A controller with two models (one with a rejected and a failed version) and a deployment in
    /// the middle of a canary rollout.
    static func rich() throws -> (status: Data, history: Data) {
        let churn = model("churn", versions: [
            version(1, "validated", metrics: ["auc": 0.81, "log_loss": 0.52]),
            version(2, "validated", metrics: ["auc": 0.86, "log_loss": 0.47]),
            version(3, "rejected", metrics: ["auc": 0.72, "log_loss": 0.61],
                    gates: [["gate": "auc >= 0.8", "passed": false, "detail": "auc = 0.72"]]),
            version(4, "failed", commit: nil, extra: ["failed_at": time(400), "log_tail": "Traceback: ValueError: bad column"]),
            version(5, "validated", metrics: ["auc": 0.88, "log_loss": 0.45]),
            version(6, "training"),
        ], aliases: ["champion": 5, "previous": 2])
        let fraud = model("fraud", versions: [
            version(1, "validated", metrics: ["precision": 0.9, "recall": 0.7]),
            version(2, "validated", metrics: ["precision": 0.92]),
        ], aliases: ["champion": 2])
        let prod = deployment("churn-prod", model: "churn", weights: [(2, 90), (5, 10)],
                              rollout: ["from": 2, "to": 5, "phase": "stepping", "step": 1, "step_started": time(30), "started": time(90)],
                              quarantined: [["version": 3, "reason": "error rate 12% above 5% during the canary", "at": time(3000)]])
        let status = try status(models: [churn, fraud], deployments: [prod],
                                locks: [["holder": "h-1", "generation": 7, "command": "capstan run", "pid": 4242, "host": "vm", "started": time(65), "expires": time(-45)]])
        let history = try history([
            event(12, object: "deployment/churn-prod", action: "start-rollout", reason: "v5 is the new champion", secondsAgo: 90, before: 2, after: 5),
            event(11, object: "model/churn/alias/champion", action: "move-alias", reason: "champion follows the newest validated version", secondsAgo: 100, before: 2, after: 5),
            event(10, object: "model/churn/v5", secondsAgo: 110),
        ])
        return (status, history)
    }

    static var context: StatusPageContext {
        StatusPageContext(repository: "https://git.example.com/ml/models.git", ref: "main", pollInterval: "1m",
                          lastObservedCommit: commit, startedAt: now.addingTimeInterval(-7200), now: now)
    }
}

extension String {
    /// How many times `needle` occurs.
    func occurrences(of needle: String) -> Int {
        components(separatedBy: needle).count - 1
    }

    /// The text between the first `start` and the `end` after it.
    func between(_ start: String, _ end: String) -> String? {
        guard let a = range(of: start), let b = range(of: end, range: a.upperBound..<endIndex) else { return nil }
        return String(self[a.upperBound..<b.lowerBound])
    }
}
