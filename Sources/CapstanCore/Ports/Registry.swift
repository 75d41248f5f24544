import Synchronization

/// Status of a model version: `training → trained → validated | rejected`, or `failed`.
public enum VersionStatus: String, Sendable, Codable, CaseIterable {
    case training, trained, validated, rejected, failed
}

/// A registered model as the registry holds it.
public struct RegisteredModel: Hashable, Sendable, Codable {
    public var name: String
    public var description: String?
    public var labels: [String: String]
    /// Milliseconds since the epoch.
    public var createdAt: Int64
    public var updatedAt: Int64

    public init(name: String, description: String?, labels: [String: String], createdAt: Int64, updatedAt: Int64) {
        self.name = name
        self.description = description
        self.labels = labels
        self.createdAt = createdAt
        self.updatedAt = updatedAt
    }
}

/// The outcome of one validation gate for one version.
public struct GateResult: Hashable, Sendable, Codable {
    /// `metric accuracy >= 0.9`, `no regression against champion`, `command`.
    public var gate: String
    public var passed: Bool
    public var detail: String

    public init(gate: String, passed: Bool, detail: String) {
        self.gate = gate
        self.passed = passed
        self.detail = detail
    }
}

/// An immutable output of one training run, as the registry holds it (actual state).
///
/// Its JSON-backed details (params, metrics, gate results, tags) may be deferred: a registry
/// reading a snapshot of every version hands them over undecoded (`init(…deferred:)`), and they
/// are decoded when first read. The planner reads them for a few versions, never for all.
public struct ModelVersion: Hashable, Sendable, Codable {
    public var model: String
    /// 1, 2, 3… per model, never reused.
    public var number: Int
    public var status: VersionStatus
    public var fingerprint: String
    /// The commit whose desired state produced it.
    public var commit: String?
    public var params: [String: ParamValue] {
        get { details.value.params }
        set { details.update { $0.params = newValue } }
    }
    public var metrics: [String: Double] {
        get { details.value.metrics }
        set { details.update { $0.metrics = newValue } }
    }
    public var artifactDigest: String?
    public var artifactLocation: String?
    public var gateResults: [GateResult] {
        get { details.value.gateResults }
        set { details.update { $0.gateResults = newValue } }
    }
    /// The last lines of output of a failed run.
    public var logTail: String?
    public var tags: [String: String] {
        get { details.value.tags }
        set { details.update { $0.tags = newValue } }
    }
    public var createdAt: Int64
    /// Training attempts of this fingerprint (a failed one is retried into the same version).
    public var attempts: Int
    /// When the last attempt failed (ms since the epoch); the retry backoff counts from here.
    public var failedAt: Int64?
    /// When the version was archived beyond `retention` (its artifact may be gone); never aliased.
    public var archivedAt: Int64?
    /// What the fingerprint was computed from, so a plan can say what changed since.
    public var training: TrainingDescription?
    private var details: Details

    public init(model: String, number: Int, status: VersionStatus, fingerprint: String, commit: String? = nil,
                params: [String: ParamValue] = [:], metrics: [String: Double] = [:], artifactDigest: String? = nil,
                artifactLocation: String? = nil, gateResults: [GateResult] = [], logTail: String? = nil,
                tags: [String: String] = [:], createdAt: Int64, attempts: Int = 1, failedAt: Int64? = nil,
                archivedAt: Int64? = nil, training: TrainingDescription? = nil) {
        self.init(model: model, number: number, status: status, fingerprint: fingerprint, commit: commit,
                  artifactDigest: artifactDigest, artifactLocation: artifactLocation, logTail: logTail, createdAt: createdAt,
                  attempts: attempts, failedAt: failedAt, archivedAt: archivedAt, training: training,
                  details: .values(VersionDetails(params: params, metrics: metrics, gateResults: gateResults, tags: tags)))
    }

