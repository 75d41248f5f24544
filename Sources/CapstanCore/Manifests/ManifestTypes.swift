/// The `apiVersion` every v1 manifest carries.
public let capstanAPIVersion = "capstan/v1"

/// The kinds of manifest Capstan understands.
public enum ManifestKind: String, Sendable, Codable, CaseIterable {
    case config = "Config"
    case model = "Model"
    case deployment = "Deployment"
}

/// `metadata` of every manifest.
public struct ObjectMeta: Hashable, Sendable, Codable {
    public var name: String
    public var labels: [String: String]
    public var annotations: [String: String]

    public init(name: String, labels: [String: String] = [:], annotations: [String: String] = [:]) {
        self.name = name
        self.labels = labels
        self.annotations = annotations
    }
}

/// Where a manifest came from, and where each of its fields is, so later stages (reference
/// checks, the planner) can point at the exact line.
public struct ManifestOrigin: Hashable, Sendable {
    /// The file as the user knows it, relative to the loaded root.
    public var file: String
    /// 0-based index of the document in its file.
    public var documentIndex: Int
    /// Where the document starts.
    public var location: SourceLocation
    /// Field path (`metadata.name`, `spec.aliases.champion`, `spec.train.inputs[1]`) → position of
    /// its value in `file`. Kept compact: there is one of these per document.
    public var fields: [String: FieldPosition]
    /// For typed lists that leave invalid entries out (`spec.train.inputs`): typed index → the
    /// index as written, so `fields["spec.train.inputs[N]"]` can be found for a typed item.
    public var writtenIndices: [String: [Int]]

    public init(file: String, documentIndex: Int, location: SourceLocation, fields: [String: FieldPosition] = [:],
                writtenIndices: [String: [Int]] = [:]) {
        self.file = file
        self.documentIndex = documentIndex
        self.location = location
        self.fields = fields
        self.writtenIndices = writtenIndices
    }

    /// The field path of item `index` of the typed list at `path` (`spec.train.inputs[2]`).
    public func itemPath(_ path: String, _ index: Int) -> String {
        "\(path)[\(writtenIndices[path]?[index] ?? index)]"
    }

    /// The location of a field's value, or of the document when the field was not written.
    public func location(of path: String) -> SourceLocation {
        guard let p = fields[path] else { return location }
        return SourceLocation(file: file, line: Int(p.line), column: Int(p.column))
    }
}

/// A line and column within a known file.
public struct FieldPosition: Hashable, Sendable {
    public var line: Int32
    public var column: Int32

    public init(line: Int, column: Int) {
        self.line = Int32(clamping: line)
        self.column = Int32(clamping: column)
    }
}

/// A decoded manifest document of any kind.
public enum Manifest: Hashable, Sendable {
    case config(ConfigManifest)
    case model(ModelManifest)
    case deployment(DeploymentManifest)

    public var kind: ManifestKind {
        switch self {
        case .config: return .config
        case .model: return .model
        case .deployment: return .deployment
        }
    }

    public var metadata: ObjectMeta {
        switch self {
        case .config(let c): return c.metadata
        case .model(let m): return m.metadata
        case .deployment(let d): return d.metadata
        }
    }

    public var origin: ManifestOrigin {
        switch self {
        case .config(let c): return c.origin
        case .model(let m): return m.origin
        case .deployment(let d): return d.origin
        }
    }
}

// MARK: - Objects

/// One decoded object: its metadata, its spec and where it was written.
///
/// Immutable and shared by reference: the desired state of a large repository holds tens of
/// thousands of these, and passing them around must not copy their fields.
public final class ManifestObject<Spec: Hashable & Sendable>: Hashable, Sendable {
    public let metadata: ObjectMeta
    public let spec: Spec
    public let origin: ManifestOrigin

    public init(metadata: ObjectMeta, spec: Spec, origin: ManifestOrigin) {
        self.metadata = metadata
        self.spec = spec
        self.origin = origin
    }

    public static func == (a: ManifestObject, b: ManifestObject) -> Bool {
        a === b || (a.metadata == b.metadata && a.spec == b.spec && a.origin == b.origin)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(metadata)
        hasher.combine(spec)
    }
}

