import CapstanCore
import Foundation

/// Promotion by pull request (`capstan promote`): which version an alias's pin should move to,
/// whether it may, and the case for it (`PromotionReport`), from the registry and Capstan's state.
/// The Git side (the edit, the branch, the push) is the command's.
public struct Promotion: Sendable {
    /// Which version to propose.
    public enum Choice: Sendable, Equatable {
        case version(Int)
        /// The newest validated version newer than the alias's holder, not archived and not
        /// quarantined anywhere.
        case candidate
    }

    /// A promotion Capstan will not propose, and why.
    public struct Refusal: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    public let registry: any Registry
    public let store: any StateStore

    public init(registry: any Registry, store: any StateStore) {
        self.registry = registry
        self.store = store
    }

    /// The case for moving `alias` of `model` (as `manifests` declare it) to the chosen version.
    /// `branch` and `base` are the branch to push and the one it is proposed against.
    public func prepare(model name: String, alias: String, choice: Choice, manifests: ManifestSet, branch: (Int) -> String,
                        base: String) async throws -> PromotionReport {
        guard let model = manifests.model(named: name) else {
            throw Refusal(message: "the repository has no Model named '\(name)'")
        }
        guard let pin = model.spec.alias(named: alias) else {
            let declared = model.spec.aliases.map(\.name)
            throw Refusal(message: "Model \(name) does not declare alias '\(alias)' (\(declared.isEmpty ? "it declares none" : "declared: " + declared.joined(separator: ", "))); add it to spec.aliases in \(model.origin.file) first")
        }
        guard let position = model.origin.fields["spec.aliases.\(alias)"] else {
            throw Refusal(message: "the position of spec.aliases.\(alias) in \(model.origin.file) is not known")
        }
        let deployments = Set(manifests.deployments.filter { $0.spec.model == name }.map(\.metadata.name))
        let quarantined = try await store.servingRecords().quarantine.filter { deployments.contains($0.deployment) }
        let versions = try await registry.versions(of: name)
        let holderNumber = try await registry.resolveAlias(alias, of: name)
        let number: Int
        switch choice {
        case .version(let n):
            number = n
        case .candidate:
            let floor = max(holderNumber ?? 0, pin.target.pinnedNumber ?? 0)
            guard let newest = versions.filter({ v in
                v.status == .validated && v.archivedAt == nil && v.number > floor && !quarantined.contains { $0.version == v.number }
            }).max(by: { $0.number < $1.number }) else {
                let holding = holderNumber.map { "v\($0) holds \(alias)" } ?? "no version holds \(alias)"
                throw Refusal(message: "no candidate for \(name)@\(alias): \(holding), and no newer version is validated, current and free of quarantine")
            }
            number = newest.number
        }
        guard let version = versions.first(where: { $0.number == number }) else {
            let newest = versions.map(\.number).max()
            throw Refusal(message: "\(name) has no v\(number)" + (newest.map { " (the newest is v\($0))" } ?? " (it has no versions)"))
        }
        guard version.status == .validated else {
            throw Refusal(message: "v\(number) of \(name) is \(version.status.rawValue), not validated; only a validated version can be promoted")
        }
        if version.archivedAt != nil { throw Refusal(message: "v\(number) of \(name) is archived (beyond retention); it cannot be promoted") }
        if let q = quarantined.first(where: { $0.version == number }) {
            throw Refusal(message: "v\(number) of \(name) is quarantined in \(q.deployment) (\(q.reason)); it cannot be promoted")
        }
        if pin.target == .version(number) {
            throw Refusal(message: "\(name)@\(alias) is pinned to v\(number) already; nothing to promote")
        }
        let holder = holderNumber.flatMap { n in versions.first { $0.number == n } }
        let training: TrainingDescription?
        if let known = version.training {
            training = known
        } else {
            training = try await registry.trainingDescription(of: name, number: number)
        }
        return PromotionReport(
            model: name, alias: alias, candidate: VersionSummary(version), holder: holder.map(VersionSummary.init),
            pinnedBefore: pin.target.description,
            metrics: PromotionReport.metricRows(candidate: version.metrics, holder: holder?.metrics, gates: model.spec.validate),
            fingerprint: version.fingerprint, training: training,
            serving: try await servingEvents(of: number, deployments: deployments.sorted()),
            quarantines: quarantined.filter { $0.version == number }, file: model.origin.file, line: Int(position.line), branch: branch(number), base: base)
    }

    /// The endpoint changes the version took part in, oldest first.
    func servingEvents(of number: Int, deployments: [String]) async throws -> [PromotionReport.ServingEvent] {
        let key = "v\(number)"
        var out: [PromotionReport.ServingEvent] = []
        for deployment in deployments {
            for event in try await store.auditEvents(AuditQuery(.object(.deployment(deployment)))) {
                guard event.action.changesTraffic else { continue }
                var weight: Int?
                if case .map(let traffic)? = event.after, case .int(let w)? = traffic[key] { weight = Int(w) }
                let left = event.before == .int(Int64(number)) && weight == nil
                guard weight != nil || left else { continue }
                out.append(PromotionReport.ServingEvent(at: event.at, deployment: deployment, action: event.action, weight: weight,
                                                        reason: event.reason))
            }
        }
        return out.sorted { ($0.at, $0.deployment) < ($1.at, $1.deployment) }
    }
}

extension AuditAction {
    /// Whether an event of this action changed an endpoint's traffic.
    var changesTraffic: Bool {
        switch self {
        case .createEndpoint, .startRollout, .advanceRollout, .promote, .rollback, .abortRollout, .scale: return true
        default: return false
        }
    }
}

extension AliasTarget {
    /// The number a pin names (nil for `latest`).
    var pinnedNumber: Int? {
        if case .version(let n) = self { return n }
        return nil
    }
}
