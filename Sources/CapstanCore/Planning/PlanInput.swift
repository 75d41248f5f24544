import Crypto

/// One model as the commit asks for it, with the fingerprint of its training.
public struct DesiredModel: Hashable, Sendable {
    public var manifest: ModelManifest
    public var training: TrainingDescription
    public var fingerprint: String

    public init(manifest: ModelManifest, training: TrainingDescription, fingerprint: String) {
        self.manifest = manifest
        self.training = training
        self.fingerprint = fingerprint
    }

    public var name: String { manifest.metadata.name }
}

/// The desired state of one commit, ready for the planner.
public struct DesiredState: Hashable, Sendable {
    public var repository: String
    public var ref: String
    public var commit: String
    /// Sorted by name.
    public var models: [DesiredModel]
    public var policy: Policy

    public init(repository: String, ref: String, commit: String, models: [DesiredModel], policy: Policy) {
        self.repository = repository
        self.ref = ref
        self.commit = commit
        self.models = models.sorted { $0.name < $1.name }
        self.policy = policy
    }
}

/// The actual state the planner observes: the registry, read at once.
public struct ActualState: Hashable, Sendable {
    public var registry: RegistrySnapshot

    public init(registry: RegistrySnapshot) {
        self.registry = registry
    }

    /// A SHA-256 over what a plan depends on: every model's metadata, every version's number,
    /// status, fingerprint, attempts, failure and archive times, and every alias. A saved plan
    /// records it; `apply PLANFILE` refuses the plan when the registry no longer matches.
    public var digest: String {
        var hasher = SHA256()
        func add(_ s: String) {
            hasher.update(data: Array(s.utf8))
            hasher.update(data: [0])
        }
        for m in registry.models.sorted(by: { $0.name < $1.name }) {
            add("model"); add(m.name); add(m.description ?? "")
            for (k, v) in m.labels.sorted(by: { $0.key < $1.key }) { add(k); add(v) }
            for v in registry.versions[m.name] ?? [] {
                add("v\(v.number)"); add(v.status.rawValue); add(v.fingerprint); add("\(v.attempts)")
                add(v.failedAt.map { "\($0)" } ?? "-"); add(v.archivedAt.map { "\($0)" } ?? "-")
            }
            for (a, n) in (registry.aliases[m.name] ?? [:]).sorted(by: { $0.key < $1.key }) { add("alias"); add(a); add("\(n)") }
        }
        return Hex.string(hasher.finalize())
    }
}

/// Choices that change what the planner may do.
public struct PlanOptions: Hashable, Sendable {
    /// Retry failed fingerprints now, ignoring their backoff (`--retry-failed`).
    public var retryFailed: Bool
    /// Set when another apply holds the state lock (who, for messages): versions in `training`
    /// are being trained now, not interrupted.
    public var applyInProgress: String?

    public init(retryFailed: Bool = false, applyInProgress: String? = nil) {
        self.retryFailed = retryFailed
        self.applyInProgress = applyInProgress
    }
}
