import CapstanCore
import Foundation
import GRDB

/// Conditions per object and the record of each reconcile pass, in the state database.
public struct PassRecords: Sendable {
    /// One pass, as recorded.
    public struct Pass: Hashable, Sendable, Codable {
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
    }

    public let database: StateDatabase
    let now: @Sendable () -> Int64

    public init(database: StateDatabase, now: @escaping @Sendable () -> Int64 = StoreTime.systemMilliseconds) {
        self.database = database
        self.now = now
    }

    /// Records the start of a pass; passes left `running` by a killed process become `interrupted`.
    public func start(command: String, commit: String?) throws -> Int64 {
        let time = now()
        return try write("record the start of a pass") { db in
            try db.execute(sql: "UPDATE passes SET outcome = 'interrupted', finished_at = ? WHERE outcome = 'running'", arguments: [time])
            try db.execute(sql: "INSERT INTO passes (command, commit_id, started_at, outcome) VALUES (?, ?, ?, 'running')",
                           arguments: [command, commit, time])
            return db.lastInsertedRowID
        }
    }

    public func finish(id: Int64, commit: String?, outcome: Pass.Outcome, summary: String) throws {
        try write("record the end of pass \(id)") { db in
            try db.execute(sql: "UPDATE passes SET outcome = ?, finished_at = ?, summary = ?, commit_id = COALESCE(?, commit_id) WHERE id = ?",
                           arguments: [outcome.rawValue, now(), summary, commit, id])
        }
    }

    /// The newest passes first.
    public func recent(limit: Int = 10) throws -> [Pass] {
        try read("read the passes") { db in
            try Row.fetchAll(db, sql: "SELECT * FROM passes ORDER BY id DESC LIMIT ?", arguments: [limit]).map { row in
                Pass(id: row["id"], command: row["command"], commit: row["commit_id"], startedAt: row["started_at"],
                     finishedAt: row["finished_at"], outcome: Pass.Outcome(rawValue: row["outcome"]) ?? .failed,
                     summary: row["summary"])
            }
        }
    }

    /// Replaces the conditions of the given objects.
    public func setConditions(_ conditions: [ObjectCondition]) throws {
        try write("record conditions") { db in
            for c in conditions {
                try db.execute(sql: """
                    INSERT INTO conditions (object, type, reason, message, commit_id, updated_at) VALUES (?, ?, ?, ?, ?, ?)
                    ON CONFLICT(object) DO UPDATE SET type = excluded.type, reason = excluded.reason, message = excluded.message,
                        commit_id = excluded.commit_id, updated_at = excluded.updated_at
                    """, arguments: [c.object, c.type.rawValue, c.reason, c.message, c.commit, c.updatedAt])
            }
        }
    }

    /// Removes the conditions of objects that are no longer desired.
    public func removeConditions(except objects: Set<String>, prefix: String) throws {
        try write("prune conditions") { db in
            let stored = try String.fetchAll(db, sql: "SELECT object FROM conditions WHERE object LIKE ? ESCAPE '\\'",
                                             arguments: [prefix.replacingOccurrences(of: "%", with: "\\%").replacingOccurrences(of: "_", with: "\\_") + "%"])
            for object in stored where !objects.contains(object) {
                try db.execute(sql: "DELETE FROM conditions WHERE object = ?", arguments: [object])
            }
        }
    }

    /// Every stored condition, by object.
    public func conditions() throws -> [String: ObjectCondition] {
        try read("read conditions") { db in
            var out: [String: ObjectCondition] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT * FROM conditions") {
                let c = ObjectCondition(object: row["object"], type: ObjectCondition.Kind(rawValue: row["type"]) ?? .degraded,
                                        reason: row["reason"], message: row["message"], commit: row["commit_id"],
                                        updatedAt: row["updated_at"])
                out[c.object] = c
            }
            return out
        }
    }

    func write<T: Sendable>(_ what: String, _ body: (Database) throws -> T) throws -> T {
        try database.write(what, body)
    }

    func read<T: Sendable>(_ what: String, _ body: (Database) throws -> T) throws -> T {
        try database.read(what, body)
    }
}
