/// Why part of a pass did not happen, classified by what the loop does next (DESIGN.md §4), with
/// a stable reason code. The controller schedules from the class; `status`, the status API, the
/// metrics (`reason` label) and notifications carry the reason.
public struct ReconcileFailure: Error, Hashable, Sendable, CustomStringConvertible {
    /// What the loop does next.
    public enum Class: Hashable, Sendable {
        /// Nothing helps until the spec changes (a commit): no retry.
        case stalled
        /// Comes back by itself: after `until` (ms since the epoch) when known — a training
        /// backoff, a canary pause.
        case waiting(until: Int64?)
        /// The world was in the way (network, lock, disk full, a lost lease): the next pass
        /// retries, with no backoff and nothing recorded against the fingerprint.
        case transient
        /// Final for what it concerns (a fingerprint that failed its gates, a version rolled
        /// back): never retried until Git changes it.
        case terminal

        /// `stalled`, `waiting`, `transient`, `terminal`.
        public var name: String {
            switch self {
            case .stalled: return "stalled"
            case .waiting: return "waiting"
            case .transient: return "transient"
            case .terminal: return "terminal"
            }
        }

        public var until: Int64? {
            if case .waiting(let until) = self { return until }
            return nil
        }

        /// The class named `name` (`stalled`, `waiting`, `transient`, `terminal`); nil for nil or
        /// any other name.
        public init?(name: String?, until: Int64? = nil) {
            switch name {
            case "stalled": self = .stalled
            case "waiting": self = .waiting(until: until)
            case "transient": self = .transient
            case "terminal": self = .terminal
            default: return nil
            }
        }
    }

    public var failureClass: Class
    public var reason: FailureReason
    /// For people: what happened and what to do. Already free of secrets.
    public var message: String

    public init(_ failureClass: Class, _ reason: FailureReason, _ message: String) {
        self.failureClass = failureClass
        self.reason = reason
        self.message = message
    }

    /// The reason's usual class.
    public init(_ reason: FailureReason, _ message: String) {
        self.init(reason.defaultClass, reason, message)
    }

    public var description: String { message }

    /// A failure of the whole pass's environment: retried on the next pass.
    public static func transient(_ reason: FailureReason, _ message: String) -> ReconcileFailure {
        ReconcileFailure(.transient, reason, message)
    }

    /// What the loop makes of `error`: the class and reason of a classified one (an adapter's
    /// error, or a failure itself), a cancellation as an interruption, a registry refusal and
    /// anything else as transient.
    public static func of(_ error: any Error) -> ReconcileFailure {
        if let failure = error as? ReconcileFailure { return failure }
        if let classified = error as? any ClassifiedError { return classified.failure }
        if error is CancellationError { return ReconcileFailure(.transient, .interrupted, "the pass was stopped") }
        if let registry = error as? RegistryError {
            return ReconcileFailure(.transient, .registryUnavailable, registry.description)
        }
        return ReconcileFailure(.transient, .stateUnavailable, String(describing: error))
    }
}

extension ReconcileFailure: Codable {
    enum CodingKeys: String, CodingKey {
        case failureClass = "class", until, reason, message
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let name = try c.decode(String.self, forKey: .failureClass)
        guard let decoded = Class(name: name, until: try c.decodeIfPresent(Int64.self, forKey: .until)) else {
            throw DecodingError.dataCorruptedError(forKey: .failureClass, in: c,
                                                   debugDescription: "'\(name)' is not a failure class (stalled, waiting, transient, terminal)")
        }
        failureClass = decoded
        reason = try c.decode(FailureReason.self, forKey: .reason)
        message = try c.decode(String.self, forKey: .message)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(failureClass.name, forKey: .failureClass)
        try c.encodeIfPresent(failureClass.until, forKey: .until)
        try c.encode(reason, forKey: .reason)
        try c.encode(message, forKey: .message)
    }
}

