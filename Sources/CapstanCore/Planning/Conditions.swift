/// The condition of an object after a pass, as `capstan status` shows it (DESIGN.md §4 "Report").
public struct ObjectCondition: Hashable, Sendable, Codable {
    public enum Kind: String, Hashable, Sendable, Codable, CaseIterable {
        /// The registry matches the spec at the observed commit.
        case ready = "Ready"
        /// Work is under way or left for the next pass (training, a validation, an alias to move).
        case progressing = "Progressing"
        /// Nothing can happen until the spec changes (an alias pinned to a rejected version).
        case stalled = "Stalled"
        /// Something failed and is retried (a training in backoff), or the candidate was rejected.
        case degraded = "Degraded"
    }

    /// `model/churn`.
    public var object: String
    public var type: Kind
    /// A CamelCase reason (`Converged`, `TrainingFailed`, `CandidateRejected`, `AliasBlocked`…).
    public var reason: String
    public var message: String
    /// The commit the condition was observed at.
    public var commit: String?
    /// Milliseconds since the epoch.
    public var updatedAt: Int64

    public init(object: String, type: Kind, reason: String, message: String, commit: String?, updatedAt: Int64) {
        self.object = object
        self.type = type
        self.reason = reason
        self.message = message
        self.commit = commit
        self.updatedAt = updatedAt
    }
}

public enum Conditions {
    /// Each desired model's condition, from the plan that remains after a pass (computed again
    /// from the registry as it is now) and the registry itself.
    public static func models(desired: DesiredState, residual: Plan, registry: RegistrySnapshot, now: Int64) -> [ObjectCondition] {
        let byModel = Dictionary(grouping: residual.entries, by: \.name)
        return desired.models.map { model in
            let entries = byModel[model.name] ?? []
            let (type, reason, message) = classify(model, entries, registry.versions[model.name] ?? [])
            return ObjectCondition(object: "model/\(model.name)", type: type, reason: reason, message: message,
                                   commit: desired.commit, updatedAt: now)
        }
    }

    static func classify(_ model: DesiredModel, _ entries: [PlanEntry], _ versions: [ModelVersion])
        -> (ObjectCondition.Kind, String, String) {
        if let wait = entries.first(where: { $0.action == .wait }) {
            if case .wait(let d) = wait.detail, d.fingerprint != nil {
                return (.degraded, "TrainingFailed", wait.reason)
            }
            return (.progressing, "Waiting", wait.reason)
        }
        let current = versions.first { $0.fingerprint == model.fingerprint }
        if current?.status == .rejected {
            let failed = current!.gateResults.filter { !$0.passed }.map { "\($0.gate): \($0.detail)" }
            return (.degraded, "CandidateRejected",
                    "v\(current!.number) was rejected by its gates" + (failed.isEmpty ? "" : " (\(failed.joined(separator: "; ")))"))
        }
        if let blocked = entries.first(where: { $0.action == .blocked }) {
            return (.stalled, "AliasBlocked", blocked.reason)
        }
        if let change = entries.first(where: { $0.action.isChange }) {
            return (.progressing, "ChangesPending", "\(entries.filter { $0.action.isChange }.count) change(s) left, first: \(change.action.rawValue): \(change.reason)")
        }
        if let v = current {
            return (.ready, "Converged", "v\(v.number) is \(v.status.rawValue); aliases match the spec")
        }
        return (.ready, "Converged", "the registry matches the spec")
    }
}