    /// A version whose details are decoded by `deferred` when first read (at most once).
    public init(model: String, number: Int, status: VersionStatus, fingerprint: String, commit: String?,
                artifactDigest: String?, artifactLocation: String?, logTail: String?, createdAt: Int64, attempts: Int,
                failedAt: Int64?, archivedAt: Int64?, training: TrainingDescription? = nil,
                deferred: @escaping @Sendable () -> VersionDetails) {
        self.init(model: model, number: number, status: status, fingerprint: fingerprint, commit: commit,
                  artifactDigest: artifactDigest, artifactLocation: artifactLocation, logTail: logTail, createdAt: createdAt,
                  attempts: attempts, failedAt: failedAt, archivedAt: archivedAt, training: training,
                  details: .deferred(DeferredDetails(deferred)))
    }

    private init(model: String, number: Int, status: VersionStatus, fingerprint: String, commit: String?,
                 artifactDigest: String?, artifactLocation: String?, logTail: String?, createdAt: Int64, attempts: Int,
                 failedAt: Int64?, archivedAt: Int64?, training: TrainingDescription?, details: Details) {
        self.model = model
        self.number = number
        self.status = status
        self.fingerprint = fingerprint
        self.commit = commit
        self.artifactDigest = artifactDigest
        self.artifactLocation = artifactLocation
        self.logTail = logTail
        self.createdAt = createdAt
        self.attempts = attempts
        self.failedAt = failedAt
        self.archivedAt = archivedAt
        self.training = training
        self.details = details
    }

    /// Whether the details are still undecoded (for tests of the registries that defer them).
    public var detailsDeferred: Bool {
        if case .deferred(let d) = details { return !d.isDecoded }
        return false
    }

    // The same JSON as the synthesized coding of the stored fields it had before deferring.
    private enum CodingKeys: String, CodingKey {
        case model, number, status, fingerprint, commit, params, metrics, artifactDigest, artifactLocation, gateResults, logTail,
             tags, createdAt, attempts, failedAt, archivedAt, training
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(model: try c.decode(String.self, forKey: .model), number: try c.decode(Int.self, forKey: .number),
                  status: try c.decode(VersionStatus.self, forKey: .status), fingerprint: try c.decode(String.self, forKey: .fingerprint),
                  commit: try c.decodeIfPresent(String.self, forKey: .commit),
                  params: try c.decode([String: ParamValue].self, forKey: .params),
                  metrics: try c.decode([String: Double].self, forKey: .metrics),
                  artifactDigest: try c.decodeIfPresent(String.self, forKey: .artifactDigest),
                  artifactLocation: try c.decodeIfPresent(String.self, forKey: .artifactLocation),
                  gateResults: try c.decode([GateResult].self, forKey: .gateResults),
                  logTail: try c.decodeIfPresent(String.self, forKey: .logTail),
                  tags: try c.decode([String: String].self, forKey: .tags), createdAt: try c.decode(Int64.self, forKey: .createdAt),
                  attempts: try c.decode(Int.self, forKey: .attempts), failedAt: try c.decodeIfPresent(Int64.self, forKey: .failedAt),
                  archivedAt: try c.decodeIfPresent(Int64.self, forKey: .archivedAt),
                  training: try c.decodeIfPresent(TrainingDescription.self, forKey: .training))
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(model, forKey: .model)
        try c.encode(number, forKey: .number)
        try c.encode(status, forKey: .status)
        try c.encode(fingerprint, forKey: .fingerprint)
        try c.encodeIfPresent(commit, forKey: .commit)
        try c.encode(params, forKey: .params)
        try c.encode(metrics, forKey: .metrics)
        try c.encodeIfPresent(artifactDigest, forKey: .artifactDigest)
        try c.encodeIfPresent(artifactLocation, forKey: .artifactLocation)
        try c.encode(gateResults, forKey: .gateResults)
        try c.encodeIfPresent(logTail, forKey: .logTail)
        try c.encode(tags, forKey: .tags)
        try c.encode(createdAt, forKey: .createdAt)
        try c.encode(attempts, forKey: .attempts)
        try c.encodeIfPresent(failedAt, forKey: .failedAt)
        try c.encodeIfPresent(archivedAt, forKey: .archivedAt)
        try c.encodeIfPresent(training, forKey: .training)
    }