/// `kind: Config` — repository-level settings, read from `capstan.yaml` at the root.
public typealias ConfigManifest = ManifestObject<ConfigSpec>
/// `kind: Model` — a registered model and how to produce, check, name and serve its versions.
public typealias ModelManifest = ManifestObject<ModelSpec>
/// `kind: Deployment` — an endpoint serving one model's version, and how to roll new ones out.
public typealias DeploymentManifest = ManifestObject<DeploymentSpec>

// MARK: - Config

public struct ConfigSpec: Hashable, Sendable, Codable {
    /// Folders (relative to the root) whose manifests are loaded, as written; empty means the
    /// whole root. Use `manifestFolders` for the normalized, valid ones.
    public var manifests: [String]
    /// Glob patterns (relative to the root) of YAML files that are not Capstan manifests.
    public var exclude: [String]
    /// Absolute folders under which training inputs outside the repository may live.
    public var dataRoots: [String]
    public var registry: RegistryConfig
    public var serving: ServingConfig
    public var policy: Policy

    /// The manifest folders, normalized, with invalid entries (reported when loading) left out.
    /// `[""]` (the root) when none are listed.
    public var manifestFolders: [String] {
        if manifests.isEmpty { return [""] }
        return manifests.compactMap { $0.hasPrefix("/") || $0.isEmpty ? nil : RepoPath.normalize($0) }
    }

    public init(
        manifests: [String] = [], exclude: [String] = [], dataRoots: [String] = [],
        registry: RegistryConfig = .embedded, serving: ServingConfig = .local(LocalServingConfig()),
        policy: Policy = Policy()
    ) {
        self.manifests = manifests
        self.exclude = exclude
        self.dataRoots = dataRoots
        self.registry = registry
        self.serving = serving
        self.policy = policy
    }
}

public enum RegistryConfig: Hashable, Sendable, Codable {
    /// The embedded SQLite registry in the state directory.
    case embedded
    case mlflow(MLflowRegistryConfig)
}

public struct MLflowRegistryConfig: Hashable, Sendable, Codable {
    public static let defaultExperiment = "capstan/{model}"
    public static let defaultTimeout = ManifestDuration(milliseconds: 30_000)

    public var url: String
    /// Name of the environment variable holding the bearer token (never the token itself).
    public var tokenEnv: String?
    /// Names of the environment variables holding HTTP basic credentials (MLflow's basic-auth app).
    public var usernameEnv: String?
    public var passwordEnv: String?
    /// The experiment of a model's training runs; `{model}` stands for the model's name.
    public var experiment: String
    /// The bound of one request to the server.
    public var timeout: ManifestDuration

    public init(url: String, tokenEnv: String? = nil, usernameEnv: String? = nil, passwordEnv: String? = nil,
                experiment: String = MLflowRegistryConfig.defaultExperiment, timeout: ManifestDuration = MLflowRegistryConfig.defaultTimeout) {
        self.url = url
        self.tokenEnv = tokenEnv
        self.usernameEnv = usernameEnv
        self.passwordEnv = passwordEnv
        self.experiment = experiment
        self.timeout = timeout
    }
}

public enum ServingConfig: Hashable, Sendable, Codable {
    case local(LocalServingConfig)
}

public struct LocalServingConfig: Hashable, Sendable, Codable {
    public static let defaultAdmin = "http://127.0.0.1:7070"
    public var admin: String
    public var tokenEnv: String?

    public init(admin: String = LocalServingConfig.defaultAdmin, tokenEnv: String? = nil) {
        self.admin = admin
        self.tokenEnv = tokenEnv
    }
}

public enum DriftPolicy: String, Hashable, Sendable, Codable, CaseIterable {
    case revert, adopt, alert
}

public struct RetryPolicy: Hashable, Sendable, Codable {
    public var initial: ManifestDuration
    public var max: ManifestDuration

    public init(initial: ManifestDuration = .init(milliseconds: 60_000), max: ManifestDuration = .init(milliseconds: 3_600_000)) {
        self.initial = initial
        self.max = max
    }
}

public struct Policy: Hashable, Sendable, Codable {
    public var prune: Bool
    public var drift: DriftPolicy
    public var parallelism: Int
    public var retry: RetryPolicy

