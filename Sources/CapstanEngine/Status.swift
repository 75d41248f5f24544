import CapstanCore

/// Reads the status document (docs/state.md) from the ports: the registry's models, versions and
/// aliases, and the state's conditions, last pass, leases, endpoints, rollouts and quarantines.
/// `capstan status`, the controller's status API and its page all show this one document.
public enum StatusReader {
    public static func document(store: any StateStore, registry: any Registry, stateDirectory: String) async throws -> StatusDocument {
        let snapshot = try await registry.snapshot()
        let conditions = Dictionary(try await store.conditions().map { ($0.object, $0) }, uniquingKeysWith: { a, _ in a })
        let serving = try await store.servingRecords()
        let lastPass = try await store.recentPasses(limit: 1).first
        let leases = try await store.leases()
        func time(_ ms: Int64) -> String { Timestamp.iso8601(milliseconds: ms, fractional: false) }
        func conditionList(_ object: ObjectRef) -> [StatusDocument.Condition] {
            conditions[object].map { [StatusDocument.Condition($0)] } ?? []
        }
        let models = snapshot.models.map { model in
            StatusDocument.Model(
                name: model.name, description: model.description, labels: model.labels,
                aliases: snapshot.aliases[model.name] ?? [:], conditions: conditionList(.model(model.name)),
                versions: (snapshot.versions[model.name] ?? []).map { v in
                    StatusDocument.Version(
                        version: v.number, status: v.status.rawValue, fingerprint: v.fingerprint, commit: v.commit, metrics: v.metrics,
                        params: v.params, artifactDigest: v.artifactDigest, gateResults: v.gateResults, created: time(v.createdAt),
                        attempts: v.attempts, failedAt: v.failedAt.map(time), archivedAt: v.archivedAt.map(time),
                        logTail: v.status == .failed ? v.logTail : nil)
                })
        }
        // Every deployment Capstan knows of: with a condition, an endpoint or a rollout.
        let names = Set(conditions.keys.compactMap(\.deployment)).union(serving.observed.keys).union(serving.rollouts.keys).sorted()
        let deployments = names.map { name in
            let endpoint = serving.observed[name]
            return StatusDocument.Deployment(
                name: name, model: endpoint?.model ?? serving.rollouts[name]?.model, conditions: conditionList(.deployment(name)),
                backends: (endpoint?.backends ?? []).sorted { $0.spec.version < $1.spec.version }.map { b in
                    let p95 = b.stats.latency.quantile(0.95)
                    return StatusDocument.Backend(
                        version: b.spec.version, weight: b.spec.weight, replicas: b.spec.replicas, readyReplicas: b.readyReplicas,
                        health: b.health.rawValue, restarts: b.restarts, lastError: b.lastError, requests: b.stats.requests,
                        errors5xx: b.stats.errors5xx, connectionErrors: b.stats.connectionErrors,
                        p95Milliseconds: p95.flatMap { $0.isFinite ? $0 : nil })
                },
                rollout: serving.rollouts[name].map {
                    StatusDocument.Rollout(from: $0.from, to: $0.to, phase: $0.phase.rawValue, step: $0.phase == .stepping ? $0.step + 1 : nil,
                                           stepStarted: time($0.stepStartedAt), started: time($0.startedAt))
                },
                quarantined: serving.quarantine.filter { $0.deployment == name }.map {
                    StatusDocument.Quarantined(version: $0.version, reason: $0.reason, at: time($0.at))
                })
        }
        return StatusDocument(
            stateDir: stateDirectory, models: models, deployments: deployments,
            lastPass: lastPass.map {
                StatusDocument.Pass(command: $0.command, commit: $0.commit, outcome: $0.outcome.rawValue, started: time($0.startedAt),
                                    finished: $0.finishedAt.map(time), summary: $0.summary)
            },
            locks: leases.map {
                StatusDocument.Lock(holder: $0.holder, generation: $0.generation, command: $0.command, pid: $0.pid, host: $0.host,
                                    started: time($0.startedAt), expires: time($0.expiresAt))
            })
    }
}