    /// The details as values, or still to be decoded.
    private enum Details: Hashable, Sendable {
        case values(VersionDetails)
        case deferred(DeferredDetails)

        var value: VersionDetails {
            switch self {
            case .values(let v): return v
            case .deferred(let d): return d.value
            }
        }

        mutating func update(_ change: (inout VersionDetails) -> Void) {
            var v = value
            change(&v)
            self = .values(v)
        }

        /// Equal when they hold the same details, decoded or not (the same deferred ones are
        /// equal without decoding).
        static func == (a: Details, b: Details) -> Bool {
            if case .deferred(let x) = a, case .deferred(let y) = b, x === y { return true }
            return a.value == b.value
        }

        func hash(into hasher: inout Hasher) { hasher.combine(value) }
    }
}

/// The JSON-backed details of a version.
public struct VersionDetails: Hashable, Sendable {
    public var params: [String: ParamValue]
    public var metrics: [String: Double]
    public var gateResults: [GateResult]
    public var tags: [String: String]

    public init(params: [String: ParamValue] = [:], metrics: [String: Double] = [:], gateResults: [GateResult] = [],
                tags: [String: String] = [:]) {
        self.params = params
        self.metrics = metrics
        self.gateResults = gateResults
        self.tags = tags
    }
}

/// Details decoded at most once, when first read (`ModelVersion.init(…deferred:)`).
final class DeferredDetails: Sendable {
    private enum State {
        case pending(@Sendable () -> VersionDetails)
        case decoded(VersionDetails)
    }

    private let state: Mutex<State>

    init(_ decode: @escaping @Sendable () -> VersionDetails) {
        state = Mutex(.pending(decode))
    }

    var value: VersionDetails {
        state.withLock { state in
            switch state {
            case .decoded(let v): return v
            case .pending(let decode):
                let v = decode()
                state = .decoded(v)
                return v
            }
        }
    }

    var isDecoded: Bool {
        state.withLock { if case .decoded = $0 { return true } else { return false } }
    }
}

/// What a new version starts with; the registry assigns its number.
public struct NewVersion: Hashable, Sendable {
    public var model: String
    public var fingerprint: String
    public var commit: String?
    public var params: [String: ParamValue]
    public var status: VersionStatus
    public var tags: [String: String]
    public var training: TrainingDescription?

    public init(model: String, fingerprint: String, commit: String? = nil, params: [String: ParamValue] = [:],
                status: VersionStatus = .training, tags: [String: String] = [:], training: TrainingDescription? = nil) {
        self.model = model
        self.fingerprint = fingerprint
        self.commit = commit
        self.params = params
        self.status = status
        self.tags = tags
        self.training = training
    }
}

/// A change to a version after training or validation; nil fields are left as they are.
public struct VersionUpdate: Hashable, Sendable {
    public var status: VersionStatus?
    public var metrics: [String: Double]?
    public var artifactDigest: String?
    public var artifactLocation: String?
    public var gateResults: [GateResult]?
    public var logTail: String?
    public var tags: [String: String]?
    public var attempts: Int?
    public var failedAt: Int64?
    public var archivedAt: Int64?
    /// Set with a retry: the commit of the attempt (a retry may run at a later commit).
    public var commit: String?
    /// The update is a registry-only model's verdict on, or the digest of, a version made outside
    /// Capstan. A registry others write too refuses to change such a version otherwise.
    public var ofVersionMadeElsewhere = false

    public init(status: VersionStatus? = nil, metrics: [String: Double]? = nil, artifactDigest: String? = nil,
                artifactLocation: String? = nil, gateResults: [GateResult]? = nil, logTail: String? = nil,
                tags: [String: String]? = nil, attempts: Int? = nil, failedAt: Int64? = nil, archivedAt: Int64? = nil,
                commit: String? = nil) {
        self.status = status
        self.metrics = metrics
        self.artifactDigest = artifactDigest
        self.artifactLocation = artifactLocation
        self.gateResults = gateResults
        self.logTail = logTail
        self.tags = tags
        self.attempts = attempts
        self.failedAt = failedAt
        self.archivedAt = archivedAt
        self.commit = commit
    }
}

