import CapstanCore
import Foundation
import GRDB

/// One change, as the audit log keeps it: who (actor, host) did what (action) to which object,
/// at which commit, with the object's state before and after, and why.
///
/// Objects are named `<kind>/<name>`, with an optional `/<part>` below them, such as
/// `model/churn`, `model/churn/alias/production` or `deployment/churn-api`.
public struct AuditEvent: Hashable, Sendable, Codable {
    /// The row id, assigned when recorded; increases with every event.
    public var id: Int64?
    /// When it happened, to the millisecond.
    public var at: Date
    public var actor: String
    public var host: String
    public var commit: String?
    public var object: String
    public var action: String
    /// The object's state before and after (JSON values; a plain string is `.string`).
    public var before: ParamValue?
    public var after: ParamValue?
    public var reason: String

    public init(at: Date = Date(), actor: String, host: String = StateLock.localHostName(), commit: String? = nil,
                object: String, action: String, before: ParamValue? = nil, after: ParamValue? = nil,
                reason: String = "", id: Int64? = nil) {
        // Stored to the millisecond: round now so that a recorded event reads back equal.
        self.at = StoreTime.date(StoreTime.milliseconds(of: at))
        self.id = id
        self.actor = actor
        self.host = host
        self.commit = commit
        self.object = object
        self.action = action
        self.before = before
        self.after = after
        self.reason = reason
    }
}

/// The append-only audit log: events are recorded and queried, never changed or deleted.
public struct AuditLog: Sendable {
    /// Which objects `query` returns.
    public enum Filter: Hashable, Sendable {
        case all
        /// Exactly this object.
        case object(String)
        /// Objects whose name starts with this text.
        case objectPrefix(String)
        /// `model/<name>` and everything below it (`model/<name>/…`).
        case model(String)
        /// `deployment/<name>` and everything below it.
        case deployment(String)
    }

    public let database: StateDatabase

    public init(database: StateDatabase) {
        self.database = database
    }

    /// Appends `event` and returns its id.
    @discardableResult
    public func record(_ event: AuditEvent) throws -> Int64 {
        try database.write("record the audit event '\(event.action)' of '\(event.object)'") { db in try record(db, event) }
    }

    /// Appends `event` in the caller's transaction and returns its id.
    @discardableResult
    public func record(_ db: Database, _ event: AuditEvent) throws -> Int64 {
        try db.execute(sql: """
            INSERT INTO audit_log (at, actor, host, commit_id, object, action, "before", "after", reason)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [StoreTime.milliseconds(of: event.at), event.actor, event.host, event.commit, event.object,
                             event.action, try event.before.map(StoreJSON.text), try event.after.map(StoreJSON.text),
                             event.reason])
        return db.lastInsertedRowID
    }

    /// The events that match `filter`, at or after `since`, newest (last recorded) first, at most
    /// `limit` of them (nil: all).
    public func query(_ filter: Filter = .all, since: Date? = nil, after id: Int64? = nil, limit: Int? = nil) throws -> [AuditEvent] {
        try database.read("read the audit log") { db in try query(db, filter, since: since, after: id, limit: limit) }
    }

    /// `after`: only events recorded after the one with this id.
    public func query(_ db: Database, _ filter: Filter = .all, since: Date? = nil, after id: Int64? = nil, limit: Int? = nil) throws -> [AuditEvent] {
        var conditions: [String] = []
        var arguments: StatementArguments = []
        // substr counts characters (code points), like `unicodeScalars`; LIKE would ignore case.
        func prefix(_ text: String) {
            conditions.append("substr(object, 1, ?) = ?")
            arguments += [text.unicodeScalars.count, text]
        }
        func objectAndBelow(_ object: String) {
            conditions.append("(object = ? OR substr(object, 1, ?) = ?)")
            arguments += [object, object.unicodeScalars.count + 1, object + "/"]
        }
        switch filter {
        case .all: break
        case .object(let object):
            conditions.append("object = ?")
            arguments += [object]
        case .objectPrefix(let text): prefix(text)
        case .model(let name): objectAndBelow("model/" + name)
        case .deployment(let name): objectAndBelow("deployment/" + name)
        }
        if let id {
            conditions.append("id > ?")
            arguments += [id]
        }
        if let since {
            conditions.append("CAST(at AS INTEGER) >= ?")
            arguments += [StoreTime.milliseconds(of: since)]
        }
        var sql = """
            SELECT id, CAST(at AS INTEGER) AS at, actor, host, commit_id, object, action, "before", "after", reason
            FROM audit_log
            """
        if !conditions.isEmpty { sql += " WHERE " + conditions.joined(separator: " AND ") }
        sql += " ORDER BY id DESC"
        if let limit {
            sql += " LIMIT ?"
            arguments += [max(limit, 0)]
        }
        return try Row.fetchAll(db, sql: sql, arguments: arguments).map { row in
            AuditEvent(at: StoreTime.date(row["at"]), actor: row["actor"], host: row["host"],
                       commit: row["commit_id"], object: row["object"], action: row["action"],
                       before: try (row["before"] as String?).map(StoreJSON.value),
                       after: try (row["after"] as String?).map(StoreJSON.value),
                       reason: row["reason"], id: row["id"])
        }
    }
}
