/// Capstan's own state — the journal, the audit log, leases, pass records, conditions, what it
/// set in the serving layer, rollouts and quarantines, the input-hash cache — behind one port.
/// Implemented over SQLite in the state folder (CapstanStore) and, for several controllers, over
/// PostgreSQL. The engine sees only this protocol.
///
/// Writes come in two forms: `beginJournal` and `startPass` (which return an id), and
/// `commit(_:)`, which applies a `StateChanges` in one transaction. A store obtained with
/// `fenced(by:)` checks, inside every write transaction, that the lease it was fenced by is still
/// held with that generation, and refuses the write otherwise: a pass that lost its lease (it
/// expired and was taken over, or was removed with `capstan unlock`) cannot write anything more.
public protocol StateStore: Sendable {
    /// Where the state lives, for messages (a path, or a database URL without credentials).
    var location: String { get }
    /// The fence every write of this store checks, if any.
    var fence: Fence? { get }
    /// The same store, every write of which checks `fence`; `onLost` is called once, the first
    /// time a write finds the lease lost (the caller stops its pass there).
    func fenced(by fence: Fence, onLost: @escaping @Sendable (any Error) -> Void) -> any StateStore

    // MARK: Leases

    /// Takes the lock `name` for `holder`, waiting up to `waitMilliseconds` for a live holder to
    /// let go. A lease whose holder is gone (a process of this host that no longer runs) or
    /// expired is taken over. Throws a `.locked` failure naming the holder otherwise.
    func acquireLease(name: String, holder: String, command: String, ttlMilliseconds: Int64,
                      waitMilliseconds: Int64) async throws -> LeaseGrant
    /// Extends the lease of `fence`; throws a `.leaseLost` failure when it is no longer held.
    func renewLease(_ fence: Fence, ttlMilliseconds: Int64) async throws
    /// Throws a `.leaseLost` failure unless this store's fence is still held (a read).
    func checkLease() async throws
    /// Lets go of `fence`'s lease (nothing when it was taken over meanwhile).
    func releaseLease(_ fence: Fence) async throws
    /// Every lease, expired or not.
    func leases() async throws -> [Lease]

    // MARK: Journal and passes

    func beginJournal(_ record: JournalRecord, subject: ObjectRef) async throws -> Int64
    /// The entries left `started`, oldest first.
    func unfinishedJournal() async throws -> [JournalEntry]
    /// Records the start of a pass; a pass still `running` (its process died) becomes
    /// `interrupted`.
    func startPass(command: String, commit: String?) async throws -> Int64
    func recentPasses(limit: Int) async throws -> [PassRecord]

    // MARK: One transaction

    /// Applies `changes` in one transaction (all or nothing), after checking the fence.
    func commit(_ changes: StateChanges) async throws

    // MARK: Reads

    func auditEvents(_ query: AuditQuery) async throws -> [AuditEvent]
    /// The last condition of each object.
    func conditions() async throws -> [ObjectCondition]
    /// What Capstan set in the serving layer and last observed there, rollouts and quarantines.
    func servingRecords() async throws -> ServingRecords
    /// The cached content hashes of these files (absolute paths), where there is a row.
    func inputHashes(_ paths: [String]) async throws -> [String: InputHashRecord]
    /// The paths of the cached rows of `path` and of everything below it.
    func inputHashPaths(atOrBelow path: String) async throws -> [String]
}

/// Identifies one acquisition of a lock: the lease must still be held by `holder` with this
/// `generation` for a write to go through.
public struct Fence: Hashable, Sendable, CustomStringConvertible {
    public var lock: String
    public var holder: String
    public var generation: Int64

    public init(lock: String, holder: String, generation: Int64) {
        self.lock = lock
        self.holder = holder
        self.generation = generation
    }

    public var description: String { "lock '\(lock)', holder \(holder), generation \(generation)" }
}