/// The whole registry read at once: what the planner observes in one pass.
public struct RegistrySnapshot: Hashable, Sendable {
    public var models: [RegisteredModel]
    /// Model name → its versions, by number.
    public var versions: [String: [ModelVersion]]
    /// Model name → alias → version number.
    public var aliases: [String: [String: Int]]
    /// Model name → the trainings of fingerprints that have no version, in a registry that
    /// numbers a version only when it registers its artifacts (MLflow). Empty for the embedded
    /// registry, whose versions are numbered when their training starts.
    public var attempts: [String: [TrainingAttemptRecord]]
    /// For a registry others write too (MLflow): what Capstan recorded of its own changes there,
    /// and what the registry holds that Capstan did not make, so that the planner sees changes
    /// made behind Capstan's back (drift). Nil for the embedded registry, which only Capstan
    /// writes.
    public var external: ExternalRegistryState?

    public init(models: [RegisteredModel], versions: [String: [ModelVersion]], aliases: [String: [String: Int]],
                attempts: [String: [TrainingAttemptRecord]] = [:], external: ExternalRegistryState? = nil) {
        self.models = models
        self.versions = versions
        self.aliases = aliases
        self.attempts = attempts
        self.external = external
    }
}

/// A registry that others write too, as one snapshot saw it against Capstan's ledger.
public struct ExternalRegistryState: Hashable, Sendable {
    /// What Capstan did there (kept in Capstan's state).
    public var ledger: RegistryLedger
    /// Model → versions without `capstan.fingerprint` (made by someone else), by number.
    public var foreignVersions: [String: [Int]]
    /// Model → number → Capstan's tags as the registry holds them now, on versions Capstan made.
    public var versionTags: [String: [Int: [String: String]]]

    public init(ledger: RegistryLedger, foreignVersions: [String: [Int]] = [:], versionTags: [String: [Int: [String: String]]] = [:]) {
        self.ledger = ledger
        self.foreignVersions = foreignVersions
        self.versionTags = versionTags
    }
}

/// Capstan's record of its own changes in a registry others write too (MLflow).
public struct RegistryLedger: Hashable, Sendable {
    /// Model → alias → the version Capstan last pointed it at (nil: Capstan deleted it).
    public var aliases: [String: [String: Int?]]
    /// Model → number → the Capstan tags Capstan last wrote on the version it registered.
    public var versions: [String: [Int: [String: String]]]
    /// Model → drift accepted under `policy.drift: adopt`.
    public var adoptions: [String: [DriftObject: DriftAdoption]]

    public init(aliases: [String: [String: Int?]] = [:], versions: [String: [Int: [String: String]]] = [:],
                adoptions: [String: [DriftObject: DriftAdoption]] = [:]) {
        self.aliases = aliases
        self.versions = versions
        self.adoptions = adoptions
    }
}

/// What drifted in a registry: an alias, the versions someone else added, or a version Capstan
/// made (edited or deleted). Its `key` is how the ledger stores it.
public enum DriftObject: Hashable, Sendable, Codable, CustomStringConvertible {
    case alias(String)
    case foreignVersions
    case version(Int)

    public var key: String {
        switch self {
        case .alias(let a): return "alias:\(a)"
        case .foreignVersions: return "foreign-versions"
        case .version(let n): return "version:\(n)"
        }
    }

    public init?(key: String) {
        if key == "foreign-versions" { self = .foreignVersions; return }
        if key.hasPrefix("alias:") { self = .alias(String(key.dropFirst(6))); return }
        if key.hasPrefix("version:"), let n = Int(key.dropFirst(8)) { self = .version(n); return }
        return nil
    }

    public var description: String {
        switch self {
        case .alias(let a): return "alias \(a)"
        case .foreignVersions: return "versions made outside Capstan"
        case .version(let n): return "v\(n)"
        }
    }
}

