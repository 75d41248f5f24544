/// The operation journal: every step that changes something outside one transaction is written
/// down (`started`) before it begins and closed (`finished` or `failed`) after, so that a pass
/// killed in between can be recovered by the next one (DESIGN.md §4, step 5).
public enum JournalOperation: String, Hashable, Sendable, Codable, CaseIterable {
    case train
    case validateCommand = "validate-command"
    case registerModel = "register-model"
    case validate
    case moveAlias = "move-alias"
    case deleteAlias = "delete-alias"
    case archiveVersions = "archive-versions"
    case deploy
}

/// What a started journal entry says: enough for recovery to tell what was under way, typed.
public enum JournalRecord: Hashable, Sendable {
    /// A training run (its version, once claimed, and its process group, once started).
    case training(TrainingRun)
    /// A validation command's run.
    case validationCommand(StepRun)
    /// A registry change, with the audit event it records and how to tell whether it happened.
    case registryChange(RegistryChange, event: AuditEvent)
    /// A change of the serving layer, recorded (applied weights, rollout, quarantine, event)
    /// once the serving layer took it.
    case servingChange(ServingChange)

    public var operation: JournalOperation {
        switch self {
        case .training: return .train
        case .validationCommand: return .validateCommand
        case .registryChange(let change, _): return change.operation
        case .servingChange: return .deploy
        }
    }
}

/// One training run, as journaled.
public struct TrainingRun: Hashable, Sendable, Codable {
    public var fingerprint: String
    public var commit: String
    /// Marks the run's processes (`CAPSTAN_RUN_ID`), so its leftovers can be found and stopped.
    public var run: String
    public var attempt: Int
    /// The version it trains, once claimed.
    public var version: Int?
    /// The version a retry or a resumed run claims (not a new version's creation).
    public var resumes: Int?
    /// The process group of the step, once started.
    public var processGroup: Int32?
    /// The failure event, written before the version is marked failed: a pass killed in
    /// between still records it.
    public var failure: AuditEvent?
    /// The registry's id of the attempt (the MLflow run), once claimed.
    public var registryRun: String?
    /// What the training produced, when registering it failed transiently (a registry that
    /// numbers versions when it registers them): the entry stays open, and recovery registers
    /// it without training again.
    public var trained: TrainingResult?

    public init(fingerprint: String, commit: String, run: String, attempt: Int, version: Int? = nil, resumes: Int? = nil,
                processGroup: Int32? = nil, failure: AuditEvent? = nil, registryRun: String? = nil, trained: TrainingResult? = nil) {
        self.registryRun = registryRun
        self.trained = trained
        self.fingerprint = fingerprint
        self.commit = commit
        self.run = run
        self.attempt = attempt
        self.version = version
        self.resumes = resumes
        self.processGroup = processGroup
        self.failure = failure
    }

    enum CodingKeys: String, CodingKey {
        case fingerprint, commit, run, attempt, version, resumes, processGroup = "pgid", failure, registryRun, trained
    }
}

/// A step's run that is not a training (a validation command).
public struct StepRun: Hashable, Sendable, Codable {
    public var version: Int
    public var run: String
    public var processGroup: Int32?

    public init(version: Int, run: String, processGroup: Int32? = nil) {
        self.version = version
        self.run = run
        self.processGroup = processGroup
    }

    enum CodingKeys: String, CodingKey {
        case version, run, processGroup = "pgid"
    }
}

/// A registry change, and what recovery checks to tell whether it was made.
public enum RegistryChange: Hashable, Sendable, Codable {
    case registerModel(model: String)
    case validate(model: String, version: Int)
    case moveAlias(model: String, alias: String, to: Int)
    case deleteAlias(model: String, alias: String)
    case archiveVersions(model: String, versions: [Int])

    public var operation: JournalOperation {
        switch self {
        case .registerModel: return .registerModel
        case .validate: return .validate
        case .moveAlias: return .moveAlias
        case .deleteAlias: return .deleteAlias
        case .archiveVersions: return .archiveVersions
        }
    }

    public var model: String {
        switch self {
        case .registerModel(let m), .validate(let m, _), .moveAlias(let m, _, _), .deleteAlias(let m, _),
             .archiveVersions(let m, _):
            return m
        }
    }
}

/// A change of the serving layer: what Capstan records once the serving layer took it.
public struct ServingChange: Hashable, Sendable, Codable {
    public enum Applied: Hashable, Sendable, Codable {
        /// The endpoint's weights are left as they are.
        case keep
        case set([BackendWeight])
        case remove
    }

    public var deployment: String
    public var model: String
    public var applied: Applied
    /// The rollout to keep (nil: none in progress any more).
    public var rollout: RolloutState?
    public var quarantine: Quarantine?
    public var event: AuditEvent

    public init(deployment: String, model: String, applied: Applied, rollout: RolloutState?, quarantine: Quarantine?, event: AuditEvent) {
        self.deployment = deployment
        self.model = model
        self.applied = applied
        self.rollout = rollout
        self.quarantine = quarantine
        self.event = event
    }
}

/// One journal entry, as the store keeps it.
public struct JournalEntry: Hashable, Sendable {
    public enum State: String, Hashable, Sendable, Codable {
        case started, finished, failed
    }

    public var id: Int64
    public var operation: JournalOperation
    public var subject: ObjectRef
    public var state: State
    public var startedAt: Int64
    public var finishedAt: Int64?
    /// Nil when the stored detail could not be read (written by an older Capstan): recovery
    /// then closes the entry without acting on it, and says so.
    public var record: JournalRecord?

    public init(id: Int64, operation: JournalOperation, subject: ObjectRef, state: State, startedAt: Int64,
                finishedAt: Int64? = nil, record: JournalRecord?) {
        self.id = id
        self.operation = operation
        self.subject = subject
        self.state = state
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.record = record
    }
}

/// How a journal entry ended, when it did not simply finish.
public struct JournalClosing: Hashable, Sendable, Codable {
    /// A killed or stopped pass left it; closed by recovery or by the stop.
    public var interrupted: Bool
    /// What went wrong, for people (already free of secrets).
    public var error: String?

    public init(interrupted: Bool = false, error: String? = nil) {
        self.interrupted = interrupted
        self.error = error
    }
}

extension JournalRecord: Codable {
    enum CodingKeys: String, CodingKey {
        case training, validationCommand = "validation", change, audit, serving
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        if let run = try c.decodeIfPresent(TrainingRun.self, forKey: .training) {
            self = .training(run)
        } else if let run = try c.decodeIfPresent(StepRun.self, forKey: .validationCommand) {
            self = .validationCommand(run)
        } else if let change = try c.decodeIfPresent(RegistryChange.self, forKey: .change) {
            self = .registryChange(change, event: try c.decode(AuditEvent.self, forKey: .audit))
        } else if let change = try c.decodeIfPresent(ServingChange.self, forKey: .serving) {
            self = .servingChange(change)
        } else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not a journal record of this Capstan"))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .training(let run): try c.encode(run, forKey: .training)
        case .validationCommand(let run): try c.encode(run, forKey: .validationCommand)
        case .registryChange(let change, let event):
            try c.encode(change, forKey: .change)
            try c.encode(event, forKey: .audit)
        case .servingChange(let change): try c.encode(change, forKey: .serving)
        }
    }
}
