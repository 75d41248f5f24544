/// The typed, ordered list of actions that turns the actual state into the desired state, each
/// with its reason (DESIGN.md §2). The same value is printed by `capstan plan`, saved by
/// `--out`, executed by `capstan apply` and rendered as a pull-request comment.
public struct Plan: Hashable, Sendable, Codable {
    /// Bumped when the saved form changes incompatibly; `apply PLANFILE` refuses other versions.
    public static let formatVersion = 1

    public var formatVersion: Int
    /// The repository as given (credentials scrubbed).
    public var repository: String
    /// The ref that was resolved, and the commit and tree it resolved to.
    public var ref: String
    public var commit: String
    /// A digest of the actual state the plan was computed from (see `ActualState.digest`): a
    /// saved plan is refused when it no longer matches.
    public var actualDigest: String
    /// Milliseconds since the epoch.
    public var createdAt: Int64
    public var entries: [PlanEntry]

    public init(repository: String, ref: String, commit: String, actualDigest: String, createdAt: Int64, entries: [PlanEntry]) {
        self.formatVersion = Self.formatVersion
        self.repository = repository
        self.ref = ref
        self.commit = commit
        self.actualDigest = actualDigest
        self.createdAt = createdAt
        self.entries = entries
    }

    /// The entries that change something (not `wait`, `blocked` or `orphaned`).
    public var changes: [PlanEntry] { entries.filter { $0.action.isChange } }

    public var hasChanges: Bool { entries.contains { $0.action.isChange } }

    /// Counts per action, for the summary line.
    public func count(_ action: PlanAction) -> Int { entries.count { $0.action == action } }
}

/// What an entry does.
public enum PlanAction: String, Hashable, Sendable, Codable, CaseIterable {
    case registerModel = "register-model"
    case updateModel = "update-model"
    case train
    case validate
    case moveAlias = "move-alias"
    case deleteAlias = "delete-alias"
    case archiveVersions = "archive-versions"
    /// Nothing can happen yet; it will on a later pass (a failed fingerprint in backoff, a version
    /// still training). Not a change.
    case wait
    /// Nothing can happen until the spec changes (an alias pinned to a version that does not
    /// exist or was rejected). Not a change.
    case blocked
    /// In the registry (or the serving layer) but no longer in Git; left alone. Not a change.
    case orphaned
    // Deployments.
    /// A new endpoint serving the target version.
    case createEndpoint = "create-endpoint"
    /// A rollout begins: the new version starts with no traffic.
    case startRollout = "start-rollout"
    /// A canary step: the new version's weight changes (or the analysis restarts).
    case advanceRollout = "advance-rollout"
    /// The new version takes all traffic; the old one is stopped.
    case promote
    /// The new version failed: traffic returns to the old one, the new one is quarantined.
    case rollback
    /// The target changed back to what serves: the rollout is dropped.
    case abortRollout = "abort-rollout"
    case scale
    /// An endpoint no longer in Git is removed (`policy.prune: true`).
    case retireEndpoint = "retire-endpoint"
    /// The endpoint was changed outside Capstan: set back (`policy.drift: revert`).
    case revertDrift = "revert-drift"
    /// The endpoint was changed outside Capstan: taken as it is (`policy.drift: adopt`).
    case adoptDrift = "adopt-drift"
    /// The endpoint was changed outside Capstan: reported only (`policy.drift: alert`). Not a change.
    case drift
    /// The serving layer cannot be reached; nothing that serves is touched. Not a change.
    case servingUnavailable = "serving-unavailable"

    public var isChange: Bool {
        switch self {
        case .wait, .blocked, .orphaned, .drift, .servingUnavailable: return false
        default: return true
        }
    }

    /// The Terraform-like symbol shown in text plans.
    public var symbol: String {
        switch self {
        case .registerModel, .train: return "+"
        case .updateModel, .moveAlias, .validate: return "~"
        case .deleteAlias, .archiveVersions: return "-"
        case .wait: return "…"
        case .blocked, .drift: return "!"
        case .orphaned, .servingUnavailable: return "?"
        case .createEndpoint: return "+"
        case .startRollout, .advanceRollout, .promote, .abortRollout, .scale, .revertDrift, .adoptDrift: return "~"
        case .rollback, .retireEndpoint: return "-"
        }
    }
}

/// One entry of a plan.
public struct PlanEntry: Hashable, Sendable, Codable {
    /// Stable within a plan: `churn/train`, `churn/alias/champion`. Dependencies refer to it.
    public var id: String
    public var action: PlanAction
    /// The manifest kind of the object (`Model`; `Deployment` later).
    public var kind: ManifestKind
    /// The object's name.
    public var name: String
    /// Why, in one sentence for people.
    public var reason: String
    /// Ids of entries that must succeed first.
    public var dependsOn: [String]
    public var detail: PlanDetail

    public init(id: String, action: PlanAction, kind: ManifestKind = .model, name: String, reason: String,
                dependsOn: [String] = [], detail: PlanDetail) {
        self.id = id
        self.action = action
        self.kind = kind
        self.name = name
        self.reason = reason
        self.dependsOn = dependsOn
        self.detail = detail
    }
}

