import CapstanCore
import Foundation
import GRDB

/// The operation journal (`journal`): every action is written down as `started` before it runs
/// and marked `finished` or `failed` after, so the rows still `started` are what a killed process
/// left half done, for the next pass to resume or roll back.
///
/// A row keeps the operation (`JournalOperation.rawValue`), the subject (`ObjectRef`'s text) and,
/// in `detail`, the `JournalRecord` as JSON (its one Codable encoding, in the core). How an entry
/// ended, when it did not simply finish (`JournalClosing`: interrupted, an error), is kept in the
/// same JSON object under the key `closing`. A detail that does not decode as a record (one an
/// older Capstan wrote) reads back as `record: nil`; an operation or subject that no Capstan
/// writes is refused with a `.foreignRecord` error that names the row.
///
/// Each call has a variant that takes a GRDB `Database`, to journal in the same transaction as
/// the action's own effects (a rolled-back transaction then leaves no journal row either).
/// Times are milliseconds since the Unix epoch, from `now`.
public struct Journal: Sendable {
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
    public func begin(_ record: JournalRecord, subject: ObjectRef) throws -> Int64 {
        try database.write("journal '\(record.operation.rawValue)' of '\(subject)'") { db in
            try begin(db, record, subject: subject)
        }
    }

    /// Replaces the record of an entry that is still `started` (a step's process group, once it
    /// is known).
    public func update(id: Int64, _ record: JournalRecord) throws {
        try database.write("update journal entry \(id)") { db in try update(db, id: id, record) }
    }

    /// Marks the entry `finished`; `record`, when given, replaces the stored one.
    public func finish(id: Int64, record: JournalRecord? = nil) throws {
        try database.write("mark journal entry \(id) finished") { db in try close(db, id: id, as: .finished, record: record) }
    }

    /// Marks the entry `failed`, with how it ended; `record`, when given, replaces the stored one.
    public func fail(id: Int64, _ closing: JournalClosing? = nil, record: JournalRecord? = nil) throws {
        try database.write("mark journal entry \(id) failed") { db in
            try close(db, id: id, as: .failed, closing: closing, record: record)
        }
    }

    /// The entries still `started`, oldest first: what a killed process left.
    public func unfinished() throws -> [JournalEntry] {
        try database.read("read the journal") { db in try unfinished(db) }
    }

    /// The entry `id`, or nil.
    public func entry(id: Int64) throws -> JournalEntry? {
        try database.read("read the journal") { db in try entry(db, id: id) }
    }

    // MARK: - In the caller's transaction

    public func begin(_ db: Database, _ record: JournalRecord, subject: ObjectRef) throws -> Int64 {
        try db.execute(sql: """
            INSERT INTO journal (operation, subject, state, started_at, detail) VALUES (?, ?, 'started', ?, ?)
            """, arguments: [record.operation.rawValue, subject.description, now(), try StoreJSON.text(record)])
        return db.lastInsertedRowID
    }

    public func update(_ db: Database, id: Int64, _ record: JournalRecord) throws {
        try db.execute(sql: "UPDATE journal SET detail = ? WHERE id = ? AND state = 'started'",
                       arguments: [try StoreJSON.text(record), id])
    }

