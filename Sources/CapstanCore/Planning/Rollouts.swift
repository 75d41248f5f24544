/// Where a rollout is. Persisted in the state store and advanced on every pass.
public enum RolloutPhase: String, Hashable, Sendable, Codable {
    /// The new version's processes are starting; it gets no traffic until ready.
    case starting
    /// Canary step `step` is running: the new version gets that step's weight.
    case stepping
}

/// A rollout in progress for one deployment: from the version serving now to the target.
public struct RolloutState: Hashable, Sendable, Codable {
    public var deployment: String
    public var model: String
    /// The version serving before the rollout (nil: the endpoint is new).
    public var from: Int?
    public var to: Int
    public var phase: RolloutPhase
    /// Index into the canary steps (while `stepping`).
    public var step: Int
    /// Milliseconds since the epoch when the phase or step began.
    public var stepStartedAt: Int64
    /// The canary's counters when the step began: the analysis judges what came after.
    public var baseline: BackendStats?
    /// The agent run the baseline was read from (counters restart with the agent).
    public var baselineBoot: String?
    public var startedAt: Int64
    /// The deployment spec the rollout was started for: a change in Git aborts and restarts it.
    public var specHash: String

    public init(deployment: String, model: String, from: Int?, to: Int, phase: RolloutPhase, step: Int, stepStartedAt: Int64,
                baseline: BackendStats? = nil, baselineBoot: String? = nil, startedAt: Int64, specHash: String) {
        self.deployment = deployment
        self.model = model
        self.from = from
        self.to = to
        self.phase = phase
        self.step = step
        self.stepStartedAt = stepStartedAt
        self.baseline = baseline
        self.baselineBoot = baselineBoot
        self.startedAt = startedAt
        self.specHash = specHash
    }
}

/// A version rolled back from a deployment: automation never rolls it out there again until the
/// Deployment's spec changes in Git.
public struct Quarantine: Hashable, Sendable, Codable {
    public var deployment: String
    public var version: Int
    public var specHash: String
    public var reason: String
    public var at: Int64

    public init(deployment: String, version: Int, specHash: String, reason: String, at: Int64) {
        self.deployment = deployment
        self.version = version
        self.specHash = specHash
        self.reason = reason
        self.at = at
    }
}

/// One backend as the planner decides it: the engine turns it into a `BackendSpec` (paths,
/// command) before sending it to the serving layer.
public struct BackendWeight: Hashable, Sendable, Codable {
    public var version: Int
    public var weight: Int
    public var replicas: Int

    public init(version: Int, weight: Int, replicas: Int) {
        self.version = version
        self.weight = weight
        self.replicas = replicas
    }
}

/// What the canary analysis saw in the current step.
public struct AnalysisResult: Hashable, Sendable, Codable {
    public var requests: Int64
    public var failures: Int64
    public var errorRate: Double?
    /// Upper bound of the p95 latency bucket, in milliseconds.
    public var p95Milliseconds: Double?
    /// Why the step failed, when it did.
    public var failure: String?

    public init(requests: Int64, failures: Int64, errorRate: Double?, p95Milliseconds: Double?, failure: String?) {
        self.requests = requests
        self.failures = failures
        self.errorRate = errorRate
        self.p95Milliseconds = p95Milliseconds
        self.failure = failure
    }

    /// Judges `window` (the canary's traffic since the step began) against `analysis`.
    public static func judge(_ window: BackendStats, _ analysis: CanaryAnalysis) -> AnalysisResult {
        let rate = window.requests > 0 ? Double(window.failures) / Double(window.requests) : nil
        let p95 = window.latency.quantile(0.95)
        var failure: String?
        if window.requests >= Int64(analysis.minRequests) {
            if let rate, rate > analysis.maxErrorRate {
                failure = "error rate \(Gates.format(rate * 100))% over \(window.requests) requests is above the \(Gates.format(analysis.maxErrorRate * 100))% allowed"
            } else if let limit = analysis.maxLatencyP95, let p95, p95 > Double(limit.milliseconds) {
                failure = "p95 latency \(p95.isFinite ? Gates.format(p95) + "ms" : "above 60s") is above the \(limit) allowed"
            }
        }
        return AnalysisResult(requests: window.requests, failures: window.failures, errorRate: rate, p95Milliseconds: p95, failure: failure)
    }

    public var summary: String {
        var parts = ["\(requests) request\(requests == 1 ? "" : "s")"]
        if let errorRate { parts.append("\(Gates.format(errorRate * 100))% errors") }
        if let p95Milliseconds { parts.append("p95 " + (p95Milliseconds.isFinite ? "≤\(Gates.format(p95Milliseconds))ms" : ">60s")) }
        return parts.joined(separator: ", ")
    }
}

/// What a deployment entry of the plan does to the serving layer and to the rollout state.
public struct DeploymentDetail: Hashable, Sendable, Codable {
    public var model: String
    /// The version serving now (the heaviest backend), and the target.
    public var from: Int?
    public var to: Int?
    /// The backends to set (nil: the endpoint is left as it is, or removed by `retire`).
    public var backends: [BackendWeight]?
    /// The rollout state to keep after this entry (nil: no rollout in progress any more).
    public var rollout: RolloutState?
    /// A version to quarantine (a rollback).
    public var quarantine: Quarantine?
    public var analysis: AnalysisResult?
    /// "step 2/3", "starting", for display.
    public var progress: String?