/// The data each action needs to execute and to be shown.
public enum PlanDetail: Hashable, Sendable, Codable {
    case registerModel(ModelMetadataChange)
    case updateModel(ModelMetadataChange)
    case train(TrainDetail)
    case validate(ValidateDetail)
    case moveAlias(AliasMoveDetail)
    case deleteAlias(AliasDeleteDetail)
    case archiveVersions(ArchiveDetail)
    case wait(WaitDetail)
    case blocked(BlockedDetail)
    case orphaned(OrphanDetail)
    case deployment(DeploymentDetail)
    /// Something changed in the registry outside Capstan (a registry others write too).
    case registryDrift(RegistryDriftDetail)
}

/// A change made in the registry outside Capstan, and what `policy.drift` does with it: `drift`
/// (alert: reported), `adoptDrift` (adopt: taken as it is), `revertDrift` (revert: Capstan's tags
/// put back on an edited version; a moved or deleted alias is reverted by a `moveAlias` entry).
public struct RegistryDriftDetail: Hashable, Sendable, Codable {
    public var object: DriftObject
    /// What the registry holds now, for people: `v2`, `deleted`, `v5, v6`, `capstan.status: validated`.
    public var found: String
    /// What Capstan set, for people (nil when Capstan set nothing there).
    public var expected: String?
    /// What adopting it records (compared with later snapshots).
    public var adoption: DriftAdoption

    public init(object: DriftObject, found: String, expected: String?, adoption: DriftAdoption) {
        self.object = object
        self.found = found
        self.expected = expected
        self.adoption = adoption
    }
}

public struct ModelMetadataChange: Hashable, Sendable, Codable {
    public var description: String?
    public var labels: [String: String]
    /// What the registry holds now (nil when registering).
    public var previousDescription: String?
    public var previousLabels: [String: String]?

    public init(description: String?, labels: [String: String], previousDescription: String? = nil,
                previousLabels: [String: String]? = nil) {
        self.description = description
        self.labels = labels
        self.previousDescription = previousDescription
        self.previousLabels = previousLabels
    }
}

/// Why a model retrains.
public enum TrainReason: Hashable, Sendable, Codable, CustomStringConvertible {
    /// The model has no version yet.
    case newModel
    /// The last version was trained from a different description; this is what differs.
    case paramChanged(name: String, from: ParamValue?, to: ParamValue?)
    case inputChanged(input: String, from: String?, to: String?)
    case commandChanged(from: [String], to: [String])
    case workdirChanged(from: String, to: String)
    case envChanged(name: String, from: String?, to: String?)
    case secretEnvChanged(name: String, added: Bool)
    /// The previous description is unknown (a version made before descriptions were stored).
    case fingerprintChanged(from: String, to: String)
    /// Retrying a failed fingerprint: attempt number `attempt`.
    case retry(attempt: Int, lastFailure: String?)
    /// A version of this fingerprint was left `training` by an interrupted pass.
    case resumeInterrupted(version: Int)
    /// The last training of the fingerprint (which has no version yet) was interrupted, or
    /// trained without its version being registered.
    case resumeAttempt(fingerprint: String)

    public var description: String {
        switch self {
        case .newModel: return "new model"
        case .paramChanged(let n, let f, let t):
            switch (f, t) {
            case (nil, let t?): return "param \(n) added (\(t))"
            case (let f?, nil): return "param \(n) removed (was \(f))"
            default: return "param \(n) changed \(f?.description ?? "-") → \(t?.description ?? "-")"
            }
        case .inputChanged(let i, let f, let t):
            switch (f, t) {
            case (nil, _): return "input \(i) added"
            case (_, nil): return "input \(i) removed"
            default: return "input \(i) changed (\(Self.short(f!)) → \(Self.short(t!)))"
            }
        case .commandChanged(let f, let t): return "command changed \(f.joined(separator: " ")) → \(t.joined(separator: " "))"
        case .workdirChanged(let f, let t): return "workdir changed \(f) → \(t)"
        case .envChanged(let n, let f, let t):
            switch (f, t) {
            case (nil, _): return "env \(n) added"
            case (_, nil): return "env \(n) removed"
            default: return "env \(n) changed \(f!) → \(t!)"
            }
        case .secretEnvChanged(let n, let added): return "secret env \(n) \(added ? "added" : "removed")"
        case .fingerprintChanged(let f, let t): return "fingerprint changed \(f.prefix(12)) → \(t.prefix(12))"
        case .retry(let a, _): return "retry of a failed training (attempt \(a))"
        case .resumeInterrupted(let v): return "version \(v) was interrupted while training; training it again"
        case .resumeAttempt(let f): return "the last training of fingerprint \(f.prefix(12)) was interrupted; resuming it"
        }
    }