/// A drift taken as it is (`policy.drift: adopt`): what was found, for which spec. It stops
/// being reported while the registry still shows `value` and the spec is `spec`.
public struct DriftAdoption: Hashable, Sendable, Codable {
    public var value: String
    public var spec: String

    public init(value: String, spec: String) {
        self.value = value
        self.spec = spec
    }
}

/// The trainings of one fingerprint that produced no version yet (the MLflow registry: each is
/// an MLflow run of the model's experiment; a version is registered from a finished one).
public struct TrainingAttemptRecord: Hashable, Sendable, Codable {
    public enum State: String, Hashable, Sendable, Codable {
        /// The last attempt was interrupted (a killed pass) or is running in another pass.
        case running
        /// The last attempt failed; the retry backoff counts from `failedAt`.
        case failed
        /// The last attempt finished and stored its artifacts, but its version was not
        /// registered (the registry failed or the pass was killed in between): the next pass
        /// registers it without training again.
        case trained
    }

    public var fingerprint: String
    public var state: State
    /// Attempts made so far (the last one included).
    public var attempts: Int
    /// When the last attempt started, and failed (ms since the epoch).
    public var startedAt: Int64
    public var failedAt: Int64?
    /// The last lines of output of the last failed attempt (scrubbed when it was recorded).
    public var logTail: String?
    public var commit: String?
    /// The registry's id of the last attempt (the MLflow run id).
    public var run: String?

    public init(fingerprint: String, state: State, attempts: Int, startedAt: Int64, failedAt: Int64? = nil,
                logTail: String? = nil, commit: String? = nil, run: String? = nil) {
        self.fingerprint = fingerprint
        self.state = state
        self.attempts = attempts
        self.startedAt = startedAt
        self.failedAt = failedAt
        self.logTail = logTail
        self.commit = commit
        self.run = run
    }
}

/// What a training starts with (`Registry.startTraining`).
public struct TrainingStart: Hashable, Sendable {
    public var model: String
    public var fingerprint: String
    public var commit: String
    public var params: [String: ParamValue]
    public var training: TrainingDescription?
    /// 1 for a first attempt.
    public var attempt: Int
    /// The version a retry or a resumed training claims (a registry that numbers versions when
    /// their training starts); nil for a new one.
    public var resumes: Int?
    /// The repository the commit is of, as Capstan names it (`mlflow.source.name`).
    public var repository: String?

    public init(model: String, fingerprint: String, commit: String, params: [String: ParamValue] = [:],
                training: TrainingDescription? = nil, attempt: Int = 1, resumes: Int? = nil, repository: String? = nil) {
        self.model = model
        self.fingerprint = fingerprint
        self.commit = commit
        self.params = params
        self.training = training
        self.attempt = attempt
        self.resumes = resumes
        self.repository = repository
    }
}

/// A training the registry has taken note of (`Registry.startTraining`).
public struct TrainingClaim: Hashable, Sendable, Codable {
    public var model: String
    public var fingerprint: String
    public var attempt: Int
    /// The version trained into, when the registry numbers versions when training starts (the
    /// embedded registry); nil when it numbers them when they are registered (MLflow).
    public var number: Int?
    /// The registry's id of this attempt (the MLflow run id).
    public var run: String?
    /// Set when an earlier attempt of this fingerprint already trained and stored its artifact,
    /// and only its registration is left: the step is not run again.
    public var trained: TrainingResult?

    public init(model: String, fingerprint: String, attempt: Int, number: Int? = nil, run: String? = nil,
                trained: TrainingResult? = nil) {
        self.model = model
        self.fingerprint = fingerprint
        self.attempt = attempt
        self.number = number
        self.run = run
        self.trained = trained
    }

    /// How messages name what is trained: `v3`, or `fingerprint 1a2b3c4d5e6f` before a number.
    public var label: String { number.map { "v\($0)" } ?? "fingerprint \(fingerprint.prefix(12))" }
}

/// What a successful training produced.
public struct TrainingResult: Hashable, Sendable, Codable {
    public var metrics: [String: Double]
    /// The artifact in Capstan's artifact store (its digest and where the store keeps it).
    public var artifactDigest: String
    public var artifactLocation: String

