import CapstanCore
import Foundation

/// Builds model cards (`ModelCard`) from the manifests, the registry, the audit log and Git.
public struct ModelCards: Sendable {
    public let registry: any Registry
    public let store: any StateStore
    /// A commit of the model repository, if Git has it.
    public let commit: @Sendable (String) async -> ModelCard.Commit?

    public init(registry: any Registry, store: any StateStore, commit: @escaping @Sendable (String) async -> ModelCard.Commit?) {
        self.registry = registry
        self.store = store
        self.commit = commit
    }

    /// The card of `version` of `model` (nil: the version the Model's first alias holds, else
    /// the newest validated one, else the newest).
    public func card(model name: String, version number: Int?, manifests: ManifestSet, now: Int64) async throws -> ModelCard {
        guard let model = manifests.model(named: name) else {
            throw Promotion.Refusal(message: "the repository has no Model named '\(name)'")
        }
        let versions = try await registry.versions(of: name)
        let aliases = try await registry.aliases(of: name)
        let chosen: ModelVersion?
        if let number {
            chosen = versions.first { $0.number == number }
            guard chosen != nil else {
                throw Promotion.Refusal(message: "\(name) has no v\(number)" + (versions.map(\.number).max().map { " (the newest is v\($0))" } ?? " (it has no versions)"))
            }
        } else {
            let first = model.spec.aliases.first.flatMap { aliases[$0.name] }
            chosen = first.flatMap { n in versions.first { $0.number == n } }
                ?? versions.filter { $0.status == .validated }.max { $0.number < $1.number }
                ?? versions.max { $0.number < $1.number }
        }
        guard let version = chosen else {
            throw Promotion.Refusal(message: "\(name) has no versions in the registry yet")
        }
        let training: TrainingDescription?
        if let known = version.training {
            training = known
        } else {
            training = try await registry.trainingDescription(of: name, number: version.number)
        }
        var environment = Set(training?.env.keys.map { $0 } ?? []).union(training?.secretEnv ?? [])
        if training == nil, let spec = model.spec.train { environment.formUnion(spec.env.keys); environment.formUnion(spec.secretEnv.keys) }
        let trainedAt: ModelCard.Commit?
        if let id = version.commit { trainedAt = await commit(id) } else { trainedAt = nil }
        let deployments = manifests.deployments.filter { $0.spec.model == name }.map(\.metadata.name).sorted()
        return ModelCard(
            model: name, description: model.spec.description, card: model.spec.card, version: VersionSummary(version),
            fingerprint: version.fingerprint, aliases: aliases.filter { $0.value == version.number }.map(\.key).sorted(),
            trainedAt: trainedAt, training: training, environment: environment.sorted(),
            history: try await history(of: version.number, model: name),
            serving: try await Promotion(registry: registry, store: store).servingEvents(of: version.number, deployments: deployments),
            generatedAt: now)
    }

    /// The version's own events, the alias moves to and from it, and the drift of its model,
    /// oldest first.
    func history(of number: Int, model: String) async throws -> [ModelCard.Event] {
        var out: [ModelCard.Event] = []
        var summaries: [String: String?] = [:]
        for event in try await store.auditEvents(AuditQuery(.object(.model(model)))).reversed() {
            let change: String
            switch event.object {
            case .version(_, let n) where n == number:
                change = "v\(n)"
            case .alias(_, let alias) where event.action == .moveAlias || event.action == .deleteAlias:
                let before = event.before.flatMap(Self.number), after = event.after.flatMap(Self.number)
                guard before == number || after == number else { continue }
                change = "\(alias): \(before.map { "v\($0)" } ?? "unset") → \(after.map { "v\($0)" } ?? "deleted")"
            case .model where event.action == .revertDrift || event.action == .adoptDrift:
                change = "drift of \(model)"
            default:
                continue
            }
            var carriedBy: String?
            if let id = event.commit {
                if summaries[id] == nil { summaries[id] = .some(await commit(id)?.summary) }
                carriedBy = summaries[id] ?? nil
            }
            out.append(ModelCard.Event(at: event.at, actor: event.actor, action: event.action, object: event.object.description,
                                       change: change, reason: event.reason, commit: event.commit, carriedBy: carriedBy))
        }
        return out.sorted { $0.at < $1.at }
    }

    static func number(_ value: ParamValue) -> Int? {
        if case .int(let n) = value { return Int(n) }
        return nil
    }
}
