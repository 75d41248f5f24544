import CapstanCore
import Foundation
import GRDB
import Synchronization

/// Capstan's state database, `<stateDir>/capstan.db`: the embedded model registry (models,
/// versions, aliases), the alias history, the audit log, the operation journal and locks.
///
/// One SQLite file in WAL mode, opened as a `DatabasePool` (one writer, concurrent readers),
/// foreign keys on, a 5 s busy timeout so that two Capstan processes wait for each other rather
/// than fail. The schema is created and upgraded by `StateDatabase.migrator`.
///
/// Before anything writes to an existing file it is inspected read-only, and refused, untouched,
/// when it is not a SQLite database or is damaged, when a newer Capstan wrote it, or when it is
/// another application's database. Capstan never resets or "repairs" a state database.
///
/// The state folder is created 0700 and the database 0600 (SQLite gives its `-wal` and `-shm`
/// files the same mode). Two processes opening a fresh folder at once take turns (a `flock` on
/// the folder while the file is inspected, created and migrated).
///
/// **Writes.** Every write of Capstan's goes through `write(_:_:)`, in one transaction. A
/// database `fenced(by:)` a lease checks, inside each write transaction, that the lease is still
/// the one the pass took (same holder, same generation); when it is not, nothing is written and
/// the write throws `StoreError` `.leaseLost`. A reconcile pass writes only through a fenced
/// database, so a pass whose lease was removed or taken over cannot change the state any more.
public final class StateDatabase: Sendable {
    public static let fileName = "capstan.db"
    /// `PRAGMA application_id`, the ASCII bytes 'CAPS'.
    public static let applicationID: Int32 = 0x4341_5053
    /// The schema version this build creates and understands: the number of the last migration.
    public static let schemaVersion = 6
    /// Names of the migrations this build knows, in order (`v1`, `v2`…).
    public static let knownMigrations: [String] = (1...schemaVersion).map { "v\($0)" }

    /// The database file.
    public let path: String
    /// The connection pool. Read through it freely; write through `write(_:_:)`, which checks the
    /// fence.
    public let pool: DatabasePool
    /// What people should know about the state folder (it is readable by other users), for the
    /// caller to report.
    public let warnings: [String]
    /// The lease every write must still hold, when this database belongs to a reconcile pass.
    public let fence: Fence?
    private let fenceWatch: FenceWatch?

    /// The folder that holds the database.
    public var folder: String { (path as NSString).deletingLastPathComponent }

    /// Opens `<stateDirectory>/capstan.db`, creating the folder and the file when missing, and
    /// migrates it to `schemaVersion`. Throws `StoreError` (and leaves the file as it was) when
    /// the file cannot be used; a failure of the file system (full, read-only, not writable) says
    /// so, with the system's reason and what to do.
    public init(stateDirectory given: String) throws {
        // Absolute, so that messages name the folder whatever the working directory.
        let stateDirectory = URL(fileURLWithPath: given).standardizedFileURL.path
        let warnings = try StateFolder.prepare(stateDirectory)
        let path = URL(fileURLWithPath: stateDirectory).appendingPathComponent(Self.fileName).path
        self.path = path
        self.warnings = warnings
        self.fence = nil
        self.fenceWatch = nil

        var configuration = Configuration()
        configuration.foreignKeysEnabled = true
        configuration.busyMode = .timeout(5)
        configuration.label = "capstan.state"
        self.pool = try StateFolder.exclusively(stateDirectory) {
            try Self.inspect(path: path)
            try StateFolder.createPrivateFile(path, what: "create the state database")
            // `DatabasePool` puts the file in WAL mode (a no-op when it already is).
            let pool: DatabasePool
            do {
                pool = try DatabasePool(path: path, configuration: configuration)
            } catch {
                throw FileSystemFailure.describe(error, what: "open the state database", path: path, folder: stateDirectory,
                                                 otherwise: .databaseFailure)
            }
            do {
                try Self.migrator.migrate(pool)
            } catch {
                try? pool.close()
                throw FileSystemFailure.describe(error, what: "upgrade the state database", path: path, folder: stateDirectory,
                                                 otherwise: .databaseFailure)
            }
            return pool
        }
    }