/// Stable, CamelCase reason codes (never renamed once released; add new ones). Documented in
/// docs/state.md.
public enum FailureReason: String, Hashable, Sendable, Codable, CaseIterable {
    // Stalled: the spec must change.
    /// The manifests at the commit have errors; the last good desired state stays in force.
    case invalidManifests = "InvalidManifests"
    /// The commit holds no manifest files.
    case noManifests = "NoManifests"
    /// A training input cannot be identified (outside the data roots, unreadable).
    case inputUnresolvable = "InputUnresolvable"
    /// A `secretEnv` variable is not set in Capstan's environment (or too short to redact).
    case missingSecret = "MissingSecret"
    /// An alias or deployment pins a version that does not exist.
    case pinnedVersionMissing = "PinnedVersionMissing"
    /// An alias or deployment pins a version that is rejected, failed or archived, or that an
    /// interrupted pass of another spec left training (nothing at this commit will finish it).
    case pinnedVersionUnusable = "PinnedVersionUnusable"
    /// A deployment's model has no `spec.serve`, or no validated version to serve.
    case notServable = "NotServable"
    /// An alias that follows `latest` has no validated version to point at (the newest was
    /// rejected or failed).
    case noValidatedVersion = "NoValidatedVersion"
    /// A saved plan no longer matches the commit or the registry: make a new plan.
    case planOutdated = "PlanOutdated"
    /// The commit at the ref is not signed by an allowed key.
    case unverifiedCommit = "UnverifiedCommit"

    // Waiting: comes back by itself.
    /// A failed training waits out its retry backoff.
    case trainingFailed = "TrainingFailed"
    /// The training ran longer than its timeout (retried after the backoff).
    case trainingTimedOut = "TrainingTimedOut"
    /// The training's outputs broke a rule (no output, a symlink, bad metrics) (retried after the backoff).
    case invalidOutput = "InvalidOutput"
    /// A version is being trained by another process.
    case trainingElsewhere = "TrainingElsewhere"
    /// A rollout step waits out its pause.
    case rolloutPaused = "RolloutPaused"
    /// A new endpoint or version is starting.
    case starting = "Starting"
    /// An alias waits for its version's soak in another deployment.
    case soakPending = "SoakPending"

    // Transient: retried on the next pass, no backoff.
    /// The Git source cannot be fetched or read.
    case sourceUnavailable = "SourceUnavailable"
    /// An object of the Git source cannot be read (a damaged mirror is cloned again).
    case sourceDamaged = "SourceDamaged"
    /// The state store cannot be read or written.
    case stateUnavailable = "StateUnavailable"
    /// Another process holds the state lock.
    case locked = "Locked"
    /// This process lost its lease (expired and taken over, or removed): it stopped writing.
    case leaseLost = "LeaseLost"
    /// A disk is full.
    case diskFull = "DiskFull"
    /// The registry cannot be reached or answered with a server error.
    case registryUnavailable = "RegistryUnavailable"
    /// The registry refused a request (credentials, permissions, a value it does not accept, a
    /// version Capstan did not make): a person must act.
    case registryRefused = "RegistryRefused"
    /// The serving layer cannot be reached.
    case servingUnavailable = "ServingUnavailable"
    /// The training exited with 75 (EX_TEMPFAIL) or was killed by the OOM killer.
    case trainingTemporaryFailure = "TrainingTemporaryFailure"
    /// The pass was stopped (a signal, shutdown) during the step; the next pass resumes it.
    case interrupted = "Interrupted"
    /// The step could not be started at all (no such command or working folder).
    case stepNotStarted = "StepNotStarted"

    // Terminal: final for what it concerns.
    /// The version failed its gates and is rejected.
    case gateFailed = "GateFailed"
    /// The canary failed its analysis; the version was rolled back and quarantined.
    case rolledBack = "RolledBack"
    /// The version's artifact no longer matches its digest.
    case artifactChanged = "ArtifactChanged"

    /// The class a failure with this reason usually has.
    public var defaultClass: ReconcileFailure.Class {
        switch self {
        case .invalidManifests, .noManifests, .inputUnresolvable, .missingSecret, .pinnedVersionMissing,
             .pinnedVersionUnusable, .notServable, .unverifiedCommit, .noValidatedVersion, .planOutdated, .registryRefused:
            return .stalled
        case .trainingFailed, .trainingTimedOut, .invalidOutput, .trainingElsewhere, .rolloutPaused, .starting,
             .soakPending:
            return .waiting(until: nil)
        case .sourceUnavailable, .sourceDamaged, .stateUnavailable, .locked, .leaseLost, .diskFull, .registryUnavailable,
             .servingUnavailable, .trainingTemporaryFailure, .interrupted, .stepNotStarted:
            return .transient
        case .gateFailed, .rolledBack, .artifactChanged:
            return .terminal
        }
    }
}