    public init(prune: Bool = false, drift: DriftPolicy = .revert, parallelism: Int = 2, retry: RetryPolicy = RetryPolicy()) {
        self.prune = prune
        self.drift = drift
        self.parallelism = parallelism
        self.retry = retry
    }
}

// MARK: - Model

public struct ModelSpec: Hashable, Sendable, Codable {
    public var description: String?
    /// How Capstan trains the model's versions; nil for a registry-only model, whose versions are
    /// registered outside Capstan (another pipeline, a notebook, `capstan register`) and judged
    /// by Capstan on their metrics.
    public var train: TrainSpec?
    public var validate: ValidateSpec?
    public var serve: ServeSpec?
    /// Aliases in the order they were written.
    public var aliases: [AliasPin]
    public var retention: RetentionSpec?
    /// What a model card says about the model besides its records (`capstan card`).
    public var card: CardSpec?

    public init(
        description: String? = nil, train: TrainSpec?, validate: ValidateSpec? = nil, serve: ServeSpec? = nil,
        aliases: [AliasPin] = [], retention: RetentionSpec? = nil, card: CardSpec? = nil
    ) {
        self.description = description
        self.train = train
        self.validate = validate
        self.serve = serve
        self.aliases = aliases
        self.retention = retention
        self.card = card
    }

    public func alias(named name: String) -> AliasPin? {
        aliases.first { $0.name == name }
    }

    /// Whether Capstan does not train this model: its versions are registered outside Capstan.
    public var isRegistryOnly: Bool { train == nil }

    /// The training settings the model's steps run with (environment, secrets, workdir): none
    /// (an empty command, no env, no secrets) for a registry-only model.
    public var stepSettings: TrainSpec { train ?? TrainSpec(command: []) }
}

public struct TrainSpec: Hashable, Sendable, Codable {
    public static let defaultTimeout = ManifestDuration(milliseconds: 3_600_000, text: "1h")

    public var command: [String]
    /// Relative to the repository root; `.` by default.
    public var workdir: String
    public var inputs: [TrainInput]
    public var params: [String: ParamValue]
    public var env: [String: String]
    /// Variable name the step sees → variable name in the reconciler's environment.
    public var secretEnv: [String: String]
    public var timeout: ManifestDuration

    public init(
        command: [String], workdir: String = ".", inputs: [TrainInput] = [], params: [String: ParamValue] = [:],
        env: [String: String] = [:], secretEnv: [String: String] = [:], timeout: ManifestDuration = TrainSpec.defaultTimeout
    ) {
        self.command = command
        self.workdir = workdir
        self.inputs = inputs
        self.params = params
        self.env = env
        self.secretEnv = secretEnv
        self.timeout = timeout
    }
}

/// One training input.
public enum TrainInput: Hashable, Sendable, Codable {
    /// A file or folder inside the repository (normalized, relative to the root).
    case repository(String)
    /// An absolute path under one of the configured data roots.
    case external(String)
    /// Data known by a URI; its identity is the declared version string.
    case uri(String, version: String)
}

public struct MetricGate: Hashable, Sendable, Codable {
    public var min: Double?
    public var max: Double?

    public init(min: Double? = nil, max: Double? = nil) {
        self.min = min
        self.max = max
    }
}

public struct ValidateSpec: Hashable, Sendable, Codable {
    public static let defaultTimeout = ManifestDuration(milliseconds: 600_000, text: "10m")

    /// Metric name → bounds, in the order written.
    public var metrics: [NamedGate]
    public var noRegressionAgainst: String?
    public var tolerance: [String: Double]
    public var command: [String]?
    public var workdir: String?
    public var timeout: ManifestDuration

    public init(
        metrics: [NamedGate] = [], noRegressionAgainst: String? = nil, tolerance: [String: Double] = [:],
        command: [String]? = nil, workdir: String? = nil, timeout: ManifestDuration = ValidateSpec.defaultTimeout
    ) {
        self.metrics = metrics
        self.noRegressionAgainst = noRegressionAgainst
        self.tolerance = tolerance
        self.command = command
        self.workdir = workdir
        self.timeout = timeout
    }
}

public struct NamedGate: Hashable, Sendable, Codable {
    public var metric: String
    public var gate: MetricGate

    public init(metric: String, gate: MetricGate) {
        self.metric = metric
        self.gate = gate
    }
}

