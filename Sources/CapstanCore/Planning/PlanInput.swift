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

    /// Whether Capstan does not train this model (`ModelSpec.isRegistryOnly`).
    public var isRegistryOnly: Bool { manifest.spec.train == nil }

    /// A registry-only model: nothing to train, so no training description and no fingerprint
    /// (`fingerprint` is empty, which no version's fingerprint is).
    public init(registryOnly manifest: ModelManifest) {
        precondition(manifest.spec.train == nil, "a model with spec.train has a training fingerprint")
        self.init(manifest: manifest, training: TrainingDescription(command: [], workdir: "", params: [:], env: [:], secretEnv: [], inputs: []),
                  fingerprint: "")
    }
}

/// The desired state of one commit, ready for the planner.
public struct DesiredState: Hashable, Sendable {
    public var repository: String
    public var ref: String
    public var commit: String
    /// Sorted by name.
    public var models: [DesiredModel]
    /// The Deployments of the commit: a version one pins (`version: 7`) is kept by retention.
    public var deployments: [DeploymentManifest]
    public var policy: Policy

    public init(repository: String, ref: String, commit: String, models: [DesiredModel], deployments: [DeploymentManifest] = [],
                policy: Policy) {
        self.repository = repository
        self.ref = ref
        self.commit = commit
        self.models = zip(models, models.dropFirst()).allSatisfy({ $0.name < $1.name }) ? models : models.sorted { $0.name < $1.name }
        self.deployments = deployments.sorted { $0.metadata.name < $1.metadata.name }
        self.policy = policy
    }
}

/// The actual state the planner observes: the registry, read at once, and the versions that
/// Capstan's serving records show serving or rolling out.
public struct ActualState: Hashable, Sendable {
    public var registry: RegistrySnapshot
    /// Versions that serve (or are being rolled out or away from) on an endpoint Capstan set:
    /// retention never archives them. See `ServingRecords.versionsInUse`.
    public var serving: [VersionInUse]

    /// `digest`, when the caller knows it (computed for the same registry before: a reader that
    /// keeps its snapshot by generation computes it once per generation). Not part of equality.
    public var knownDigest: String?

    public init(registry: RegistrySnapshot, serving: [VersionInUse] = [], knownDigest: String? = nil) {
        self.registry = registry
        self.serving = serving
        self.knownDigest = knownDigest
    }

    public static func == (a: ActualState, b: ActualState) -> Bool { a.registry == b.registry && a.serving == b.serving }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(registry)
        hasher.combine(serving)
    }

    /// A SHA-256 over what a plan depends on (`serving` is left out: it changes as rollouts move,
    /// and a saved plan can only archive versions that neither the commit's Deployments nor the
    /// aliases it checks can put back into service): every model's metadata, every version's number,
    /// status, fingerprint, attempts, failure and archive times, and every alias. A saved plan
    /// records it; `apply PLANFILE` refuses the plan when the registry no longer matches.
    public var digest: String { knownDigest ?? Self.digest(of: registry) }

    /// `digest` computed over `registry`.
    public static func digest(of registry: RegistrySnapshot) -> String {
        // The same bytes as hashing each field followed by a zero byte, gathered in one buffer
        // (one SHA-256 update instead of one per field: this runs over every model).
        var bytes: [UInt8] = []
        bytes.reserveCapacity(registry.models.count * 160)
        func add(_ s: String) {
            bytes.append(contentsOf: s.utf8)
            bytes.append(0)
        }
        func add(_ n: Int) { add(String(n)) }
        let inOrder = zip(registry.models, registry.models.dropFirst()).allSatisfy { $0.name < $1.name }
        for m in inOrder ? registry.models : registry.models.sorted(by: { $0.name < $1.name }) {
            add("model"); add(m.name); add(m.description ?? "")
            for (k, v) in m.labels.sorted(by: { $0.key < $1.key }) { add(k); add(v) }
            for v in registry.versions[m.name] ?? [] {
                add("v\(v.number)"); add(v.status.rawValue); add(v.fingerprint); add(v.attempts)
                add(v.failedAt.map { String($0) } ?? "-"); add(v.archivedAt.map { String($0) } ?? "-")
            }
            if let aliases = registry.aliases[m.name], !aliases.isEmpty {
                for (a, n) in aliases.sorted(by: { $0.key < $1.key }) { add("alias"); add(a); add(n) }
            }
            // (Only registries that number versions when they register them keep attempts.)
            for a in registry.attempts[m.name] ?? [] {
                add("attempt"); add(a.fingerprint); add(a.state.rawValue); add(a.attempts)
                add(a.failedAt.map { String($0) } ?? "-")
            }
        }
        return Hex.string(SHA256.hash(data: bytes))
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

/// A version a Deployment uses: retention never archives it.
public struct VersionInUse: Hashable, Sendable, Codable {
    public var model: String
    public var version: Int
    public var deployment: String

    public init(model: String, version: Int, deployment: String) {
        self.model = model
        self.version = version
        self.deployment = deployment
    }
}

extension ServingRecords {
    /// The versions Capstan's records show on each endpoint: every backend it last set (whatever
    /// its weight: a canary starting at 0% is in use) and both ends of a rollout in progress.
    /// `models` gives the model of a deployment whose rollout does not name one (the Deployment
    /// in Git, else the endpoint as last observed); a deployment of unknown model is left out.
    public func versionsInUse(models: [String: String]) -> [VersionInUse] {
        var out = Set<VersionInUse>()
        for (deployment, weights) in applied {
            guard let model = rollouts[deployment]?.model ?? models[deployment] ?? observed[deployment]?.model else { continue }
            for w in weights { out.insert(VersionInUse(model: model, version: w.version, deployment: deployment)) }
        }
        for (deployment, r) in rollouts {
            out.insert(VersionInUse(model: r.model, version: r.to, deployment: deployment))
            if let from = r.from { out.insert(VersionInUse(model: r.model, version: from, deployment: deployment)) }
        }
        return out.sorted { ($0.model, $0.version, $0.deployment) < ($1.model, $1.version, $1.deployment) }
    }
}