    public init(metrics: [String: Double], artifactDigest: String, artifactLocation: String) {
        self.metrics = metrics
        self.artifactDigest = artifactDigest
        self.artifactLocation = artifactLocation
    }
}

/// A registry snapshot with the registry generation it was read at, so that a reader keeping it
/// (the controller's reconciler) can tell whether the registry moved since.
public struct GenerationalSnapshot: Hashable, Sendable {
    /// Moves with every write that changes a model, a version or an alias; nil for a registry
    /// that keeps no generation (every refresh reads it all again).
    public var generation: Int64?
    public var snapshot: RegistrySnapshot
    /// For a snapshot refreshed from an earlier one: that one's generation and the models whose
    /// row, versions or aliases were read again since (a superset of those that differ).
    public var refreshed: Refresh?

    public struct Refresh: Hashable, Sendable {
        public var since: Int64
        public var models: Set<String>

        public init(since: Int64, models: Set<String>) {
            self.since = since
            self.models = models
        }
    }

    public init(generation: Int64?, snapshot: RegistrySnapshot, refreshed: Refresh? = nil) {
        self.generation = generation
        self.snapshot = snapshot
        self.refreshed = refreshed
    }

    /// The same registry at the same generation, however it was read (`refreshed` is left out).
    public static func == (a: GenerationalSnapshot, b: GenerationalSnapshot) -> Bool {
        a.generation == b.generation && a.snapshot == b.snapshot
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(generation)
        hasher.combine(snapshot)
    }
}

/// One move of an alias, kept forever: "which version was champion at time T".
public struct AliasMove: Hashable, Sendable, Codable {
    public var model: String
    public var alias: String
    /// Nil when the alias was created by this move.
    public var from: Int?
    /// Nil when the alias was deleted by this move.
    public var to: Int?
    public var at: Int64
    public var commit: String?
    public var reason: String

    public init(model: String, alias: String, from: Int?, to: Int?, at: Int64, commit: String?, reason: String) {
        self.model = model
        self.alias = alias
        self.from = from
        self.to = to
        self.at = at
        self.commit = commit
        self.reason = reason
    }
}

/// Where Capstan keeps its record of a registry others write too (MLflow), in its own state:
/// the history of the aliases it moved ("which version was champion at time T"; MLflow keeps
/// none), the tags it wrote on the versions it registered, and the drift it adopted.
public protocol RegistryLedgerStore: Sendable {
    func record(_ move: AliasMove) async throws
    /// Every move of the model's aliases (of one alias when given), oldest first.
    func moves(of model: String, alias: String?) async throws -> [AliasMove]
    /// The version `alias` pointed at, at `time` (ms since the epoch), if any.
    func holder(_ alias: String, of model: String, at time: Int64) async throws -> Int?
    /// The tags Capstan wrote on a version it registered (replacing what was recorded).
    func recordVersion(model: String, number: Int, tags: [String: String]) async throws
    func adopt(model: String, object: DriftObject, _ adoption: DriftAdoption) async throws
    /// The whole ledger, for a snapshot.
    func ledger() async throws -> RegistryLedger
    /// The tags Capstan recorded for the model's versions, by number (one model's part of
    /// `ledger().versions`, without reading the rest).
    func recordedVersions(of model: String) async throws -> [Int: [String: String]]
}

extension RegistryLedgerStore {
    /// The tags Capstan recorded for one version, if any.
    public func recordedTags(of model: String, number: Int) async throws -> [String: String]? {
        try await recordedVersions(of: model)[number]
    }
}

/// Why a registry call was refused. Distinct cases so callers (the planner, the CLI) can react.
public enum RegistryError: Error, Sendable, Equatable, CustomStringConvertible {
    case modelNotFound(String)
    case versionNotFound(model: String, number: Int)
    /// A version with this fingerprint already exists (one fingerprint, one version).
    case duplicateFingerprint(model: String, fingerprint: String, existing: Int)
    /// Aliases may point only at validated versions.
    case notValidated(model: String, number: Int, status: VersionStatus)
    /// Archived versions are never aliased.
    case archived(model: String, number: Int)
    /// A drift entry for a registry that only Capstan writes (a plan made against another registry).
    case noDrift(model: String)