    private init(path: String, pool: DatabasePool, warnings: [String], fence: Fence?, fenceWatch: FenceWatch?) {
        self.path = path
        self.pool = pool
        self.warnings = warnings
        self.fence = fence
        self.fenceWatch = fenceWatch
    }

    /// The same database (the same connections), every write of which first checks that
    /// `fence`'s lease is still held. `onLost` is called once, with the error, the first time a
    /// write finds the lease lost (the caller stops its pass there).
    public func fenced(by fence: Fence, onLost: @escaping @Sendable (any Error) -> Void = { _ in }) -> StateDatabase {
        StateDatabase(path: path, pool: pool, warnings: warnings, fence: fence, fenceWatch: FenceWatch(onLost: onLost))
    }

    /// The same database without a fence (the lock itself, and commands outside a pass, write
    /// through it).
    public var unfenced: StateDatabase {
        fence == nil ? self : StateDatabase(path: path, pool: pool, warnings: warnings, fence: nil, fenceWatch: nil)
    }

    /// Runs `body` in a write transaction, after checking the fence (when there is one) in the
    /// same transaction. A SQLite failure becomes a `StoreError` saying what was being done and
    /// why (a full disk…); errors thrown by `body` itself pass through unchanged.
    public func write<T>(_ what: String, _ body: (Database) throws -> T) throws -> T {
        do {
            return try pool.write { db in
                try checkFence(db)
                return try body(db)
            }
        } catch {
            throw writeFailure(what, error)
        }
    }

    /// `write(_:_:)` from async code.
    public func write<T: Sendable>(_ what: String, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do {
            return try await pool.write { db in
                try self.checkFence(db)
                return try body(db)
            }
        } catch {
            throw writeFailure(what, error)
        }
    }

    /// Runs `body` in a read transaction; a SQLite failure becomes a `StoreError` saying what was
    /// being done.
    public func read<T>(_ what: String, _ body: (Database) throws -> T) throws -> T {
        do { return try pool.read(body) } catch let error as DatabaseError { throw failure(what, error) }
    }

    /// `read(_:_:)` from async code.
    public func read<T: Sendable>(_ what: String, _ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        do { return try await pool.read(body) } catch let error as DatabaseError { throw failure(what, error) }
    }

    /// Throws `.leaseLost` when this database is fenced and its lease is no longer held. For a
    /// pass about to act outside the database (the serving layer), so that a pass that lost its
    /// lease does not change that either.
    public func checkLease() throws {
        guard fence != nil else { return }
        do {
            try pool.read { db in try checkFence(db) }
        } catch {
            throw writeFailure("check the lease", error)
        }
    }

    /// Checks the fence inside the caller's transaction.
    func checkFence(_ db: Database) throws {
        guard let fence else { return }
        let current = try StateLock.fetchLeases(db, where: "name = ?", arguments: [fence.lock]).first
        guard let current, current.holder == fence.holder, current.generation == fence.generation else {
            let error = StateLock.lostError(fence, current: current, folder: folder, path: path)
            fenceWatch?.report(error)
            throw error
        }
    }

    func writeFailure(_ what: String, _ error: any Error) -> any Error {
        if error is DatabaseError { return failure(what, error) }
        return error
    }

    /// Closes every connection (of every fenced copy too). The pool cannot be used afterwards.
    public func close() throws {
        try pool.close()
    }

    // MARK: - Inspection (read-only)

    /// What `inspect` found in an existing file.
    struct Inspection {
        var applicationID: Int32
        var tableCount: Int
        var userVersion: Int
        var metaSchemaVersion: Int?
        var appliedMigrations: [String]
    }