/// One lease on a lock.
public struct Lease: Hashable, Sendable, Codable {
    /// The lock (`apply`: the one `apply` and `run` take before changing anything).
    public var name: String
    /// The id of the acquisition (what `capstan unlock <id>` takes).
    public var holder: String
    /// Bumped at every acquisition of the lock, never reused.
    public var generation: Int64
    public var host: String
    public var pid: Int64
    /// The holder process's start time (clock ticks since boot, /proc/PID/stat field 22), to
    /// tell a recycled pid from the holder.
    public var processStart: Int64?
    public var command: String
    /// Milliseconds since the epoch.
    public var startedAt: Int64
    public var expiresAt: Int64

    public init(name: String, holder: String, generation: Int64 = 0, host: String, pid: Int64, processStart: Int64? = nil,
                command: String, startedAt: Int64, expiresAt: Int64) {
        self.name = name
        self.holder = holder
        self.generation = generation
        self.host = host
        self.pid = pid
        self.processStart = processStart
        self.command = command
        self.startedAt = startedAt
        self.expiresAt = expiresAt
    }

    public var fence: Fence { Fence(lock: name, holder: holder, generation: generation) }

    public func isExpired(at milliseconds: Int64) -> Bool { expiresAt <= milliseconds }

    /// "holder 7f3c… (pid 4242 on host build-1, running 'capstan apply')".
    public var holderDescription: String {
        "holder \(holder) (pid \(pid) on host \(host), running '\(command)')"
    }
}

/// What an acquisition got.
public struct LeaseGrant: Hashable, Sendable {
    public var lease: Lease
    /// The lease this acquisition replaced, when it had expired or its holder was gone.
    public var tookOver: Lease?
    /// Why the replaced lease was free ("its lease expired at …", "there is no process 4242").
    public var tookOverBecause: String?

    public init(lease: Lease, tookOver: Lease? = nil, tookOverBecause: String? = nil) {
        self.lease = lease
        self.tookOver = tookOver
        self.tookOverBecause = tookOverBecause
    }

    public var fence: Fence { lease.fence }
}

/// One reconcile pass, as recorded.
public struct PassRecord: Hashable, Sendable, Codable {
    public enum Outcome: String, Hashable, Sendable, Codable {
        case running, converged, progressing, failed, interrupted
    }

    public var id: Int64
    public var command: String
    public var commit: String?
    public var startedAt: Int64
    public var finishedAt: Int64?
    public var outcome: Outcome
    public var summary: String

    public init(id: Int64, command: String, commit: String?, startedAt: Int64, finishedAt: Int64?, outcome: Outcome, summary: String) {
        self.id = id
        self.command = command
        self.commit = commit
        self.startedAt = startedAt
        self.finishedAt = finishedAt
        self.outcome = outcome
        self.summary = summary
    }
}

/// What Capstan keeps about the serving layer.
public struct ServingRecords: Hashable, Sendable {
    /// Deployment → the weights Capstan last set (to tell drift from its own changes).
    public var applied: [String: [BackendWeight]]
    /// Deployment → the endpoint as last observed.
    public var observed: [String: EndpointStatus]
    /// Deployment → the rollout in progress.
    public var rollouts: [String: RolloutState]
    public var quarantine: [Quarantine]

    public init(applied: [String: [BackendWeight]] = [:], observed: [String: EndpointStatus] = [:],
                rollouts: [String: RolloutState] = [:], quarantine: [Quarantine] = []) {
        self.applied = applied
        self.observed = observed
        self.rollouts = rollouts
        self.quarantine = quarantine
    }
}

/// A cached content hash of a file outside the repository, trusted while size, mtime and inode
/// match.
public struct InputHashRecord: Hashable, Sendable {
    public var path: String
    public var size: Int64
    public var mtimeNanoseconds: Int64
    public var inode: Int64
    public var digest: String
    public var checkedAt: Int64

