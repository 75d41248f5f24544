/// The condition of an object after a pass, as `capstan status` shows it (DESIGN.md §4 "Report").
public struct ObjectCondition: Hashable, Sendable {
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

    public var object: ObjectRef
    public var type: Kind
    /// A CamelCase reason (`Converged`, `TrainingFailed`, `CandidateRejected`, `AliasBlocked`…).
    public var reason: String
    public var message: String
    /// The commit of the pass that set the condition. A condition that holds across passes (the
    /// same type, reason, message and failure class) is not written again: it keeps the commit
    /// and time at which it was set, like Kubernetes' `lastTransitionTime`. The commit a pass
    /// observed is in its pass record.
    public var commit: String?
    /// When the condition was set (it last changed), in milliseconds since the epoch.
    public var updatedAt: Int64
    /// For a condition that is not Ready: what the loop does about it (stalled, waiting,
    /// transient, terminal), and when it comes back by itself (waiting).
    public var failureClass: ReconcileFailure.Class?

    public init(object: ObjectRef, type: Kind, reason: String, message: String, commit: String?, updatedAt: Int64,
                failureClass: ReconcileFailure.Class? = nil) {
        self.object = object
        self.type = type
        self.reason = reason
        self.message = message
        self.commit = commit
        self.updatedAt = updatedAt
        self.failureClass = failureClass
    }
}

public enum Conditions {
    /// Each desired model's condition, from the plan that remains after a pass (computed again
    /// from the registry as it is now) and the registry itself.
    /// `failed`: the failure of each model's entries in the pass just run, by model. It is what
    /// the condition reports when the residual plan alone would say the model is progressing or
    /// ready (a failure the registry keeps no trace of: a missing secret, a full disk, a training
    /// that exited with 75); a degraded or stalled model reports what the residual plan says.
    public static func models(desired: DesiredState, residual: Plan, registry: RegistrySnapshot, now: Int64,
                              failed: [String: ReconcileFailure] = [:]) -> [ObjectCondition] {
        let byModel = Dictionary(grouping: residual.entries, by: \.name)
        return desired.models.map { model in
            let entries = byModel[model.name] ?? []
            let (type, reason, message) = classify(model, entries, registry.versions[model.name] ?? [])
            if let failure = failed[model.name], type == .progressing || type == .ready {
                return ObjectCondition(object: .model(model.name), type: kind(of: failure.failureClass), reason: failure.reason.rawValue,
                                       message: failure.message, commit: desired.commit, updatedAt: now,
                                       failureClass: failure.failureClass)
            }
            return ObjectCondition(object: .model(model.name), type: type, reason: reason, message: message,
                                   commit: desired.commit, updatedAt: now, failureClass: failureClass(type, entries))
        }
    }

    /// The condition of an object whose change failed with `failureClass`: it needs a spec change
    /// (stalled), is retried (progressing), waits or is final (degraded).
    static func kind(of failureClass: ReconcileFailure.Class) -> ObjectCondition.Kind {
        switch failureClass {
        case .stalled: return .stalled
        case .transient: return .progressing
        case .waiting, .terminal: return .degraded
        }
    }

    /// What the loop does about a model's condition: a training in backoff waits until the
    /// backoff ends; a rejected candidate is terminal; a blocked alias is stalled.
    static func failureClass(_ type: ObjectCondition.Kind, _ entries: [PlanEntry]) -> ReconcileFailure.Class? {
        switch type {
        case .ready, .progressing: return nil
        case .stalled: return .stalled
        case .degraded:
            if let wait = entries.first(where: { $0.action == .wait }), case .wait(let d) = wait.detail { return .waiting(until: d.until) }
            return .terminal
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

extension ObjectCondition: Codable {
    enum CodingKeys: String, CodingKey {
        case object, type, reason, message, commit, updatedAt, failureClass, until
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        object = try c.decode(ObjectRef.self, forKey: .object)
        type = try c.decode(Kind.self, forKey: .type)
        reason = try c.decode(String.self, forKey: .reason)
        message = try c.decode(String.self, forKey: .message)
        commit = try c.decodeIfPresent(String.self, forKey: .commit)
        updatedAt = try c.decode(Int64.self, forKey: .updatedAt)
        failureClass = try ReconcileFailure.Class(name: c.decodeIfPresent(String.self, forKey: .failureClass),
                                                  until: c.decodeIfPresent(Int64.self, forKey: .until))
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(object, forKey: .object)
        try c.encode(type, forKey: .type)
        try c.encode(reason, forKey: .reason)
        try c.encode(message, forKey: .message)
        try c.encodeIfPresent(commit, forKey: .commit)
        try c.encode(updatedAt, forKey: .updatedAt)
        try c.encodeIfPresent(failureClass?.name, forKey: .failureClass)
        try c.encodeIfPresent(failureClass?.until, forKey: .until)
    }
}