    /// Checks an existing file without writing to it. A missing or empty file passes (it is
    /// created or initialized by the migrator).
    static func inspect(path: String) throws {
        let fm = FileManager.default
        guard fm.fileExists(atPath: path) else { return }
        let size = (try? fm.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? 0
        if size == 0 { return }

        // The 16-byte SQLite header, read directly: SQLite itself may accept odd files lazily.
        let header = FileHandle(forReadingAtPath: path).flatMap { handle in
            defer { try? handle.close() }
            return try? handle.read(upToCount: 16)
        } ?? Data()
        guard header == Data("SQLite format 3\0".utf8) else {
            throw damaged(path, detail: "it is not a SQLite database")
        }

        let found: Inspection
        do {
            var configuration = Configuration()
            configuration.readonly = true
            configuration.busyMode = .timeout(5)
            configuration.label = "capstan.state.inspect"
            let queue = try DatabaseQueue(path: path, configuration: configuration)
            defer { try? queue.close() }
            found = try queue.read { db in
                let check = try String.fetchAll(db, sql: "PRAGMA quick_check")
                if check != ["ok"] {
                    throw damaged(path, detail: "SQLite's integrity check reports: \(check.prefix(3).joined(separator: "; "))")
                }
                let applicationID = try Int32.fetchOne(db, sql: "PRAGMA application_id") ?? 0
                let tables = try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table'")
                let userVersion = try Int.fetchOne(db, sql: "PRAGMA user_version") ?? 0
                var metaVersion: Int?
                if tables.contains("capstan_meta") {
                    metaVersion = try String.fetchOne(db, sql: "SELECT value FROM capstan_meta WHERE key = 'schema_version'")
                        .flatMap { Int($0) }
                }
                var applied: [String] = []
                if tables.contains("grdb_migrations") {
                    applied = try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations")
                }
                return Inspection(applicationID: applicationID, tableCount: tables.count, userVersion: userVersion,
                                  metaSchemaVersion: metaVersion, appliedMigrations: applied)
            }
        } catch let error as StoreError {
            throw error
        } catch let error as DatabaseError where [.SQLITE_CORRUPT, .SQLITE_NOTADB].contains(error.resultCode) {
            throw damaged(path, detail: "SQLite reports it malformed", underlying: error)
        } catch {
            throw FileSystemFailure.describe(error, what: "read the state database", path: path,
                                             folder: (path as NSString).deletingLastPathComponent, otherwise: .databaseFailure)
        }

        if found.applicationID != applicationID {
            // An empty database (no tables) is ours to initialize, whatever created it.
            guard found.tableCount == 0 else {
                throw StoreError(
                    code: .foreignDatabase,
                    message: "'\(path)' is a SQLite database of another application (application_id \(hex(found.applicationID)), \(found.tableCount) tables), not Capstan's state database; Capstan left it unchanged. Point --state-dir at another folder or move the file aside",
                    path: path)
            }
            return
        }

        let unknown = found.appliedMigrations.filter { !knownMigrations.contains($0) }
        let migrationVersions = found.appliedMigrations.compactMap { name in
            name.first == "v" ? Int(name.dropFirst()) : nil
        }
        let databaseVersion = ([found.userVersion, found.metaSchemaVersion ?? 0] + migrationVersions).max() ?? 0
        if databaseVersion > schemaVersion || !unknown.isEmpty {
            let names = unknown.isEmpty ? "" : "; migrations unknown to this build: \(unknown.sorted().joined(separator: ", "))"
            throw StoreError(
                code: .newerDatabase,
                message: "'\(path)' was written by a newer Capstan (database schema version \(databaseVersion)\(names)); this Capstan supports schema version \(schemaVersion). Capstan left it unchanged: upgrade Capstan to use this state folder",
                path: path)
        }
    }

    static func damaged(_ path: String, detail: String, underlying: (any Error)? = nil) -> StoreError {
        StoreError(code: .damagedDatabase,
                   message: "the state database '\(path)' is damaged (\(detail)); Capstan left it unchanged. Restore it from a backup, or move it aside to start with an empty state",
                   path: path, underlying: underlying)
    }

    static func hex(_ value: Int32) -> String {
        "0x" + String(UInt32(bitPattern: value), radix: 16, uppercase: true)
    }

    // MARK: - Schema

    /// The schema's history. A migration is named `vN` and sets the schema version to N.
    ///
    /// Released migrations NEVER change: a database records which ones it has applied and will
    /// not run them again, so an edit would only reach new databases. Change the schema by
    /// appending `v2`, `v3`… and raising `schemaVersion`.
    public static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                -- Times (*_at, at) are milliseconds since the Unix epoch.
                CREATE TABLE capstan_meta (
                    key   TEXT PRIMARY KEY NOT NULL,
                    value TEXT NOT NULL
                );

                CREATE TABLE models (
                    name        TEXT PRIMARY KEY NOT NULL,
                    description TEXT NOT NULL DEFAULT '',
                    labels      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(labels)),
                    created_at  INTEGER NOT NULL,
                    updated_at  INTEGER NOT NULL
                );