    public var description: String {
        switch self {
        case .modelNotFound(let m): return "model '\(m)' is not registered"
        case .versionNotFound(let m, let n): return "model '\(m)' has no version \(n)"
        case .duplicateFingerprint(let m, let f, let n):
            return "model '\(m)' already has version \(n) for fingerprint \(f.prefix(12)); one fingerprint never trains twice"
        case .notValidated(let m, let n, let s):
            return "version \(n) of model '\(m)' is \(s.rawValue), not validated; aliases point only at validated versions"
        case .archived(let m, let n):
            return "version \(n) of model '\(m)' is archived (beyond retention); aliases never point at archived versions"
        case .noDrift(let m):
            return "model '\(m)' is in a registry only Capstan writes, where nothing drifts; make a new plan"
        }
    }
}

/// The model registry: models, versions, aliases and their history. Implemented by the embedded
/// SQLite registry (CapstanStore) and, later, by MLflow's REST registry.
public protocol Registry: Sendable {
    func models() async throws -> [RegisteredModel]
    /// Every model, version and alias in one consistent read. Versions come without their
    /// `training` description (the planner needs it only for the models it retrains): fetch it
    /// with `trainingDescription(of:number:)`.
    func snapshot() async throws -> RegistrySnapshot
    /// The registry now, as `snapshot()`: `previous` itself when the registry has not changed
    /// since it was read, otherwise a snapshot read again (only what changed, where the registry
    /// can tell). `previous` must come from this registry.
    func snapshot(refreshing previous: GenerationalSnapshot?) async throws -> GenerationalSnapshot
    /// What version `number`'s fingerprint was computed from, when it was recorded.
    func trainingDescription(of model: String, number: Int) async throws -> TrainingDescription?
    func model(named name: String) async throws -> RegisteredModel?
    /// Creates the model, or updates its description and labels.
    @discardableResult
    func upsertModel(name: String, description: String?, labels: [String: String]) async throws -> RegisteredModel

    /// Registers a new version with the next number (never reused). Durable when it returns.
    func createVersion(_ version: NewVersion) async throws -> ModelVersion
    @discardableResult
    func updateVersion(model: String, number: Int, _ update: VersionUpdate) async throws -> ModelVersion
    func versions(of model: String) async throws -> [ModelVersion]
    func version(of model: String, number: Int) async throws -> ModelVersion?
    func version(of model: String, fingerprint: String) async throws -> ModelVersion?
    func versions(of model: String, status: VersionStatus) async throws -> [ModelVersion]
    /// The newest validated version that is not archived (what `latest` resolves to).
    func newestValidated(of model: String) async throws -> ModelVersion?

    /// Alias → version number.
    func aliases(of model: String) async throws -> [String: Int]
    func resolveAlias(_ alias: String, of model: String) async throws -> Int?
    /// Points `alias` at a validated version (moving it if it exists) and records the move.
    func setAlias(_ alias: String, of model: String, to number: Int, commit: String?, reason: String) async throws
    func deleteAlias(_ alias: String, of model: String, commit: String?, reason: String) async throws
    /// Every move of the model's aliases (of one alias when given), oldest first.
    func aliasHistory(of model: String, alias: String?) async throws -> [AliasMove]
    /// The version `alias` pointed at, at `time` (ms since the epoch), if any.
    func aliasHolder(_ alias: String, of model: String, at time: Int64) async throws -> Int?

    /// Takes note of a training that starts (or resumes). The embedded registry creates or claims
    /// a version in `training`; MLflow finds or creates the attempt's run.
    func startTraining(_ start: TrainingStart) async throws -> TrainingClaim
    /// Records a successful training: the version becomes `trained` (MLflow: the output folder
    /// is uploaded to the run and a version is registered from it). Idempotent for a claim whose
    /// version was registered already.
    func finishTraining(_ claim: TrainingClaim, _ result: TrainingResult, directory: String?) async throws -> ModelVersion
    /// Records a failed training, whose retry backoff starts at `time`.
    func failTraining(_ claim: TrainingClaim, logTail: String, at time: Int64) async throws