    /// Closes a `started` entry as `state` (`finished` or `failed`). `record`, when given,
    /// replaces the stored one; `closing` is kept beside it. Throws when there is no such entry
    /// or it is already closed.
    public func close(_ db: Database, id: Int64, as state: JournalEntry.State, closing: JournalClosing? = nil,
                      record: JournalRecord? = nil) throws {
        guard state != .started else {
            throw StoreError(code: .databaseFailure,
                             message: "cannot close journal entry \(id) as 'started' in '\(database.path)': an entry is closed as finished or failed",
                             path: database.path)
        }
        var detail = record == nil ? "detail" : "?"
        var arguments: StatementArguments = [state.rawValue, now()]
        if let record { arguments += [try StoreJSON.text(record)] }
        if let closing {
            detail = "json_set(COALESCE(\(detail), '{}'), '$.closing', json(?))"
            arguments += [try StoreJSON.text(closing)]
        }
        try db.execute(sql: "UPDATE journal SET state = ?, finished_at = ?, detail = \(detail) WHERE id = ? AND state = 'started'",
                       arguments: arguments + [id])
        guard db.changesCount == 0 else { return }
        let reason = try Self.state(db, id: id).map { "it is already \($0)" } ?? "there is no such entry"
        throw StoreError(code: .databaseFailure,
                         message: "cannot mark journal entry \(id) \(state.rawValue) in '\(database.path)': \(reason)",
                         path: database.path)
    }

    public func unfinished(_ db: Database) throws -> [JournalEntry] {
        try fetchEntries(db, where: "state = 'started'", arguments: [])
    }

    public func entry(_ db: Database, id: Int64) throws -> JournalEntry? {
        try fetchEntries(db, where: "id = ?", arguments: [id]).first
    }

    /// How the entry `id` ended, when it was closed with a `JournalClosing`.
    public func closing(_ db: Database, id: Int64) throws -> JournalClosing? {
        let text = try String.fetchOne(db, sql: "SELECT json_extract(detail, '$.closing') FROM journal WHERE id = ? AND json_type(detail, '$.closing') = 'object'",
                                       arguments: [id])
        return try text.map { try StoreJSON.decode(JournalClosing.self, $0) }
    }

    static func state(_ db: Database, id: Int64) throws -> String? {
        try String.fetchOne(db, sql: "SELECT state FROM journal WHERE id = ?", arguments: [id])
    }

    func fetchEntries(_ db: Database, where condition: String, arguments: StatementArguments) throws -> [JournalEntry] {
        let path = database.path
        return try Row.fetchAll(db, sql: """
            SELECT id, operation, subject, state, CAST(started_at AS INTEGER) AS started_at,
                   CAST(finished_at AS INTEGER) AS finished_at, detail
            FROM journal WHERE \(condition) ORDER BY id
            """, arguments: arguments).map { row in
            let id: Int64 = row["id"]
            let operationText: String = row["operation"], subjectText: String = row["subject"], stateText: String = row["state"]
            guard let operation = JournalOperation(rawValue: operationText) else {
                throw Self.foreign(id, path: path, "the operation '\(operationText)', which is not a journal operation of Capstan's")
            }
            guard let subject = ObjectRef(subjectText) else {
                throw Self.foreign(id, path: path, "the subject '\(subjectText)', which is not an object reference (model/NAME, model/NAME/vN, model/NAME/alias/ALIAS, deployment/NAME)")
            }
            // An older Capstan's detail (or none) is no record of this one: recovery closes the
            // entry without acting on it.
            let record = (row["detail"] as String?).flatMap { try? StoreJSON.decode(JournalRecord.self, $0) }
            return JournalEntry(id: id, operation: operation, subject: subject, state: JournalEntry.State(rawValue: stateText) ?? .started,
                                startedAt: row["started_at"], finishedAt: row["finished_at"], record: record)
        }
    }

    static func foreign(_ id: Int64, path: String, _ what: String) -> StoreError {
        StoreError(code: .foreignRecord,
                   message: "journal entry \(id) in '\(path)' has \(what): no Capstan writes that, another program did. Correct or delete that row (sqlite3 '\(path)'), or restore the state folder from a backup",
                   path: path)
    }
}

/// JSON columns (`detail`, `before`, `after`, …): compact, with sorted keys.
enum StoreJSON {
    static func text<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    static func decode<T: Decodable>(_ type: T.Type, _ text: String) throws -> T {
        try JSONDecoder().decode(type, from: Data(text.utf8))
    }

    /// JSON text as a value.
    static func value(_ text: String) throws -> ParamValue {
        try decode(ParamValue.self, text)
    }
}