public struct ReadinessSpec: Hashable, Sendable, Codable {
    public var path: String
    public var timeout: ManifestDuration

    public init(path: String = "/healthz", timeout: ManifestDuration = .init(milliseconds: 60_000, text: "60s")) {
        self.path = path
        self.timeout = timeout
    }
}

public struct ServeSpec: Hashable, Sendable, Codable {
    public var command: [String]
    public var workdir: String
    public var env: [String: String]
    /// Variable name the server sees → variable name in the serving agent's environment.
    public var secretEnv: [String: String]
    public var readiness: ReadinessSpec

    public init(command: [String], workdir: String = ".", env: [String: String] = [:], secretEnv: [String: String] = [:],
                readiness: ReadinessSpec = ReadinessSpec()) {
        self.command = command
        self.workdir = workdir
        self.env = env
        self.secretEnv = secretEnv
        self.readiness = readiness
    }
}

/// What an alias should point at.
public enum AliasTarget: Hashable, Sendable, Codable, CustomStringConvertible {
    /// A pinned version number (promotion by pull request).
    case version(Int)
    /// The newest validated version.
    case latest

    public var description: String {
        switch self {
        case .version(let v): return String(v)
        case .latest: return "latest"
        }
    }
}

public struct AliasPin: Hashable, Sendable, Codable {
    public var name: String
    public var target: AliasTarget

    public init(name: String, target: AliasTarget) {
        self.name = name
        self.target = target
    }
}

/// The people-written part of a model card: who owns the model and what it is for.
public struct CardSpec: Hashable, Sendable, Codable {
    public var owners: [String]
    public var intendedUse: String?
    public var limitations: String?
    public var ethicalConsiderations: String?

    public init(owners: [String] = [], intendedUse: String? = nil, limitations: String? = nil, ethicalConsiderations: String? = nil) {
        self.owners = owners
        self.intendedUse = intendedUse
        self.limitations = limitations
        self.ethicalConsiderations = ethicalConsiderations
    }
}

public struct RetentionSpec: Hashable, Sendable, Codable {
    public var keepVersions: Int

    public init(keepVersions: Int) {
        self.keepVersions = keepVersions
    }
}

// MARK: - Deployment

public enum DeploymentTarget: Hashable, Sendable, Codable, CustomStringConvertible {
    case alias(String)
    case version(Int)

    public var description: String {
        switch self {
        case .alias(let a): return "alias \(a)"
        case .version(let v): return "version \(v)"
        }
    }
}

public struct DeploymentSpec: Hashable, Sendable, Codable {
    public var model: String
    /// Nil only when the manifest was invalid (neither or both of `alias`/`version`).
    public var target: DeploymentTarget?
    public var replicas: Int
    public var strategy: RolloutStrategy

    public init(model: String, target: DeploymentTarget?, replicas: Int = 1, strategy: RolloutStrategy = .replace) {
        self.model = model
        self.target = target
        self.replicas = replicas
        self.strategy = strategy
    }
}

public enum RolloutStrategy: Hashable, Sendable, Codable {
    case replace
    case canary(CanarySpec)
}

public struct CanaryStep: Hashable, Sendable, Codable {
    public var weight: Int
    public var pause: ManifestDuration

    public init(weight: Int, pause: ManifestDuration) {
        self.weight = weight
        self.pause = pause
    }
}

public struct CanaryAnalysis: Hashable, Sendable, Codable {
    public var interval: ManifestDuration
    public var minRequests: Int
    public var maxErrorRate: Double
    public var maxLatencyP95: ManifestDuration?

    public init(
        interval: ManifestDuration = .init(milliseconds: 15_000, text: "15s"), minRequests: Int = 50,
        maxErrorRate: Double = 0.01, maxLatencyP95: ManifestDuration? = nil
    ) {
        self.interval = interval
        self.minRequests = minRequests
        self.maxErrorRate = maxErrorRate
        self.maxLatencyP95 = maxLatencyP95
    }
}

public struct CanarySpec: Hashable, Sendable, Codable {
    public var steps: [CanaryStep]
    public var analysis: CanaryAnalysis

    public init(steps: [CanaryStep], analysis: CanaryAnalysis = CanaryAnalysis()) {
        self.steps = steps
        self.analysis = analysis
    }
}