    /// Takes a drift as it is (`policy.drift: adopt`): it is not reported again while the
    /// registry shows the same and the spec does not change. Only for registries others write
    /// too (`RegistrySnapshot.external`).
    func adoptDrift(model: String, object: DriftObject, _ adoption: DriftAdoption) async throws
    /// Puts back the tags Capstan last wrote on a version it made, edited outside Capstan
    /// (`policy.drift: revert`).
    func restoreVersion(model: String, number: Int) async throws
    /// Downloads the files of a version into `folder` (which must not exist) when the registry
    /// keeps them (MLflow's artifact store); false when it keeps none (the embedded registry:
    /// Capstan's artifact store is the only copy).
    func downloadArtifact(model: String, number: Int, into folder: String) async throws -> Bool
}

extension Registry {
    /// The embedded way: a new fingerprint gets a version in `training` at once; a retry or a
    /// resumed training claims the same version again.
    public func startTraining(_ start: TrainingStart) async throws -> TrainingClaim {
        if let number = start.resumes {
            guard let existing = try await version(of: start.model, number: number), existing.fingerprint == start.fingerprint else {
                throw ReconcileFailure(.stalled, .planOutdated,
                                       "v\(number) is not a version of fingerprint \(start.fingerprint.prefix(12)); make a new plan")
            }
            guard existing.status == .failed || existing.status == .training else {
                throw ReconcileFailure(.stalled, .planOutdated, "v\(number) is \(existing.status.rawValue) now; make a new plan")
            }
            try await updateVersion(model: start.model, number: number, VersionUpdate(
                status: .training, attempts: start.attempt, commit: start.commit))
            return TrainingClaim(model: start.model, fingerprint: start.fingerprint, attempt: start.attempt, number: number)
        }
        let created = try await createVersion(NewVersion(
            model: start.model, fingerprint: start.fingerprint, commit: start.commit, params: start.params, status: .training,
            training: start.training))
        return TrainingClaim(model: start.model, fingerprint: start.fingerprint, attempt: start.attempt, number: created.number)
    }

    /// The embedded way: the claimed version becomes `trained`. `directory` (the step's output,
    /// already in Capstan's artifact store) is for registries that keep their own copy.
    public func finishTraining(_ claim: TrainingClaim, _ result: TrainingResult, directory: String?) async throws -> ModelVersion {
        guard let number = claim.number else {
            throw ReconcileFailure(.stalled, .planOutdated, "the training of \(claim.label) has no version to finish")
        }
        return try await updateVersion(model: claim.model, number: number, VersionUpdate(
            status: .trained, metrics: result.metrics, artifactDigest: result.artifactDigest,
            artifactLocation: result.artifactLocation, logTail: ""))
    }

    /// Only Capstan writes the embedded registry: nothing drifts there.
    public func adoptDrift(model: String, object: DriftObject, _ adoption: DriftAdoption) async throws {
        throw RegistryError.noDrift(model: model)
    }

    public func restoreVersion(model: String, number: Int) async throws {
        throw RegistryError.noDrift(model: model)
    }

    public func downloadArtifact(model: String, number: Int, into folder: String) async throws -> Bool { false }

    /// The embedded way: the claimed version becomes `failed`, with the log's last lines.
    public func failTraining(_ claim: TrainingClaim, logTail: String, at time: Int64) async throws {
        guard let number = claim.number else { return }
        try await updateVersion(model: claim.model, number: number, VersionUpdate(
            status: .failed, logTail: String(logTail.suffix(8192)), failedAt: time))
    }

    /// A registry without generations reads everything every time.
    public func snapshot(refreshing previous: GenerationalSnapshot?) async throws -> GenerationalSnapshot {
        GenerationalSnapshot(generation: nil, snapshot: try await snapshot())
    }
}
