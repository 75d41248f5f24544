import CapstanCore
import Foundation
import GRDB

/// Conditions per object (`conditions`) and the record of each reconcile pass (`passes`), in the
/// state database.
///
/// A condition is keyed by its object's text (`ObjectRef.description`) and keeps its failure
/// class (`failure_class`: stalled, waiting, transient, terminal) and, for a waiting one, when it
/// comes back (`until_at`). A stored object that no Capstan writes is refused on reading with a
/// `.foreignRecord` error that names it.
public struct PassRecords: Sendable {
    public let database: StateDatabase
    let now: @Sendable () -> Int64

    public init(database: StateDatabase, now: @escaping @Sendable () -> Int64 = StoreTime.systemMilliseconds) {
        self.database = database
        self.now = now
    }

    // MARK: - Passes

    /// Records the start of a pass; passes left `running` by a killed process become `interrupted`.
    public func start(command: String, commit: String?) throws -> Int64 {
        try database.write("record the start of a pass") { db in try start(db, command: command, commit: commit) }
    }

    /// `start` in the caller's transaction.
    public func start(_ db: Database, command: String, commit: String?) throws -> Int64 {
        let time = now()
        try db.execute(sql: "UPDATE passes SET outcome = 'interrupted', finished_at = ? WHERE outcome = 'running'", arguments: [time])
        try db.execute(sql: "INSERT INTO passes (command, commit_id, started_at, outcome) VALUES (?, ?, ?, 'running')",
                       arguments: [command, commit, time])
        return db.lastInsertedRowID
    }

    public func finish(id: Int64, commit: String?, outcome: PassRecord.Outcome, summary: String) throws {
        try database.write("record the end of pass \(id)") { db in
            try finish(db, id: id, commit: commit, outcome: outcome, summary: summary)
        }
    }

    /// `finish` in the caller's transaction.
    public func finish(_ db: Database, id: Int64, commit: String?, outcome: PassRecord.Outcome, summary: String) throws {
        try db.execute(sql: "UPDATE passes SET outcome = ?, finished_at = ?, summary = ?, commit_id = COALESCE(?, commit_id) WHERE id = ?",
                       arguments: [outcome.rawValue, now(), summary, commit, id])
    }

    /// The newest passes first.
    public func recent(limit: Int = 10) throws -> [PassRecord] {
        try database.read("read the passes") { db in try recent(db, limit: limit) }
    }

    /// `recent` in the caller's transaction.
    public func recent(_ db: Database, limit: Int = 10) throws -> [PassRecord] {
        try Row.fetchAll(db, sql: "SELECT * FROM passes ORDER BY id DESC LIMIT ?", arguments: [max(limit, 0)]).map { row in
            PassRecord(id: row["id"], command: row["command"], commit: row["commit_id"], startedAt: row["started_at"],
                       finishedAt: row["finished_at"], outcome: PassRecord.Outcome(rawValue: row["outcome"]) ?? .failed,
                       summary: row["summary"])
        }
    }

    // MARK: - Conditions

    /// Replaces the conditions of the given objects; with `pruning`, also removes the stored
    /// conditions of objects of those kinds that are not given (objects no longer desired).
    public func setConditions(_ conditions: [ObjectCondition], pruning: Set<ObjectKind> = []) throws {
        try database.write("record conditions") { db in try setConditions(db, conditions, pruning: pruning) }
    }

    /// `setConditions` in the caller's transaction.
    public func setConditions(_ db: Database, _ conditions: [ObjectCondition], pruning: Set<ObjectKind> = []) throws {
        let upsert = try db.cachedStatement(sql: """
            INSERT INTO conditions (object, type, reason, message, commit_id, updated_at, failure_class, until_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT(object) DO UPDATE SET type = excluded.type, reason = excluded.reason, message = excluded.message,
                commit_id = excluded.commit_id, updated_at = excluded.updated_at, failure_class = excluded.failure_class,
                until_at = excluded.until_at
            """)
        for c in conditions {
            try upsert.execute(arguments: [c.object.description, c.type.rawValue, c.reason, c.message, c.commit, c.updatedAt,
                                           c.failureClass?.name, c.failureClass?.until])
        }
        guard !pruning.isEmpty else { return }
        let kept = Set(conditions.map(\.object.description))
        let delete = try db.cachedStatement(sql: "DELETE FROM conditions WHERE object = ?")
        for object in try String.fetchAll(db, sql: "SELECT object FROM conditions") where !kept.contains(object) {
            // A row no Capstan wrote has no kind: it is left for `conditions()` to report.
            guard let ref = ObjectRef(object), pruning.contains(ref.kind) else { continue }
            try delete.execute(arguments: [object])
        }
    }

    /// Removes the stored conditions of `objects` (those not stored are ignored), in the caller's
    /// transaction.
    public func removeConditions(_ db: Database, _ objects: [ObjectRef]) throws {
        let delete = try db.cachedStatement(sql: "DELETE FROM conditions WHERE object = ?")
        for object in objects { try delete.execute(arguments: [object.description]) }
    }

    /// Every stored condition, by object.
    public func conditions() throws -> [ObjectCondition] {
        try database.read("read conditions") { db in try conditions(db) }
    }

    /// `conditions()` in the caller's transaction.
    public func conditions(_ db: Database) throws -> [ObjectCondition] {
        let path = database.path
        return try Row.fetchAll(db, sql: """
            SELECT object, type, reason, message, commit_id, CAST(updated_at AS INTEGER) AS updated_at, failure_class,
                   CAST(until_at AS INTEGER) AS until_at
            FROM conditions ORDER BY object
            """).map { row in
            let text: String = row["object"]
            guard let object = ObjectRef(text) else {
                throw StoreError(code: .foreignRecord,
                                 message: "the condition of '\(text)' in '\(path)' is about no object Capstan knows (model/NAME, model/NAME/vN, model/NAME/alias/ALIAS, deployment/NAME): another program wrote it. Delete that row (sqlite3 '\(path)'); the next pass records the conditions again",
                                 path: path)
            }
            return ObjectCondition(object: object, type: ObjectCondition.Kind(rawValue: row["type"]) ?? .degraded,
                                   reason: row["reason"], message: row["message"], commit: row["commit_id"],
                                   updatedAt: row["updated_at"],
                                   failureClass: ReconcileFailure.Class(name: row["failure_class"], until: row["until_at"]))
        }
    }
}
