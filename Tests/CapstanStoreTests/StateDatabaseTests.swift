@testable import CapstanStore
import CapstanCore
import Foundation
// GRDB comes with CapstanStore; tests use it for raw SQL against the same file.
import GRDB
import Testing

@Suite struct StateDatabaseTests {
    static let tables = ["alias_history", "aliases", "audit_log", "capstan_meta", "conditions", "drift_adoptions", "endpoints",
                         "external_versions", "input_hashes", "journal",
                         "lock_generations", "locks", "models", "passes", "quarantine", "registry_generation", "rollouts", "versions"]

    /// Checks everything the migrations (`v1`…`v6`) leave behind.
    func expectInitialized(_ database: StateDatabase) throws {
        try database.pool.read { db in
            let tables = try String.fetchAll(db, sql: """
                SELECT name FROM sqlite_master
                WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name != 'grdb_migrations' ORDER BY name
                """)
            #expect(tables == Self.tables)
            #expect(try Int32.fetchOne(db, sql: "PRAGMA application_id") == 0x4341_5053)
            #expect(try Int.fetchOne(db, sql: "PRAGMA user_version") == 6)
            #expect(try String.fetchOne(db, sql: "SELECT value FROM capstan_meta WHERE key = 'application'") == "capstan")
            #expect(try String.fetchOne(db, sql: "SELECT value FROM capstan_meta WHERE key = 'schema_version'") == "6")
            #expect(try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations") == ["v1", "v2", "v3", "v4", "v5", "v6"])
        }
    }

    @Test func createsTheDatabaseAndItsFolderFromAFreshPath() throws {
        let temp = try TemporaryDirectory()
        let stateDir = temp.path + "/not/yet/there"
        let database = try StateDatabase(stateDirectory: stateDir)
        #expect(database.path == stateDir + "/capstan.db")
        #expect(FileManager.default.fileExists(atPath: database.path))
        try expectInitialized(database)
    }

    @Test func initializesAnEmptyFile() throws {
        let temp = try TemporaryDirectory()
        try temp.write("capstan.db", Data())
        let database = try StateDatabase(stateDirectory: temp.path)
        try expectInitialized(database)
    }

    @Test func reopeningKeepsDataAndDoesNotMigrateAgain() throws {
        let temp = try TemporaryDirectory()
        do {
            let database = try StateDatabase(stateDirectory: temp.path)
            try database.pool.write { db in
                try insertModel(db, "churn")
            }
            try database.close()
        }
        let reopened = try StateDatabase(stateDirectory: temp.path)
        try expectInitialized(reopened)
        let names = try reopened.pool.read { db in try String.fetchAll(db, sql: "SELECT name FROM models") }
        #expect(names == ["churn"])
    }

    /// A database exactly as release `schema` left it, with a model, a version and an alias, and
    /// (from v2) a condition and a journal entry as that release wrote them.
    static func writeOldDatabase(at path: String, schema: String) throws {
        let queue = try DatabaseQueue(path: path)
        try StateDatabase.migrator.migrate(queue, upTo: schema)
        try queue.write { db in
            try db.execute(sql: "INSERT INTO models (name, created_at, updated_at) VALUES ('churn', 4, 4)")
            try db.execute(sql: """
                INSERT INTO versions (model, number, status, fingerprint, created_at) VALUES ('churn', 1, 'validated', 'f1', 5)
                """)
            try db.execute(sql: "INSERT INTO aliases (model, alias, version, updated_at) VALUES ('churn', 'champion', 1, 6)")
            try db.execute(sql: """
                INSERT INTO journal (operation, subject, state, started_at, detail)
                VALUES ('train', 'model/churn', 'started', 7, '{"fingerprint":"f1","attempt":1,"run":"r1","commit":"c"}')
                """)
            if schema != "v1" {
                try db.execute(sql: """
                    INSERT INTO conditions (object, type, reason, message, commit_id, updated_at)
                    VALUES ('model/churn', 'Degraded', 'TrainingFailed', 'v2 failed', 'c1', 8)
                    """)
            }
            #expect(try Int.fetchOne(db, sql: "PRAGMA user_version") == Int(schema.dropFirst()))
        }
        try queue.close()
    }

