import CapstanCore
import Foundation
import GRDB

/// The append-only audit log (`audit_log`): events are recorded and queried, never changed or
/// deleted.
///
/// An event's object and action are stored in their one text form (`ObjectRef.description`,
/// `AuditAction.rawValue`) and read back through `ObjectRef(_:)` and `AuditAction(rawValue:)`;
/// a row that holds anything else was written by another program, and reading it fails with a
/// `.foreignRecord` error that names the row.
public struct AuditLog: Sendable {
    public let database: StateDatabase

    public init(database: StateDatabase) {
        self.database = database
    }

    /// Appends `event` and returns its id.
    @discardableResult
    public func record(_ event: AuditEvent) throws -> Int64 {
        try database.write("record the audit event '\(event.action.rawValue)' of '\(event.object)'") { db in try record(db, event) }
    }

    /// Appends `event` in the caller's transaction and returns its id.
    @discardableResult
    public func record(_ db: Database, _ event: AuditEvent) throws -> Int64 {
        try db.execute(sql: """
            INSERT INTO audit_log (at, actor, host, commit_id, object, action, "before", "after", reason)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [event.at, event.actor, event.host, event.commit, event.object.description, event.action.rawValue,
                             try event.before.map(StoreJSON.text), try event.after.map(StoreJSON.text), event.reason])
        return db.lastInsertedRowID
    }

    /// The events `query` selects, newest (last recorded) first.
    public func query(_ query: AuditQuery = AuditQuery()) throws -> [AuditEvent] {
        try database.read("read the audit log") { db in try self.query(db, query) }
    }

    /// `query(_:)` in the caller's transaction.
    public func query(_ db: Database, _ query: AuditQuery) throws -> [AuditEvent] {
        var conditions: [String] = []
        var arguments: StatementArguments = []
        switch query.filter {
        case .all:
            break
        case .object(let ref):
            // The object and what belongs to it; substr counts characters (code points), like
            // `unicodeScalars`, where LIKE would ignore case.
            let object = ref.description
            conditions.append("(object = ? OR substr(object, 1, ?) = ?)")
            arguments += [object, object.unicodeScalars.count + 1, object + "/"]
        }
        if let id = query.afterID {
            conditions.append("id > ?")
            arguments += [id]
        }
        if let since = query.since {
            conditions.append("CAST(at AS INTEGER) >= ?")
            arguments += [since]
        }
        var sql = """
            SELECT id, CAST(at AS INTEGER) AS at, actor, host, commit_id, object, action, "before", "after", reason
            FROM audit_log
            """
        if !conditions.isEmpty { sql += " WHERE " + conditions.joined(separator: " AND ") }
        sql += " ORDER BY id DESC"
        if let limit = query.limit {
            sql += " LIMIT ?"
            arguments += [max(limit, 0)]
        }
        let path = database.path
        return try Row.fetchAll(db, sql: sql, arguments: arguments).map { row in
            let id: Int64 = row["id"]
            let objectText: String = row["object"], actionText: String = row["action"]
            guard let object = ObjectRef(objectText) else {
                throw Self.foreign(id, path: path, "the object '\(objectText)', which is not an object reference (model/NAME, model/NAME/vN, model/NAME/alias/ALIAS, deployment/NAME)")
            }
            guard let action = AuditAction(rawValue: actionText) else {
                throw Self.foreign(id, path: path, "the action '\(actionText)', which is not an audit action of Capstan's")
            }
            return AuditEvent(at: row["at"], actor: row["actor"], host: row["host"], commit: row["commit_id"], object: object,
                              action: action, before: try (row["before"] as String?).map(StoreJSON.value),
                              after: try (row["after"] as String?).map(StoreJSON.value), reason: row["reason"], id: id)
        }
    }

    static func foreign(_ id: Int64, path: String, _ what: String) -> StoreError {
        StoreError(code: .foreignRecord,
                   message: "row \(id) of the audit log in '\(path)' has \(what): no Capstan writes that, another program did. Correct or delete that row (sqlite3 '\(path)'), or restore the state folder from a backup",
                   path: path)
    }
}
