import CapstanCore
import Foundation
import GRDB

/// The core's `StateStore` port over the state database, `<stateDir>/capstan.db` (SQLite, WAL).
///
/// Leases are `StateLock`'s rows; the journal, the audit log, passes and conditions, the serving
/// records and the input-hash cache are the tables of `Journal`, `AuditLog`, `PassRecords`,
/// `ServingTables` and `input_hashes`. Every write goes through `StateDatabase.write`, in one
/// transaction: `commit(_:)` applies all the writes of a `StateChanges` in order in one
/// transaction (all or nothing). A store `fenced(by:onLost:)` a lease checks that lease inside
/// every write transaction (`beginJournal`, `startPass` and `commit` alike), and its embedded
/// registry (`registry`) writes through the same fenced database.
///
/// Failures are `StoreError`s, which are `ClassifiedError`s: a lost lease, a held lock, a full
/// disk and an unusable database are transient failures for the loop.
///
/// Beyond the port, what the CLI needs of the SQLite state: `unlockCheck(_:)` and
/// `forceUnlock(holder:generation:)` for `capstan unlock`, `warnings` (a state folder others can
/// read), the registry and the database itself.
public struct SQLiteStateStore: StateStore {
    public let database: StateDatabase
    /// The embedded registry over the same database, fenced like this store.
    public let registry: EmbeddedRegistry
    let lock: StateLock
    let now: @Sendable () -> Int64

    /// Opens (creating or upgrading) `<stateDirectory>/capstan.db`; see `StateDatabase`.
    public init(stateDirectory: String) throws {
        self.init(database: try StateDatabase(stateDirectory: stateDirectory))
    }

    /// - Parameters:
    ///   - host, pid, processStart: who takes leases (this process by default); tests pass others.
    ///   - now: the current time in milliseconds since the Unix epoch; tests pass a manual clock.
    public init(database: StateDatabase, host: String = StateLock.localHostName(), pid: Int64 = Int64(getpid()),
                processStart: Int64? = nil, now: @escaping @Sendable () -> Int64 = StoreTime.systemMilliseconds) {
        self.init(database: database,
                  lock: StateLock(database: database, host: host, pid: pid, processStart: processStart, now: now), now: now)
    }

    init(database: StateDatabase, lock: StateLock, now: @escaping @Sendable () -> Int64) {
        self.database = database
        self.registry = EmbeddedRegistry(database: database, now: now)
        self.lock = lock
        self.now = now
    }

    public var location: String { database.path }
    public var fence: Fence? { database.fence }
    /// What people should know about the state folder (it is readable by other users).
    public var warnings: [String] { database.warnings }

    public func fenced(by fence: Fence, onLost: @escaping @Sendable (any Error) -> Void) -> any StateStore {
        fencedStore(by: fence, onLost: onLost)
    }

    /// `fenced(by:onLost:)` as this type, for the CLI (its registry writes are fenced too).
    public func fencedStore(by fence: Fence, onLost: @escaping @Sendable (any Error) -> Void = { _ in }) -> SQLiteStateStore {
        SQLiteStateStore(database: database.fenced(by: fence, onLost: onLost), lock: lock, now: now)
    }

    // MARK: - Leases

    public func acquireLease(name: String, holder: String, command: String, ttlMilliseconds: Int64,
                             waitMilliseconds: Int64) async throws -> LeaseGrant {
        try await lock.acquire(name: name, holder: holder, command: command, ttl: Self.seconds(ttlMilliseconds),
                               wait: Self.seconds(waitMilliseconds))
    }

    public func renewLease(_ fence: Fence, ttlMilliseconds: Int64) async throws {
        let lock = self.lock
        try await Blocking.run { _ = try lock.renew(fence, ttl: Self.seconds(ttlMilliseconds)) }
    }

    public func checkLease() async throws {
        let database = self.database
        try await Blocking.run { try database.checkLease() }
    }

    public func releaseLease(_ fence: Fence) async throws {
        let lock = self.lock
        try await Blocking.run { _ = try lock.release(fence) }
    }

    public func leases() async throws -> [Lease] {
        let lock = self.lock
        return try await Blocking.run { try lock.current() }
    }