    public init(model: String, from: Int?, to: Int?, backends: [BackendWeight]?, rollout: RolloutState?,
                quarantine: Quarantine? = nil, analysis: AnalysisResult? = nil, progress: String? = nil) {
        self.model = model
        self.from = from
        self.to = to
        self.backends = backends
        self.rollout = rollout
        self.quarantine = quarantine
        self.analysis = analysis
        self.progress = progress
    }
}

/// One Deployment as the commit asks for it, with the version it should serve.
public struct DesiredDeployment: Hashable, Sendable {
    public var manifest: DeploymentManifest
    /// The validated, non-archived version the target resolves to now (nil: none).
    public var target: Int?
    /// Why there is no target, when there is none.
    public var targetProblem: String?
    /// A digest of the Deployment's spec: quarantines and rollouts belong to one spec.
    public var specHash: String
    /// In `capstan plan`: the model entry of the same plan the target comes from (the alias move,
    /// or the validation of a pinned version), which the Deployment's entries depend on.
    public var after: String?
    /// In `capstan plan`: the entry that moves the Deployment's alias to the version a train of the
    /// same plan produces (no number yet).
    public var pendingMove: String?

    public init(manifest: DeploymentManifest, target: Int?, targetProblem: String?, specHash: String,
                after: String? = nil, pendingMove: String? = nil) {
        self.manifest = manifest
        self.target = target
        self.targetProblem = targetProblem
        self.specHash = specHash
        self.after = after
        self.pendingMove = pendingMove
    }

    /// Resolves `manifest`'s target against the registry as a plan's model entries will leave it
    /// (what `capstan plan` shows; `apply` resolves against the registry they did leave).
    public static func resolve(_ manifest: DeploymentManifest, projection: RegistryProjection, specHash: String) -> DesiredDeployment {
        var d = resolve(manifest, registry: projection.registry, specHash: specHash)
        let model = manifest.spec.model
        switch manifest.spec.target {
        case .alias(let alias)?:
            d.after = projection.moves[model]?[alias]
            d.pendingMove = projection.pendingMoves[model]?[alias]
        case .version(let n)?:
            d.after = projection.validations[model]?[n]
        case nil:
            break
        }
        return d
    }

    public var name: String { manifest.metadata.name }
    public var spec: DeploymentSpec { manifest.spec }

    /// Resolves `manifest`'s target against the registry: an alias's holder or a pinned number,
    /// which must be validated and not archived.
    public static func resolve(_ manifest: DeploymentManifest, registry: RegistrySnapshot, specHash: String) -> DesiredDeployment {
        let model = manifest.spec.model
        let versions = registry.versions[model] ?? []
        var number: Int?
        var what = ""
        switch manifest.spec.target {
        case .alias(let alias)?:
            number = registry.aliases[model]?[alias]
            what = "alias \(alias) of model \(model)"
            if number == nil {
                return DesiredDeployment(manifest: manifest, target: nil,
                                         targetProblem: "\(what) points at no version yet", specHash: specHash)
            }
        case .version(let n)?:
            number = n
            what = "v\(n) of model \(model)"
        case nil:
            return DesiredDeployment(manifest: manifest, target: nil, targetProblem: "the Deployment names no version", specHash: specHash)
        }
        guard let n = number, let version = versions.first(where: { $0.number == n }) else {
            return DesiredDeployment(manifest: manifest, target: nil, targetProblem: "\(what) does not exist", specHash: specHash)
        }
        guard version.status == .validated, version.archivedAt == nil else {
            let state = version.archivedAt != nil ? "archived" : version.status.rawValue
            let subject = manifest.spec.target == .version(n) ? "\(what) is \(state)" : "\(what) is v\(n), which is \(state)"
            return DesiredDeployment(manifest: manifest, target: nil,
                                     targetProblem: "\(subject); deployments serve only validated versions",
                                     specHash: specHash)
        }
        return DesiredDeployment(manifest: manifest, target: n, targetProblem: nil, specHash: specHash)
    }
}

/// What the reconciler knows of the serving side.
public struct ServingObservation: Hashable, Sendable {
    /// The endpoints by deployment, or nil when the serving layer could not be reached.
    public var endpoints: [String: EndpointStatus]?
    public var unavailable: String?
    /// What Capstan last set on each endpoint (to tell drift from Capstan's own changes).
    public var applied: [String: [BackendWeight]]
    public var rollouts: [String: RolloutState]
    public var quarantine: [Quarantine]

    public init(endpoints: [String: EndpointStatus]?, unavailable: String? = nil, applied: [String: [BackendWeight]] = [:],
                rollouts: [String: RolloutState] = [:], quarantine: [Quarantine] = []) {
        self.endpoints = endpoints
        self.unavailable = unavailable
        self.applied = applied
        self.rollouts = rollouts
        self.quarantine = quarantine
    }
}