    public init(path: String, size: Int64, mtimeNanoseconds: Int64, inode: Int64, digest: String, checkedAt: Int64) {
        self.path = path
        self.size = size
        self.mtimeNanoseconds = mtimeNanoseconds
        self.inode = inode
        self.digest = digest
        self.checkedAt = checkedAt
    }
}

/// The writes of one transaction, in order.
public struct StateChanges: Sendable {
    public enum Write: Sendable {
        case audit(AuditEvent)
        case updateJournal(id: Int64, JournalRecord)
        case closeJournal(id: Int64, JournalEntry.State, JournalClosing?, record: JournalRecord?)
        case finishPass(id: Int64, commit: String?, outcome: PassRecord.Outcome, summary: String)
        /// Replaces the conditions of these objects; with `pruning`, also removes the stored
        /// conditions of that kind of object (models, deployments) that are not listed.
        case setConditions([ObjectCondition], pruning: Set<ObjectKind>)
        /// Removes the stored conditions of these objects.
        case removeConditions([ObjectRef])
        case setApplied(deployment: String, model: String, [BackendWeight]?)
        case setRollout(deployment: String, RolloutState?)
        case addQuarantine(Quarantine)
        case setObserved([EndpointStatus])
        case cacheInputHash(InputHashRecord)
        case forgetInputHash(path: String)
    }

    /// What the transaction does, for error messages ("record the end of training v3").
    public var what: String
    public private(set) var writes: [Write] = []

    public init(_ what: String) {
        self.what = what
    }

    public var isEmpty: Bool { writes.isEmpty }

    public mutating func record(_ event: AuditEvent) { writes.append(.audit(event)) }
    public mutating func updateJournal(_ id: Int64, _ record: JournalRecord) { writes.append(.updateJournal(id: id, record)) }
    public mutating func finishJournal(_ id: Int64, record: JournalRecord? = nil) {
        writes.append(.closeJournal(id: id, .finished, nil, record: record))
    }
    public mutating func failJournal(_ id: Int64, _ closing: JournalClosing? = nil, record: JournalRecord? = nil) {
        writes.append(.closeJournal(id: id, .failed, closing, record: record))
    }
    public mutating func finishPass(_ id: Int64, commit: String?, outcome: PassRecord.Outcome, summary: String) {
        writes.append(.finishPass(id: id, commit: commit, outcome: outcome, summary: summary))
    }
    public mutating func setConditions(_ conditions: [ObjectCondition], pruning: Set<ObjectKind> = []) {
        writes.append(.setConditions(conditions, pruning: pruning))
    }
    public mutating func removeConditions(_ objects: [ObjectRef]) {
        if !objects.isEmpty { writes.append(.removeConditions(objects)) }
    }
    public mutating func setApplied(_ deployment: String, model: String, _ backends: [BackendWeight]?) {
        writes.append(.setApplied(deployment: deployment, model: model, backends))
    }
    public mutating func setRollout(_ deployment: String, _ rollout: RolloutState?) {
        writes.append(.setRollout(deployment: deployment, rollout))
    }
    public mutating func addQuarantine(_ quarantine: Quarantine) { writes.append(.addQuarantine(quarantine)) }
    public mutating func setObserved(_ endpoints: [EndpointStatus]) { writes.append(.setObserved(endpoints)) }
    public mutating func cacheInputHash(_ record: InputHashRecord) { writes.append(.cacheInputHash(record)) }
    public mutating func forgetInputHash(_ path: String) { writes.append(.forgetInputHash(path: path)) }
}

/// The kinds of object a condition is about.
public enum ObjectKind: String, Hashable, Sendable, Codable {
    case model, deployment
}

extension ObjectRef {
    /// A model, its versions and aliases are `.model`; a deployment `.deployment`.
    public var kind: ObjectKind { model != nil ? .model : .deployment }
}

/// An error an adapter throws that knows what the loop should do about it: the engine reads
/// the class and reason from it instead of from its text.
public protocol ClassifiedError: Error {
    var failure: ReconcileFailure { get }
}