    /// Whether `capstan unlock` may remove `lease` without `--force` (see `StateLock.unlockCheck`).
    public func unlockCheck(_ lease: Lease) -> StateLock.UnlockCheck {
        lock.unlockCheck(lease)
    }

    /// The lease of the acquisition `holder`, or nil.
    public func lease(holder: String) throws -> Lease? {
        try lock.lease(id: holder)
    }

    /// Removes the lease of `holder` (of that generation, when given), whoever holds it, and
    /// returns it; nil when there was none. The caller decides whether that is safe
    /// (`unlockCheck`).
    @discardableResult
    public func forceUnlock(holder: String, generation: Int64? = nil) throws -> Lease? {
        try lock.forceUnlock(id: holder, generation: generation)
    }

    static func seconds(_ milliseconds: Int64) -> TimeInterval {
        TimeInterval(max(milliseconds, 0)) / 1000
    }

    // MARK: - Journal and passes

    /// The registry the last pass wired (`capstan.yaml`'s `spec.registry`: names of variables,
    /// never their values), so that commands without a repository (`capstan status`) read the
    /// same one. Nil before any pass.
    public func registryInUse() async throws -> RegistryConfig? {
        let text = try await database.read("read the registry in use") { db in
            try String.fetchOne(db, sql: "SELECT value FROM capstan_meta WHERE key = 'registry'")
        }
        return text.flatMap { try? JSONDecoder().decode(RegistryConfig.self, from: Data($0.utf8)) }
    }

    public func recordRegistryInUse(_ config: RegistryConfig) async throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let text = String(decoding: try encoder.encode(config), as: UTF8.self)
        try await database.write("record the registry in use") { db in
            try db.execute(sql: "INSERT OR REPLACE INTO capstan_meta (key, value) VALUES ('registry', ?)", arguments: [text])
        }
    }

    public func beginJournal(_ record: JournalRecord, subject: ObjectRef) async throws -> Int64 {
        let journal = self.journal
        return try await database.write("journal '\(record.operation.rawValue)' of '\(subject)'") { db in
            try journal.begin(db, record, subject: subject)
        }
    }

    public func unfinishedJournal() async throws -> [JournalEntry] {
        let journal = self.journal
        return try await database.read("read the journal") { db in try journal.unfinished(db) }
    }

    /// The journal entry `id`, or nil.
    public func journalEntry(_ id: Int64) async throws -> JournalEntry? {
        let journal = self.journal
        return try await database.read("read the journal") { db in try journal.entry(db, id: id) }
    }

    /// How the journal entry `id` ended, when it was closed with a `JournalClosing`.
    public func journalClosing(_ id: Int64) async throws -> JournalClosing? {
        let journal = self.journal
        return try await database.read("read the journal") { db in try journal.closing(db, id: id) }
    }

    public func startPass(command: String, commit: String?) async throws -> Int64 {
        let passes = self.passes
        return try await database.write("record the start of a pass") { db in try passes.start(db, command: command, commit: commit) }
    }

    public func recentPasses(limit: Int) async throws -> [PassRecord] {
        let passes = self.passes
        return try await database.read("read the passes") { db in try passes.recent(db, limit: limit) }
    }

    // MARK: - One transaction

    public func commit(_ changes: StateChanges) async throws {
        guard !changes.isEmpty else { return }
        let (journal, audit, passes, serving) = (self.journal, self.audit, self.passes, self.serving)
        try await database.write(changes.what) { db in
            for write in changes.writes {
                switch write {
                case .audit(let event):
                    try audit.record(db, event)
                case .updateJournal(let id, let record):
                    try journal.update(db, id: id, record)
                case .closeJournal(let id, let state, let closing, let record):
                    try journal.close(db, id: id, as: state, closing: closing, record: record)
                case .finishPass(let id, let commit, let outcome, let summary):
                    try passes.finish(db, id: id, commit: commit, outcome: outcome, summary: summary)
                case .setConditions(let conditions, let pruning):
                    try passes.setConditions(db, conditions, pruning: pruning)
                case .removeConditions(let objects):
                    try passes.removeConditions(db, objects)
                case .setApplied(let deployment, let model, let backends):
                    try serving.setApplied(db, deployment, model: model, backends)
                case .setRollout(let deployment, let rollout):
                    try serving.setRollout(db, deployment, rollout)
                case .addQuarantine(let quarantine):
                    try serving.addQuarantine(db, quarantine)
                case .setObserved(let endpoints):
                    try serving.setObserved(db, endpoints)
                case .cacheInputHash(let record):
                    try InputHashes.cache(db, record)
                case .forgetInputHash(let path):
                    try InputHashes.forget(db, path: path)
                }
            }
        }
    }

    // MARK: - Reads

    public func auditEvents(_ query: AuditQuery) async throws -> [AuditEvent] {
        let audit = self.audit
        return try await database.read("read the audit log") { db in try audit.query(db, query) }
    }

    public func conditions() async throws -> [ObjectCondition] {
        let passes = self.passes
        return try await database.read("read conditions") { db in try passes.conditions(db) }
    }

    public func servingRecords() async throws -> CapstanCore.ServingRecords {
        let serving = self.serving
        return try await database.read("read the serving records") { db in try serving.records(db) }
    }

    public func inputHashes(_ paths: [String]) async throws -> [String: InputHashRecord] {
        try await database.read("read the input hash cache") { db in try InputHashes.records(db, paths) }
    }

    public func inputHashPaths(atOrBelow path: String) async throws -> [String] {
        try await database.read("read the input hash cache") { db in try InputHashes.paths(db, atOrBelow: path) }
    }

    // MARK: - Tables

    var journal: Journal { Journal(database: database, now: now) }
    var audit: AuditLog { AuditLog(database: database) }
    var passes: PassRecords { PassRecords(database: database, now: now) }
    var serving: ServingTables { ServingTables(database: database, now: now) }
}

