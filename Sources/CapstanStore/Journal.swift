import CapstanCore
import Foundation
import GRDB

/// The operation journal: every action is written down as `started` before it runs and marked
/// `finished` or `failed` after, so the rows still `started` are what a killed process left half
/// done, for the next pass to resume or roll back.
///
/// Each call has a variant that takes a GRDB `Database`, to journal in the same transaction as
/// the action's own effects (a rolled-back transaction then leaves no journal row either).
/// Times are milliseconds since the Unix epoch, from `now`.
public struct Journal: Sendable {
    public enum State: String, Hashable, Sendable, Codable {
        case started, finished, failed
    }

    /// One journal row.
    public struct Entry: Hashable, Sendable, Codable {
        public var id: Int64
        public var operation: String
        public var subject: String
        public var state: State
        public var startedAtMilliseconds: Int64
        public var finishedAtMilliseconds: Int64?
        /// Whatever the operation needs to resume or roll back, as JSON.
        public var detail: ParamValue?

        public var startedAt: Date { StoreTime.date(startedAtMilliseconds) }
        public var finishedAt: Date? { finishedAtMilliseconds.map(StoreTime.date) }
    }

    public let database: StateDatabase
    let now: @Sendable () -> Int64

    /// - Parameters:
    ///   - now: the current time in milliseconds since the Unix epoch.
    public init(database: StateDatabase, now: @escaping @Sendable () -> Int64 = StoreTime.systemMilliseconds) {
        self.database = database
        self.now = now
    }

    // MARK: - In its own transaction

    /// Writes a `started` row and returns its id.
    public func begin(operation: String, subject: String, detail: ParamValue? = nil) throws -> Int64 {
        try write("journal '\(operation)' of '\(subject)'") { db in
            try begin(db, operation: operation, subject: subject, detail: detail)
        }
    }

    /// Marks the operation `finished`; `detail`, when given, replaces the stored one.
    public func finish(id: Int64, detail: ParamValue? = nil) throws {
        try write("mark journal entry \(id) finished") { db in try finish(db, id: id, detail: detail) }
    }

    /// Marks the operation `failed`; `detail`, when given, replaces the stored one.
    public func fail(id: Int64, detail: ParamValue? = nil) throws {
        try write("mark journal entry \(id) failed") { db in try fail(db, id: id, detail: detail) }
    }

    /// Replaces the detail of an operation that is still `started` (a step's process group, once
    /// it is known).
    public func update(id: Int64, detail: ParamValue) throws {
        try write("update journal entry \(id)") { db in
            try db.execute(sql: "UPDATE journal SET detail = ? WHERE id = ? AND state = 'started'",
                           arguments: [try StoreJSON.text(detail), id])
        }
    }

    /// The operations still `started`, oldest first: what a killed process left.
    public func unfinished() throws -> [Entry] {
        try read("read the journal") { db in try unfinished(db) }
    }

    /// The entry `id`, or nil.
    public func entry(id: Int64) throws -> Entry? {
        try read("read the journal") { db in try entry(db, id: id) }
    }

    // MARK: - In the caller's transaction

    public func begin(_ db: Database, operation: String, subject: String, detail: ParamValue? = nil) throws -> Int64 {
        try db.execute(sql: """
            INSERT INTO journal (operation, subject, state, started_at, detail) VALUES (?, ?, 'started', ?, ?)
            """, arguments: [operation, subject, now(), try detail.map(StoreJSON.text)])
        return db.lastInsertedRowID
    }

    public func update(_ db: Database, id: Int64, detail: ParamValue) throws {
        try db.execute(sql: "UPDATE journal SET detail = ? WHERE id = ? AND state = 'started'",
                       arguments: [try StoreJSON.text(detail), id])
    }

    public func finish(_ db: Database, id: Int64, detail: ParamValue? = nil) throws {
        try end(db, id: id, as: .finished, detail: detail)
    }

    public func fail(_ db: Database, id: Int64, detail: ParamValue? = nil) throws {
        try end(db, id: id, as: .failed, detail: detail)
    }

    public func unfinished(_ db: Database) throws -> [Entry] {
        try Self.fetchEntries(db, where: "state = 'started'", arguments: [])
    }

    public func entry(_ db: Database, id: Int64) throws -> Entry? {
        try Self.fetchEntries(db, where: "id = ?", arguments: [id]).first
    }

    /// Closes a `started` entry. Throws when there is no such entry or it is already closed.
    func end(_ db: Database, id: Int64, as state: State, detail: ParamValue?) throws {
        try db.execute(sql: """
            UPDATE journal SET state = ?, finished_at = ?, detail = COALESCE(?, detail)
            WHERE id = ? AND state = 'started'
            """, arguments: [state.rawValue, now(), try detail.map(StoreJSON.text), id])
        guard db.changesCount == 0 else { return }
        let reason = try entry(db, id: id).map { "it is already \($0.state.rawValue)" } ?? "there is no such entry"
        throw StoreError(code: .databaseFailure,
                         message: "cannot mark journal entry \(id) \(state.rawValue) in '\(database.path)': \(reason)",
                         path: database.path)
    }

    static func fetchEntries(_ db: Database, where condition: String, arguments: StatementArguments) throws -> [Entry] {
        try Row.fetchAll(db, sql: """
            SELECT id, operation, subject, state, CAST(started_at AS INTEGER) AS started_at,
                   CAST(finished_at AS INTEGER) AS finished_at, detail
            FROM journal WHERE \(condition) ORDER BY id
            """, arguments: arguments).map { row in
            let stateText: String = row["state"]
            return Entry(id: row["id"], operation: row["operation"], subject: row["subject"],
                         state: State(rawValue: stateText) ?? .started,
                         startedAtMilliseconds: row["started_at"], finishedAtMilliseconds: row["finished_at"],
                         detail: try (row["detail"] as String?).map(StoreJSON.value))
        }
    }

    func write<T: Sendable>(_ what: String, _ body: (Database) throws -> T) throws -> T {
        try database.write(what, body)
    }

    func read<T: Sendable>(_ what: String, _ body: (Database) throws -> T) throws -> T {
        try database.read(what, body)
    }
}

/// JSON columns (`detail`, `before`, `after`) as `ParamValue`s.
enum StoreJSON {
    /// `value` as compact JSON text with sorted keys.
    static func text(_ value: ParamValue) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    /// JSON text as a value.
    static func value(_ text: String) throws -> ParamValue {
        try JSONDecoder().decode(ParamValue.self, from: Data(text.utf8))
    }
}
