import CapstanGit
import CapstanStore
import Crypto
import Foundation

/// The journal operation of a change of the serving layer.
let deployOperation = "deploy"

/// The serving half of a pass: observe the serving layer, plan the Deployments against the
/// registry as the model half left it, and carry the plan out (endpoints, rollout states,
/// quarantines), recording every step in the audit log.
public struct DeploymentPhase: Sendable {
    public let context: EngineContext
    /// Nil when no serving layer is configured.
    public let serving: (any ServingTarget)?
    public var records: ServingRecords { ServingRecords(database: context.database, now: context.now) }

    public init(context: EngineContext, serving: (any ServingTarget)?) {
        self.context = context
        self.serving = serving
    }

    /// A digest of what a rollout and a quarantine belong to: the Deployment's spec and how its
    /// model is served. Changing either in Git lifts a quarantine.
    public static func specHash(_ deployment: DeploymentManifest, serve: ServeSpec?) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var bytes = (try? encoder.encode(deployment.spec)) ?? Data()
        bytes.append(0)
        bytes.append((try? encoder.encode(serve)) ?? Data())
        return Hex.sha256(bytes)
    }

    /// Each Deployment with the version it should serve now.
    public static func desired(_ manifests: ManifestSet, registry: RegistrySnapshot) -> [DesiredDeployment] {
        manifests.deployments.map { d in
            DesiredDeployment.resolve(d, registry: registry,
                                      specHash: specHash(d, serve: manifests.model(named: d.spec.model)?.spec.serve))
        }
    }

    /// What the serving layer holds, with Capstan's own records. Never throws: an unreachable
    /// serving layer is an observation.
    public func observe(record: Bool = true) async throws -> ServingObservation {
        let records = self.records
        let applied = try records.applied()
        let rollouts = try records.rollouts()
        let quarantine = try records.quarantine()
        guard let serving else {
            return ServingObservation(endpoints: nil, unavailable: "no serving layer is configured", applied: applied,
                                      rollouts: rollouts, quarantine: quarantine)
        }
        do {
            let endpoints = try await serving.endpoints()
            if record { try? records.setObserved(endpoints) }
            return ServingObservation(endpoints: Dictionary(endpoints.map { ($0.deployment, $0) }, uniquingKeysWith: { a, _ in a }),
                                      applied: applied, rollouts: rollouts, quarantine: quarantine)
        } catch {
            return ServingObservation(endpoints: nil, unavailable: String(describing: error), applied: applied,
                                      rollouts: rollouts, quarantine: quarantine)
        }
    }

    /// Executes the deployment entries, one deployment after another.
    public func execute(_ entries: [PlanEntry], manifests: ManifestSet, repository: GitRepository, commit: String) async -> [String: EntryOutcome] {
        var outcomes: [String: EntryOutcome] = [:]
        for entry in entries where entry.action.isChange || entry.action == .wait {
            guard case .deployment(let detail) = entry.detail else { continue }
            if entry.action == .wait { continue }
            if Task.isCancelled { break }
            context.events(.started(entry))
            let outcome: EntryOutcome
            do {
                // A pass that lost its lease does not touch the serving layer either.
                try context.database.checkLease()
                outcome = try await execute(entry, detail, manifests: manifests, repository: repository, commit: commit)
            } catch {
                outcome = ModelPipeline.outcome(of: error)
            }
            outcomes[entry.id] = outcome
            context.events(.finished(entry, outcome))
        }
        return outcomes
    }

    func execute(_ entry: PlanEntry, _ detail: DeploymentDetail, manifests: ManifestSet, repository: GitRepository,
                 commit: String) async throws -> EntryOutcome {
        let name = entry.name
        let object = "deployment/\(name)"
        switch entry.action {
        case .retireEndpoint:
            guard let serving else { return .skipped("no serving layer") }
            let change = DeploymentChange(deployment: name, model: detail.model, applied: .remove, rollout: nil, quarantine: nil,
                                          event: context.event(object, "retire-endpoint", commit: commit,
                                                               before: detail.from.map { .int(Int64($0)) }, reason: entry.reason))
            try await journaled(change) { try await serving.remove(deployment: name) }
            return .done("endpoint removed")
        case .adoptDrift:
            try record(DeploymentChange(deployment: name, model: detail.model, applied: .set(detail.backends ?? []), rollout: nil,
                                        quarantine: nil,
                                        event: context.event(object, "adopt-drift", commit: commit, after: Self.traffic(detail.backends ?? []),
                                                             reason: entry.reason)))
            return .done("took the endpoint as it is")
        default:
            break
        }
        let event = context.event(object, entry.action.rawValue, commit: commit, before: detail.from.map { .int(Int64($0)) },
                                  after: detail.backends.map(Self.traffic), reason: entry.reason)
        if let backends = detail.backends {
            guard let serving else { return .skipped("no serving layer") }
            guard let model = manifests.model(named: detail.model), let serve = model.spec.serve else {
                return .failed("model \(detail.model) has no spec.serve at \(commit.prefix(7))")
            }
            let spec = EndpointSpec(deployment: name, model: detail.model,
                                    backends: try await backendSpecs(backends, model: detail.model, serve: serve, repository: repository))
            try await journaled(DeploymentChange(deployment: name, model: detail.model, applied: .set(backends), rollout: detail.rollout,
                                                 quarantine: detail.quarantine, event: event)) {
                try await serving.apply(spec)
            }
        } else {
            try record(DeploymentChange(deployment: name, model: detail.model, applied: .keep, rollout: detail.rollout,
                                        quarantine: detail.quarantine, event: event))
        }
        let traffic = detail.backends.map { " — " + $0.map { "v\($0.version) \($0.weight)%" }.joined(separator: ", ") } ?? ""
        if entry.action == .rollback {
            return .failed("v\(detail.to.map(String.init) ?? "?") rolled back and quarantined; traffic back on \(detail.from.map { "v\($0)" } ?? "the previous version")")
        }
        return .done((detail.progress ?? entry.action.rawValue) + traffic)
    }

    // MARK: Records of a change, journaled

    /// A change of the serving layer and what Capstan records about it: what it set on the
    /// endpoint, the rollout state, a quarantine, the audit event. Kept in the journal while the
    /// serving layer is changed, and recorded in one transaction once it is.
    struct DeploymentChange: Codable, Sendable {
        enum Applied: Codable, Sendable {
            /// The endpoint is left as it is (a rollout's pause, a quarantine without a change).
            case keep
            case set([BackendWeight])
            case remove
        }

        var deployment: String
        var model: String
        var applied: Applied
        /// The rollout to keep (nil: none in progress any more).
        var rollout: RolloutState?
        var quarantine: Quarantine?
        var event: AuditEvent
    }

    /// Journals `change`, makes the serving change (`body`), then records it. A pass killed
    /// after the serving layer took the change but before Capstan recorded it leaves the entry
    /// `started`; the next pass finds the endpoint as the change left it and records the change
    /// then (`recoverInterrupted`), instead of taking Capstan's own change for drift.
    func journaled(_ change: DeploymentChange, _ body: () async throws -> Void) async throws {
        let id = try context.journal.begin(operation: deployOperation, subject: "deployment/\(change.deployment)",
                                           detail: .map(["change": try Self.value(change)]))
        do {
            try await body()
        } catch {
            try? context.journal.fail(id: id, detail: .map(["error": .string(String(describing: error))]))
            throw error
        }
        Failpoint.hit("deployment.after-serving")
        try record(change, closing: id)
    }

    /// Records `change` (and closes journal entry `closing`) in one transaction.
    func record(_ change: DeploymentChange, closing id: Int64? = nil, late: Bool = false) throws {
        let records = self.records, audit = context.audit, journal = context.journal
        try context.database.write("record the change of \(change.deployment)") { db in
            switch change.applied {
            case .keep: break
            case .set(let backends): try records.setApplied(db, change.deployment, model: change.model, backends)
            case .remove: try records.setApplied(db, change.deployment, model: change.model, nil)
            }
            try records.setRollout(db, change.deployment, change.rollout)
            if let q = change.quarantine { try records.addQuarantine(db, q) }
            var event = change.event
            if late { event.reason += " (recorded after an interrupted pass)" }
            _ = try audit.record(db, event)
            if let id {
                if late {
                    try journal.fail(db, id: id, detail: .map(["change": try Self.value(change), "interrupted": .bool(true)]))
                } else {
                    try journal.finish(db, id: id)
                }
            }
        }
    }

    /// Closes the serving changes a killed pass left `started`: a change the serving layer shows
    /// (the endpoint has the journaled weights, or is gone for a removal) is recorded now, with
    /// its audit event; one it does not show is closed as interrupted, and planned again. Left
    /// for a later pass while the serving layer cannot be read. Returns a line per entry.
    public func recoverInterrupted() async throws -> [String] {
        let pending = try context.journal.unfinished().filter { $0.operation == deployOperation }
        guard !pending.isEmpty, let serving, let endpoints = try? await serving.endpoints() else { return [] }
        let byName = Dictionary(endpoints.map { ($0.deployment, $0) }, uniquingKeysWith: { a, _ in a })
        var notes: [String] = []
        for entry in pending {
            guard case .map(let detail)? = entry.detail, let value = detail["change"],
                  let change: DeploymentChange = Self.decode(value) else {
                try context.journal.fail(id: entry.id, detail: .map(["interrupted": .bool(true)]))
                continue
            }
            let happened: Bool
            switch change.applied {
            case .keep: happened = false
            case .set(let backends):
                happened = byName[change.deployment].map { DeploymentPlanner.weights($0) == backends.sorted { $0.version < $1.version } } ?? false
            case .remove: happened = byName[change.deployment] == nil
            }
            var note = "recovered an interrupted \(change.event.action) of deployment/\(change.deployment) (journal entry \(entry.id))"
            if happened {
                try record(change, closing: entry.id, late: true)
                note += "; the serving layer had taken it"
            } else {
                try context.journal.fail(id: entry.id, detail: .map(["change": value, "interrupted": .bool(true)]))
            }
            context.record("deployment/\(change.deployment)", "interrupted", commit: nil, reason: note)
            notes.append(note)
        }
        return notes
    }

    static func value<T: Encodable>(_ value: T) throws -> ParamValue {
        try JSONDecoder().decode(ParamValue.self, from: try JSONEncoder().encode(value))
    }

    static func decode<T: Decodable>(_ value: ParamValue) -> T? {
        guard let data = try? JSONEncoder().encode(value) else { return nil }
        return try? JSONDecoder().decode(T.self, from: data)
    }

    /// The concrete backends: each version's commit materialized for its serving code, its
    /// artifact verified, the model's `serve` settings.
    func backendSpecs(_ backends: [BackendWeight], model: String, serve: ServeSpec, repository: GitRepository) async throws -> [BackendSpec] {
        var out: [BackendSpec] = []
        for b in backends {
            guard let version = try await context.registry.version(of: model, number: b.version) else {
                throw StepOutputError(message: "model \(model) has no v\(b.version)")
            }
            guard let digest = version.artifactDigest else {
                throw StepOutputError(message: "v\(b.version) of \(model) has no artifact to serve")
            }
            let modelDir = try context.artifacts.open(digest: digest)
            guard let commitText = version.commit, let commit = ObjectID(hex: commitText) else {
                throw StepOutputError(message: "v\(b.version) of \(model) records no commit to serve its code from")
            }
            let tree = try await context.materializer.materialize(repository, commit: commit)
            let workdir = serve.workdir == "." ? tree.path : tree.appendingPathComponent(serve.workdir).path
            out.append(BackendSpec(version: b.version, weight: b.weight, replicas: b.replicas, command: serve.command, workdir: workdir,
                                   modelDir: modelDir, artifactDigest: digest, env: serve.env, secretEnv: serve.secretEnv,
                                   readinessPath: serve.readiness.path,
                                   readinessTimeoutMilliseconds: serve.readiness.timeout.milliseconds))
        }
        return out
    }

    static func traffic(_ backends: [BackendWeight]) -> ParamValue {
        .map(Dictionary(uniqueKeysWithValues: backends.map { ("v\($0.version)", ParamValue.int(Int64($0.weight))) }))
    }

    /// Each deployment's condition, from what is left to do after the pass.
    public static func conditions(_ desired: [DesiredDeployment], residual: [PlanEntry], observation: ServingObservation,
                                  commit: String, now: Int64) -> [ObjectCondition] {
        let byName = Dictionary(grouping: residual, by: \.name)
        return desired.map { d in
            let entries = byName[d.name] ?? []
            let (type, reason, message): (ObjectCondition.Kind, String, String)
            if let e = entries.first(where: { $0.action == .servingUnavailable }) {
                (type, reason, message) = (.degraded, "ServingUnavailable", e.reason)
            } else if let e = entries.first(where: { $0.action == .blocked }) {
                if case .deployment(let detail) = e.detail, detail.to != nil {
                    (type, reason, message) = (.degraded, "RolledBack", e.reason)
                } else {
                    (type, reason, message) = (.stalled, "TargetBlocked", e.reason)
                }
            } else if let e = entries.first(where: { $0.action == .drift }) {
                (type, reason, message) = (.degraded, "Drifted", e.reason)
            } else if let e = entries.first(where: { $0.action.isChange || $0.action == .wait }) {
                (type, reason, message) = (.progressing, "RollingOut", e.reason)
            } else if let endpoint = observation.endpoints?[d.name], let target = d.target,
                      let backend = endpoint.backend(version: target), backend.health == .starting {
                (type, reason, message) = (.progressing, "Starting", "v\(target) is starting (\(backend.readyReplicas)/\(backend.spec.replicas) replicas ready)")
            } else if let endpoint = observation.endpoints?[d.name], let target = d.target,
                      let backend = endpoint.backend(version: target), backend.health != .ready {
                (type, reason, message) = (.degraded, "Unhealthy", "v\(target): \(backend.health.rawValue)" + (backend.lastError.map { " (\($0))" } ?? ""))
            } else {
                (type, reason, message) = (.ready, "Serving", d.target.map { "v\($0) serves all traffic" } ?? "serving")
            }
            return ObjectCondition(object: "deployment/\(d.name)", type: type, reason: reason, message: message, commit: commit, updatedAt: now)
        }
    }
}