/// The content-hash cache of files outside the repository (`input_hashes`): a file's digest is
/// trusted while its size, mtime and inode match the row (the engine decides; see
/// `ExternalInputHasher`).
enum InputHashes {
    static func records(_ db: Database, _ paths: [String]) throws -> [String: InputHashRecord] {
        let statement = try db.cachedStatement(sql: """
            SELECT path, CAST(size AS INTEGER) AS size, CAST(mtime_ns AS INTEGER) AS mtime_ns, CAST(inode AS INTEGER) AS inode,
                   digest, CAST(checked_at AS INTEGER) AS checked_at
            FROM input_hashes WHERE path = ?
            """)
        var out: [String: InputHashRecord] = [:]
        for path in paths where out[path] == nil {
            guard let row = try Row.fetchOne(statement, arguments: [path]) else { continue }
            out[path] = InputHashRecord(path: row["path"], size: row["size"], mtimeNanoseconds: row["mtime_ns"], inode: row["inode"],
                                        digest: row["digest"], checkedAt: row["checked_at"])
        }
        return out
    }

    /// The paths of the rows of `path` and of everything below it (`path/…`), sorted.
    static func paths(_ db: Database, atOrBelow path: String) throws -> [String] {
        // The rows below a folder sort between "folder/" and "folder0" ('0' follows '/').
        try String.fetchAll(db.cachedStatement(sql: "SELECT path FROM input_hashes WHERE path = ? OR (path >= ? AND path < ?) ORDER BY path"),
                            arguments: [path, path + "/", path + "0"])
    }

    static func cache(_ db: Database, _ record: InputHashRecord) throws {
        try db.cachedStatement(sql: """
            INSERT INTO input_hashes (path, size, mtime_ns, inode, digest, checked_at) VALUES (?, ?, ?, ?, ?, ?)
            ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
                inode = excluded.inode, digest = excluded.digest, checked_at = excluded.checked_at
            """).execute(arguments: [record.path, record.size, record.mtimeNanoseconds, record.inode, record.digest, record.checkedAt])
    }

    static func forget(_ db: Database, path: String) throws {
        try db.cachedStatement(sql: "DELETE FROM input_hashes WHERE path = ?").execute(arguments: [path])
    }
}