                CREATE TABLE versions (
                    model           TEXT NOT NULL REFERENCES models(name),
                    number          INTEGER NOT NULL CHECK (number >= 1),
                    status          TEXT NOT NULL
                                    CHECK (status IN ('training', 'trained', 'validated', 'rejected', 'failed')),
                    fingerprint     TEXT NOT NULL,
                    commit_id       TEXT,
                    params          TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(params)),
                    metrics         TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metrics)),
                    artifact_digest TEXT,
                    artifact_path   TEXT,
                    gate_results    TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(gate_results)),
                    log_tail        TEXT,
                    created_at      INTEGER NOT NULL,
                    tags            TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(tags)),
                    PRIMARY KEY (model, number),
                    UNIQUE (model, fingerprint)
                );

                CREATE TABLE aliases (
                    model      TEXT NOT NULL REFERENCES models(name),
                    alias      TEXT NOT NULL,
                    version    INTEGER NOT NULL,
                    updated_at INTEGER NOT NULL,
                    PRIMARY KEY (model, alias),
                    FOREIGN KEY (model, version) REFERENCES versions(model, number)
                );

                -- History outlives what it mentions: no foreign keys.
                CREATE TABLE alias_history (
                    id           INTEGER PRIMARY KEY AUTOINCREMENT,
                    model        TEXT NOT NULL,
                    alias        TEXT NOT NULL,
                    from_version INTEGER,
                    to_version   INTEGER,
                    at           INTEGER NOT NULL,
                    commit_id    TEXT,
                    reason       TEXT NOT NULL DEFAULT ''
                );
                CREATE INDEX alias_history_by_alias ON alias_history(model, alias, id);

                CREATE TABLE audit_log (
                    id        INTEGER PRIMARY KEY AUTOINCREMENT,
                    at        INTEGER NOT NULL,
                    actor     TEXT NOT NULL,
                    host      TEXT NOT NULL,
                    commit_id TEXT,
                    object    TEXT NOT NULL,
                    action    TEXT NOT NULL,
                    "before"  TEXT CHECK ("before" IS NULL OR json_valid("before")),
                    "after"   TEXT CHECK ("after" IS NULL OR json_valid("after")),
                    reason    TEXT NOT NULL DEFAULT ''
                );
                CREATE INDEX audit_log_by_object ON audit_log(object, id);

                CREATE TABLE journal (
                    id          INTEGER PRIMARY KEY AUTOINCREMENT,
                    operation   TEXT NOT NULL,
                    subject     TEXT NOT NULL,
                    state       TEXT NOT NULL CHECK (state IN ('started', 'finished', 'failed')),
                    started_at  INTEGER NOT NULL,
                    finished_at INTEGER,
                    detail      TEXT CHECK (detail IS NULL OR json_valid(detail))
                );
                CREATE INDEX journal_unfinished ON journal(state) WHERE state = 'started';

                CREATE TABLE locks (
                    name       TEXT PRIMARY KEY NOT NULL,
                    holder     TEXT NOT NULL,
                    host       TEXT NOT NULL,
                    pid        INTEGER NOT NULL,
                    command    TEXT NOT NULL,
                    started_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL
                );

                INSERT INTO capstan_meta (key, value) VALUES ('application', 'capstan');
                """)
            try db.execute(sql: "PRAGMA application_id = \(applicationID)")
            try setSchemaVersion(1, in: db)
        }
        // v2 (plan and apply): training attempts and failures for backoff, archiving beyond
        // retention, the canonical training description a fingerprint was computed from (so a
        // plan can say what changed), the content-hash cache of inputs outside the repository,
        // conditions per object and a record of every pass.
        migrator.registerMigration("v2") { db in
            try db.execute(sql: """
                ALTER TABLE versions ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1 CHECK (attempts >= 1);
                ALTER TABLE versions ADD COLUMN failed_at INTEGER;
                ALTER TABLE versions ADD COLUMN archived_at INTEGER;
                ALTER TABLE versions ADD COLUMN training TEXT CHECK (training IS NULL OR json_valid(training));
                CREATE INDEX versions_by_status ON versions(model, status, number);

                -- Content hashes of files under data roots, trusted while size, mtime and inode match.
                CREATE TABLE input_hashes (
                    path       TEXT PRIMARY KEY NOT NULL,
                    size       INTEGER NOT NULL,
                    mtime_ns   INTEGER NOT NULL,
                    inode      INTEGER NOT NULL,
                    digest     TEXT NOT NULL,
                    checked_at INTEGER NOT NULL
                );

                -- The last condition of each object ('model/churn'): Ready, Progressing, Stalled, Degraded.
                CREATE TABLE conditions (
                    object     TEXT PRIMARY KEY NOT NULL,
                    type       TEXT NOT NULL,
                    reason     TEXT NOT NULL,
                    message    TEXT NOT NULL DEFAULT '',
                    commit_id  TEXT,
                    updated_at INTEGER NOT NULL
                );

                -- One row per reconcile pass.
                CREATE TABLE passes (
                    id          INTEGER PRIMARY KEY AUTOINCREMENT,
                    command     TEXT NOT NULL,
                    commit_id   TEXT,
                    started_at  INTEGER NOT NULL,
                    finished_at INTEGER,
                    outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'converged', 'progressing', 'failed', 'interrupted')),
                    summary     TEXT NOT NULL DEFAULT ''
                );
                """)
            try setSchemaVersion(2, in: db)
        }
        // v3 (serving): rollouts in progress, quarantined versions per deployment, and what
        // Capstan last set on each endpoint (to tell drift from its own changes) and observed.
        migrator.registerMigration("v3") { db in
            try db.execute(sql: """
                CREATE TABLE rollouts (
                    deployment TEXT PRIMARY KEY NOT NULL,
                    state      TEXT NOT NULL CHECK (json_valid(state)),
                    updated_at INTEGER NOT NULL
                );

                CREATE TABLE quarantine (
                    deployment TEXT NOT NULL,
                    version    INTEGER NOT NULL,
                    spec_hash  TEXT NOT NULL,
                    reason     TEXT NOT NULL,
                    at         INTEGER NOT NULL,
                    PRIMARY KEY (deployment, version, spec_hash)
                );

                CREATE TABLE endpoints (
                    deployment TEXT PRIMARY KEY NOT NULL,
                    model      TEXT NOT NULL,
                    applied    TEXT CHECK (applied IS NULL OR json_valid(applied)),
                    observed   TEXT CHECK (observed IS NULL OR json_valid(observed)),
                    updated_at INTEGER NOT NULL
                );
                """)
            try setSchemaVersion(3, in: db)
        }
        // v4 (fencing): each lease carries a generation, bumped at every acquisition, that every
        // write of a pass checks; and the start time of the holder's process, so that a pid the
        // kernel recycled is not taken for the holder. The counter lives apart from the lease
        // rows, which are deleted on release: a generation is never given out twice.
        migrator.registerMigration("v4") { db in
            try db.execute(sql: """
                ALTER TABLE locks ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
                -- /proc/<pid>/stat field 22 of the holder (clock ticks after boot); NULL when unknown.
                ALTER TABLE locks ADD COLUMN process_start INTEGER;

                CREATE TABLE lock_generations (
                    name       TEXT PRIMARY KEY NOT NULL,
                    generation INTEGER NOT NULL CHECK (generation >= 0)
                );
                """)
            try setSchemaVersion(4, in: db)
        }
        // v5 (one reconcile engine over ports): a condition carries its failure class (what the
        // loop does next) and, for a waiting one, when it comes back by itself.
        //
        // And the registry counts its changes, so that a reader holding a snapshot can tell it
        // is still current, or re-read only what changed since: triggers bump
        // `registry_generation` at every insert, update or delete of a model, a version or an
        // alias, whoever writes (Capstan, a seeding script, sqlite3), and stamp the model or
        // version row they changed (for an alias, its model's row) with the new generation. A delete of a model or version row
        // (Capstan never deletes them) also records its generation in `removed_at`: a snapshot
        // older than that is read again in full. The next generation is the larger of the last
        // plus one and the time in milliseconds, so that a database restored from a backup does
        // not give out again a generation a reader saw with other contents.
        migrator.registerMigration("v5") { db in
            let next = "max(generation + 1, CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER))"
            let current = "(SELECT generation FROM registry_generation WHERE id = 1)"
            try db.execute(sql: """
                ALTER TABLE conditions ADD COLUMN failure_class TEXT
                    CHECK (failure_class IS NULL OR failure_class IN ('stalled', 'waiting', 'transient', 'terminal'));
                -- For a waiting condition: when it comes back by itself (ms since the epoch), if known.
                ALTER TABLE conditions ADD COLUMN until_at INTEGER;

                CREATE TABLE registry_generation (
                    id         INTEGER PRIMARY KEY CHECK (id = 1),
                    generation INTEGER NOT NULL CHECK (generation >= 0),
                    removed_at INTEGER NOT NULL DEFAULT 0
                );
                INSERT INTO registry_generation (id, generation) VALUES (1, 0);
                ALTER TABLE models ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE versions ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
                CREATE INDEX models_by_generation ON models(generation);
                CREATE INDEX versions_by_generation ON versions(generation);
                """)
            for table in ["models", "versions"] {
                // The stamping UPDATE changes `generation` itself, so the update trigger's WHEN
                // keeps it from firing again (whatever `recursive_triggers` says).
                try db.execute(sql: """
                    CREATE TRIGGER \(table)_generation_insert AFTER INSERT ON \(table) BEGIN
                        UPDATE registry_generation SET generation = \(next) WHERE id = 1;
                        UPDATE \(table) SET generation = \(current) WHERE rowid = NEW.rowid;
                    END;
                    CREATE TRIGGER \(table)_generation_update AFTER UPDATE ON \(table)
                    WHEN NEW.generation IS OLD.generation BEGIN
                        UPDATE registry_generation SET generation = \(next) WHERE id = 1;
                        UPDATE \(table) SET generation = \(current) WHERE rowid = NEW.rowid;
                    END;
                    CREATE TRIGGER \(table)_generation_delete AFTER DELETE ON \(table) BEGIN
                        UPDATE registry_generation SET generation = \(next) WHERE id = 1;
                        UPDATE registry_generation SET removed_at = generation WHERE id = 1;
                    END;
                    """)
            }
            // An alias change stamps its model's row: a reader re-reads the aliases of the models
            // stamped since its snapshot (which catches deleted aliases too).
            for (event, models) in [("INSERT", "NEW.model"), ("UPDATE", "NEW.model, OLD.model"), ("DELETE", "OLD.model")] {
                try db.execute(sql: """
                    CREATE TRIGGER aliases_generation_\(event.lowercased()) AFTER \(event) ON aliases BEGIN
                        UPDATE registry_generation SET generation = \(next) WHERE id = 1;
                        UPDATE models SET generation = \(current) WHERE name IN (\(models));
                    END;
                    """)
            }
            try setSchemaVersion(5, in: db)
        }
        // The ledger of a registry others write too (MLflow): the tags Capstan wrote on the
        // versions it registered, and the drift taken as it is (`policy.drift: adopt`). Its alias
        // moves go to alias_history, as the embedded registry's do.
        migrator.registerMigration("v6") { db in
            try db.execute(sql: """
                CREATE TABLE external_versions (
                    model  TEXT NOT NULL,
                    number INTEGER NOT NULL,
                    tags   TEXT NOT NULL,
                    PRIMARY KEY (model, number)
                );
                CREATE TABLE drift_adoptions (
                    model  TEXT NOT NULL,
                    object TEXT NOT NULL,
                    value  TEXT NOT NULL,
                    spec   TEXT NOT NULL,
                    PRIMARY KEY (model, object)
                );
                """)
            try setSchemaVersion(6, in: db)
        }
        return migrator
    }

    /// Records the schema version in both `PRAGMA user_version` and `capstan_meta`; part of the
    /// migration's transaction.
    static func setSchemaVersion(_ version: Int, in db: Database) throws {
        try db.execute(sql: "PRAGMA user_version = \(version)")
        try db.execute(sql: "INSERT OR REPLACE INTO capstan_meta (key, value) VALUES ('schema_version', ?)",
                       arguments: [String(version)])
    }
}

/// Calls a fenced database's `onLost` once, the first time a write finds the lease lost.
final class FenceWatch: Sendable {
    private let onLost: @Sendable (any Error) -> Void
    private let reported = Mutex(false)

    init(onLost: @escaping @Sendable (any Error) -> Void) {
        self.onLost = onLost
    }

    func report(_ error: StoreError) {
        let first = reported.withLock { seen -> Bool in
            defer { seen = true }
            return !seen
        }
        if first { onLost(error) }
    }
}