    /// `git-tree:4b825dc…` → `tree 4b825dc`; `sha256:ab…` → `sha256 ab12345`.
    static func short(_ identity: String) -> String {
        guard let colon = identity.firstIndex(of: ":") else { return identity }
        var kind = identity[..<colon].replacingOccurrences(of: "git-", with: "")
        if kind == "tree-without-manifests" { kind = "tree" }
        let value = identity[identity.index(after: colon)...]
        return kind == "version" ? "version \(value)" : "\(kind) \(value.prefix(7))"
    }
}

public struct TrainDetail: Hashable, Sendable, Codable {
    public var fingerprint: String
    public var training: TrainingDescription
    public var reasons: [TrainReason]
    /// The version to train into: an existing number when retrying a failed fingerprint or
    /// resuming an interrupted one; nil for a new version (the registry assigns its number).
    public var version: Int?
    /// 1 for a first attempt.
    public var attempt: Int
    public var timeoutMilliseconds: Int64

    public init(fingerprint: String, training: TrainingDescription, reasons: [TrainReason], version: Int?, attempt: Int,
                timeoutMilliseconds: Int64) {
        self.fingerprint = fingerprint
        self.training = training
        self.reasons = reasons
        self.version = version
        self.attempt = attempt
        self.timeoutMilliseconds = timeoutMilliseconds
    }
}

/// A version number, or the version a train entry of the same plan produces.
public enum VersionRef: Hashable, Sendable, Codable, CustomStringConvertible {
    case number(Int)
    /// The version produced by the train entry with this id.
    case produced(by: String)

    public var description: String {
        switch self {
        case .number(let n): return "v\(n)"
        case .produced: return "the version this train produces"
        }
    }

    public var number: Int? {
        if case .number(let n) = self { return n }
        return nil
    }
}

public struct ValidateDetail: Hashable, Sendable, Codable {
    public var version: VersionRef
    /// The gates as the spec writes them, for display (`accuracy >= 0.9`, `no regression against champion`).
    public var gates: [String]

    public init(version: VersionRef, gates: [String]) {
        self.version = version
        self.gates = gates
    }
}

/// A version's metrics and gate results, as shown next to an alias move.
public struct VersionSummary: Hashable, Sendable, Codable {
    public var version: Int
    public var status: VersionStatus
    public var metrics: [String: Double]
    public var gateResults: [GateResult]
    public var commit: String?

    public init(version: Int, status: VersionStatus, metrics: [String: Double], gateResults: [GateResult], commit: String?) {
        self.version = version
        self.status = status
        self.metrics = metrics
        self.gateResults = gateResults
        self.commit = commit
    }

    public init(_ v: ModelVersion) {
        self.init(version: v.number, status: v.status, metrics: v.metrics, gateResults: v.gateResults, commit: v.commit)
    }
}

public struct AliasMoveDetail: Hashable, Sendable, Codable {
    public var alias: String
    /// What the spec writes (`7`, `latest`).
    public var target: AliasTarget
    public var from: Int?
    public var to: VersionRef
    /// The version the alias points to now, and the candidate (nil when not trained yet).
    public var current: VersionSummary?
    public var candidate: VersionSummary?

    public init(alias: String, target: AliasTarget, from: Int?, to: VersionRef, current: VersionSummary?, candidate: VersionSummary?) {
        self.alias = alias
        self.target = target
        self.from = from
        self.to = to
        self.current = current
        self.candidate = candidate
    }
}

public struct AliasDeleteDetail: Hashable, Sendable, Codable {
    public var alias: String
    public var from: Int

    public init(alias: String, from: Int) {
        self.alias = alias
        self.from = from
    }
}

public struct ArchiveDetail: Hashable, Sendable, Codable {
    public var versions: [Int]
    public var keepVersions: Int

    public init(versions: [Int], keepVersions: Int) {
        self.versions = versions
        self.keepVersions = keepVersions
    }
}

public struct WaitDetail: Hashable, Sendable, Codable {
    /// Milliseconds since the epoch when something can happen again (nil: unknown).
    public var until: Int64?
    public var version: Int?
    public var fingerprint: String?
    /// The last lines of the failed run's output, when waiting out a failure.
    public var lastFailure: String?

    public init(until: Int64?, version: Int? = nil, fingerprint: String? = nil, lastFailure: String? = nil) {
        self.until = until
        self.version = version
        self.fingerprint = fingerprint
        self.lastFailure = lastFailure
    }
}

public struct BlockedDetail: Hashable, Sendable, Codable {
    /// The alias concerned, when the block is about an alias.
    public var alias: String?
    public var version: Int?
    /// `manifest-file:line:col` of the field to change.
    public var location: String?
    /// Why, as a stable code (`PinnedVersionMissing`, `PinnedVersionUnusable`…).
    public var code: FailureReason?

    public init(alias: String? = nil, version: Int? = nil, location: String? = nil, code: FailureReason? = nil) {
        self.alias = alias
        self.version = version
        self.location = location
        self.code = code
    }
}

public struct OrphanDetail: Hashable, Sendable, Codable {
    public var versions: Int
    public var aliases: [String: Int]

    public init(versions: Int, aliases: [String: Int]) {
        self.versions = versions
        self.aliases = aliases
    }
}