    /// A database left at each earlier schema, with data in it, is upgraded in place, its data
    /// kept and the new columns at their defaults.
    @Test(arguments: StateDatabase.knownMigrations.dropLast())
    func upgradesADatabaseFromEveryEarlierSchema(_ schema: String) async throws {
        let temp = try TemporaryDirectory()
        let path = temp.path + "/capstan.db"
        try Self.writeOldDatabase(at: path, schema: schema)
        let database = try StateDatabase(stateDirectory: temp.path)
        try expectInitialized(database)
        let registry = EmbeddedRegistry(database: database)
        let version = try #require(try await registry.version(of: "churn", number: 1))
        #expect(version.status == .validated)
        #expect(version.attempts == 1)
        #expect(version.failedAt == nil)
        #expect(version.archivedAt == nil)
        #expect(version.training == nil)
        #expect(try await registry.resolveAlias("champion", of: "churn") == 1)
        // The upgraded database takes the new columns.
        try await registry.updateVersion(model: "churn", number: 1, VersionUpdate(archivedAt: 99))
        #expect(try await registry.version(of: "churn", number: 1)?.archivedAt == 99)

        let store = SQLiteStateStore(database: database)
        // The old journal entry reads back, without a record of this Capstan's.
        let entries = try await store.unfinishedJournal()
        #expect(entries.map(\.subject) == [.model("churn")])
        #expect(entries.map(\.operation) == [.train])
        #expect(entries.first?.record == nil)
        // The old condition reads back with no failure class; a new one keeps its class.
        if schema != "v1" {
            #expect(try await store.conditions() == [ObjectCondition(object: .model("churn"), type: .degraded, reason: "TrainingFailed",
                                                                     message: "v2 failed", commit: "c1", updatedAt: 8)])
        }
        let waiting = ObjectCondition(object: .model("churn"), type: .degraded, reason: "TrainingFailed", message: "backoff",
                                      commit: "c2", updatedAt: 9, failureClass: .waiting(until: 60_000))
        var changes = StateChanges("record conditions")
        changes.setConditions([waiting], pruning: [.model])
        try await store.commit(changes)
        #expect(try await store.conditions() == [waiting])
        // The registry counts its changes from there: the old rows are at generation 0.
        let before = try await registry.snapshot(refreshing: nil)
        #expect(before.snapshot.versions["churn"]?.map(\.archivedAt) == [99])
        try await registry.updateVersion(model: "churn", number: 1, VersionUpdate(tags: ["k": "v"]))
        let after = try await registry.snapshot(refreshing: before)
        #expect((after.generation ?? 0) > (before.generation ?? 0))
        #expect(after.snapshot.versions["churn"]?.map(\.tags) == [["k": "v"]])
    }

    @Test func usesWALModeAndABusyTimeout() throws {
        let temp = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: temp.path)
        let (journalMode, busyTimeout) = try database.pool.write { db in
            (try String.fetchOne(db, sql: "PRAGMA journal_mode"), try Int.fetchOne(db, sql: "PRAGMA busy_timeout"))
        }
        #expect(journalMode == "wal")
        #expect(busyTimeout == 5000)
    }

    @Test func enforcesForeignKeys() throws {
        let temp = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: temp.path)
        let error = #expect(throws: DatabaseError.self) {
            try database.pool.write { db in
                try insertVersion(db, model: "no-such-model", number: 1, fingerprint: "f1")
            }
        }
        #expect(error?.extendedResultCode == .SQLITE_CONSTRAINT_FOREIGNKEY)
        // An alias must point at an existing version.
        let aliasError = #expect(throws: DatabaseError.self) {
            try database.pool.write { db in
                try insertModel(db, "churn")
                try db.execute(sql: "INSERT INTO aliases (model, alias, version, updated_at) VALUES ('churn', 'production', 7, 'now')")
            }
        }
        #expect(aliasError?.extendedResultCode == .SQLITE_CONSTRAINT_FOREIGNKEY)
    }

    @Test func rejectsAnUnknownVersionStatus() throws {
        let temp = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: temp.path)
        try database.pool.write { db in try insertModel(db, "churn") }
        let error = #expect(throws: DatabaseError.self) {
            try database.pool.write { db in
                try insertVersion(db, model: "churn", number: 1, fingerprint: "f1", status: "deployed")
            }
        }
        #expect(error?.extendedResultCode == .SQLITE_CONSTRAINT_CHECK)
        // Each allowed status is accepted.
        try database.pool.write { db in
            for (number, status) in ["training", "trained", "validated", "rejected", "failed"].enumerated() {
                try insertVersion(db, model: "churn", number: number + 1, fingerprint: "f\(number)", status: status)
            }
        }
    }

    @Test func rejectsTheSameFingerprintTwiceForOneModel() throws {
        let temp = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: temp.path)
        try database.pool.write { db in
            try insertModel(db, "churn")
            try insertModel(db, "fraud")
            try insertVersion(db, model: "churn", number: 1, fingerprint: "abc")
            // Another model may have the same fingerprint.
            try insertVersion(db, model: "fraud", number: 1, fingerprint: "abc")
        }
        let error = #expect(throws: DatabaseError.self) {
            try database.pool.write { db in
                try insertVersion(db, model: "churn", number: 2, fingerprint: "abc")
            }
        }
        #expect(error?.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE)
    }

    // MARK: - Refusals (the file is never changed)

    enum NewerKind: String, CaseIterable, CustomTestStringConvertible {
        case unknownMigration, higherUserVersion, higherMetaVersion
        var testDescription: String { rawValue }
    }

    @Test(arguments: NewerKind.allCases)
    func refusesADatabaseFromANewerCapstanAndLeavesItUnchanged(_ kind: NewerKind) throws {
        let temp = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: temp.path)
        try database.pool.write { db in
            try insertModel(db, "churn")
            switch kind {
            case .unknownMigration: try db.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v7')")
            case .higherUserVersion: try db.execute(sql: "PRAGMA user_version = 7")
            case .higherMetaVersion: try db.execute(sql: "UPDATE capstan_meta SET value = '7' WHERE key = 'schema_version'")
            }
        }
        try database.close()
        let before = try fileBytes(database.path)

        let error = #expect(throws: StoreError.self) { try StateDatabase(stateDirectory: temp.path) }
        #expect(error?.code == .newerDatabase)
        #expect(error?.message.contains("database schema version 7") == true)
        #expect(error?.message.contains("supports schema version 6") == true)
        #expect(error?.message.contains(database.path) == true)
        if kind == .unknownMigration {
            #expect(error?.message.contains("migrations unknown to this build: v7") == true)
        }
        #expect(try fileBytes(database.path) == before)
    }

    @Test func refusesAFileOfRandomBytesAndLeavesItUnchanged() throws {
        let temp = try TemporaryDirectory()
        let path = try temp.write("capstan.db", garbage(count: 8192))
        let error = #expect(throws: StoreError.self) { try StateDatabase(stateDirectory: temp.path) }
        #expect(error?.code == .damagedDatabase)
        #expect(error?.message.contains("'\(path)' is damaged") == true)
        #expect(error?.message.contains("Restore it from a backup, or move it aside") == true)
        #expect(try fileBytes(path) == garbage(count: 8192))
    }

    @Test func refusesADatabaseWithAnOverwrittenPageAndLeavesItUnchanged() throws {
        let temp = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: temp.path)
        try database.pool.write { db in
            for i in 0..<300 {
                try db.execute(sql: """
                    INSERT INTO audit_log (at, actor, host, object, action, reason) VALUES ('now', 'test', 'host', ?, 'create', ?)
                    """, arguments: ["model/m\(i)", String(repeating: "r", count: 200)])
            }
        }
        try database.close()
        var bytes = try fileBytes(database.path)
        let pageSize = Int(bytes[16]) << 8 | Int(bytes[17])
        let pages = bytes.count / pageSize
        #expect(pages > 10)
        // A page in the middle of the audit log's rows (the last pages written).
        let page = pages - 3
        bytes.replaceSubrange(page * pageSize..<(page + 1) * pageSize, with: garbage(count: pageSize))
        try bytes.write(to: URL(fileURLWithPath: database.path))

        let error = #expect(throws: StoreError.self) { try StateDatabase(stateDirectory: temp.path) }
        #expect(error?.code == .damagedDatabase)
        #expect(error?.message.contains("is damaged") == true)
        #expect(try fileBytes(database.path) == bytes)
    }

    @Test(arguments: [Int32(0), 0x1234_5678])
    func refusesAnotherApplicationsDatabaseAndLeavesItUnchanged(applicationID: Int32) throws {
        let temp = try TemporaryDirectory()
        let path = temp.path + "/capstan.db"
        do {
            let other = try DatabaseQueue(path: path)
            try other.write { db in
                try db.execute(sql: "PRAGMA application_id = \(applicationID)")
                try db.execute(sql: "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
                try db.execute(sql: "INSERT INTO customers (name) VALUES ('Ada')")
            }
            try other.close()
        }
        let before = try fileBytes(path)
        let error = #expect(throws: StoreError.self) { try StateDatabase(stateDirectory: temp.path) }
        #expect(error?.code == .foreignDatabase)
        #expect(error?.message.contains("'\(path)' is a SQLite database of another application") == true)
        #expect(try fileBytes(path) == before)
    }

    // MARK: - Crash safety

    /// A second process (python3's sqlite3) commits one row, then starts a transaction large
    /// enough to spill uncommitted pages into the WAL, and is killed with SIGKILL inside it.
    @Test func aProcessKilledInsideAWriteTransactionLeavesAConsistentDatabase() throws {
        let temp = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: temp.path)
        try database.pool.write { db in try insertModel(db, "before-crash") }
        try database.close()

        let script = """
            import sqlite3, sys, time
            con = sqlite3.connect(sys.argv[1], isolation_level=None)
            con.execute("PRAGMA cache_size = 2")
            con.execute("INSERT INTO models (name, created_at, updated_at) VALUES ('committed-by-child', 'now', 'now')")
            con.execute("BEGIN IMMEDIATE")
            for i in range(2000):
                con.execute("INSERT INTO models (name, description, created_at, updated_at) VALUES (?, ?, 'now', 'now')",
                            ("uncommitted-%d" % i, "x" * 500))
            print("ready", flush=True)
            time.sleep(600)
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, database.path]
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }

        var seen = Data()
        while !String(decoding: seen, as: UTF8.self).contains("ready\n") {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty {
                process.waitUntilExit()
                let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                Issue.record("python3 ended before 'ready': \(stderr)")
                return
            }
            seen.append(chunk)
        }
        // The uncommitted rows really reached the disk (the WAL), so recovery has work to do.
        let walSize = (try FileManager.default.attributesOfItem(atPath: database.path + "-wal")[.size] as? NSNumber)?.intValue ?? 0
        #expect(walSize > 100_000)

        #expect(kill(process.processIdentifier, SIGKILL) == 0)
        process.waitUntilExit()
        #expect(process.terminationReason == .uncaughtSignal)
        #expect(process.terminationStatus == SIGKILL)

        let reopened = try StateDatabase(stateDirectory: temp.path)
        let (check, names) = try reopened.pool.write { db in
            // The writer lock died with the process.
            try insertModel(db, "after-crash")
            return (try String.fetchAll(db, sql: "PRAGMA quick_check"),
                    try String.fetchAll(db, sql: "SELECT name FROM models ORDER BY name"))
        }
        #expect(check == ["ok"])
        #expect(names == ["after-crash", "before-crash", "committed-by-child"])
    }
}

func insertModel(_ db: Database, _ name: String) throws {
    try db.execute(sql: "INSERT INTO models (name, created_at, updated_at) VALUES (?, 'now', 'now')", arguments: [name])
}

func insertVersion(_ db: Database, model: String, number: Int, fingerprint: String, status: String = "trained") throws {
    try db.execute(sql: """
        INSERT INTO versions (model, number, status, fingerprint, created_at) VALUES (?, ?, ?, ?, 'now')
        """, arguments: [model, number, status, fingerprint])
}
