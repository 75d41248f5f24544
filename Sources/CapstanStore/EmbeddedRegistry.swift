import CapstanCore
import Foundation
import GRDB

/// The model registry in Capstan's state database (the default backend). Every call is one
/// transaction; a version reported created is committed (WAL) and survives the process being
/// killed right after.
///
/// **Generations.** Every change of a model, a version or an alias bumps the registry's
/// generation (`registry_generation`) in its own transaction, and stamps the model or version row
/// it changed with it (triggers of migration v5 do it, whoever writes). `generation()` is one
/// small read; `snapshot(refreshing:)` returns a snapshot it was given when the generation did
/// not move, and otherwise re-reads only the models and versions changed since (and the aliases
/// of the models whose aliases changed), so that a reader holding a snapshot (the controller, a
/// cache) does not decode every version's JSON again.
public struct EmbeddedRegistry: Registry {
    public let database: StateDatabase
    /// Milliseconds since the epoch; tests pass a manual clock.
    let now: @Sendable () -> Int64

    public init(database: StateDatabase, now: @escaping @Sendable () -> Int64 = { Int64(Date().timeIntervalSince1970 * 1000) }) {
        self.database = database
        self.now = now
    }

    // MARK: Models

    public func models() async throws -> [RegisteredModel] {
        try await database.read("read the registry") { db in
            try Row.fetchAll(db, sql: "SELECT * FROM models ORDER BY name").map(Self.model)
        }
    }

    public func model(named name: String) async throws -> RegisteredModel? {
        try await database.read("read the registry") { db in
            try Row.fetchOne(db, sql: "SELECT * FROM models WHERE name = ?", arguments: [name]).map(Self.model)
        }
    }

    @discardableResult
    public func upsertModel(name: String, description: String?, labels: [String: String]) async throws -> RegisteredModel {
        let time = now()
        let labelsJSON = try Self.json(labels)
        return try await database.write("register the model '\(name)'") { db in
            try db.execute(sql: """
                INSERT INTO models (name, description, labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT(name) DO UPDATE SET description = excluded.description, labels = excluded.labels,
                    updated_at = excluded.updated_at
                WHERE models.description IS NOT excluded.description OR models.labels IS NOT excluded.labels
                """, arguments: [name, description ?? "", labelsJSON, time, time])
            return try Row.fetchOne(db, sql: "SELECT * FROM models WHERE name = ?", arguments: [name]).map(Self.model)!
        }
    }

    public func snapshot() async throws -> RegistrySnapshot {
        try await snapshot(refreshing: nil).snapshot
    }

    /// The registry's generation: it moves with every write that changes a model, a version or
    /// an alias.
    public func generation() async throws -> Int64 {
        try await database.read("read the registry") { db in try Self.generations(db).generation }
    }

    /// The registry now, in one consistent read: `previous` itself when the generation has not
    /// moved since it was read; otherwise `previous` with the models, versions and aliases written
    /// since read again. Without `previous` (or when a model or version row was deleted since,
    /// which only another program does), everything is read. Versions come without
    /// their `training` description (see `Registry.snapshot()`).
    ///
    /// `previous` must have been read from this database: after the database file was replaced
    /// (restored from a backup), start again without it.
    public func snapshot(refreshing previous: GenerationalSnapshot?) async throws -> GenerationalSnapshot {
        try await database.read("read the registry") { db in
            let (generation, removedAt) = try Self.generations(db)
            // A row removed since (by another program), or a snapshot from a later state: all again.
            guard let previous, let since = previous.generation, since <= generation, since >= removedAt else {
                return GenerationalSnapshot(generation: generation, snapshot: try Self.snapshot(db, since: nil, into: nil))
            }
            if since == generation { return previous }
            var read: Set<String> = []
            let snapshot = try Self.snapshot(db, since: since, into: previous.snapshot, read: &read)
            return GenerationalSnapshot(generation: generation, snapshot: snapshot,
                                        refreshed: GenerationalSnapshot.Refresh(since: since, models: read))
        }
    }

    /// The models and versions stamped after `since` (all of them without it), and the aliases of
    /// those models, merged into `base`.
    static func snapshot(_ db: Database, since: Int64?, into base: RegistrySnapshot?) throws -> RegistrySnapshot {
        var read: Set<String> = []
        return try snapshot(db, since: since, into: base, read: &read)
    }

    /// `snapshot(_:since:into:)`, collecting in `read` the models whose row, versions or aliases
    /// were read.
    static func snapshot(_ db: Database, since: Int64?, into base: RegistrySnapshot?, read: inout Set<String>) throws -> RegistrySnapshot {
        // Read in full, rows come in key order; read since a generation, they come through the
        // generation indexes (an ORDER BY would make SQLite scan the whole table in key order).
        let filter = since == nil ? "" : "WHERE generation > ?"
        let arguments: StatementArguments = since.map { [$0] } ?? []
        var reader = SnapshotReader()

        var changedModels: [RegisteredModel] = []
        let models = try Row.fetchCursor(db, sql: """
            SELECT name, description, labels, created_at, updated_at FROM models \(since == nil ? "ORDER BY name" : filter)
            """, arguments: arguments)
        while let row = try models.next() { changedModels.append(reader.model(row)) }
        var allModels = base?.models ?? []
        if allModels.isEmpty {
            allModels = since == nil ? changedModels : changedModels.sorted { precedes($0.name, $1.name) }
        } else {
            for model in changedModels {
                // Sorted by name as SQLite sorts them (bytes), found by bisection.
                var low = 0, high = allModels.count
                while low < high {
                    let middle = (low + high) / 2
                    if precedes(allModels[middle].name, model.name) { low = middle + 1 } else { high = middle }
                }
                if low < allModels.count, allModels[low].name == model.name {
                    allModels[low] = model
                } else {
                    allModels.insert(model, at: low)
                }
            }
        }

        var versions = base?.versions ?? [:]
        var touched: Set<String> = []
        let rows = try Row.fetchCursor(db, sql: """
            SELECT \(SnapshotReader.versionColumns) FROM versions \(since == nil ? "ORDER BY model, number" : filter)
            """, arguments: arguments)
        while let row = try rows.next() {
            let v = reader.version(row)
            guard base != nil else {
                versions[v.model, default: []].append(v)
                continue
            }
            touched.insert(v.model)
            if let i = versions[v.model]?.firstIndex(where: { $0.number == v.number }) {
                versions[v.model]![i] = v
            } else {
                versions[v.model, default: []].append(v)
            }
        }
        for model in touched { versions[model]?.sort { $0.number < $1.number } }

        // An alias change stamps its model: the aliases of the models read again replace theirs.
        var aliases = base?.aliases ?? [:]
        for model in changedModels where base != nil { aliases[model.name] = nil }
        let aliasRows = try Row.fetchCursor(db, sql: since == nil ? "SELECT model, alias, version FROM aliases" : """
            SELECT aliases.model, aliases.alias, aliases.version FROM aliases JOIN models ON models.name = aliases.model
            WHERE models.generation > ?
            """, arguments: arguments)
        while let row = try aliasRows.next() {
            aliases[row[0] as String, default: [:]][row[1] as String] = row[2] as Int
        }
        if base != nil {
            read = touched
            for model in changedModels { read.insert(model.name) }
        }
        return RegistrySnapshot(models: allModels, versions: versions, aliases: aliases)
    }

    public func trainingDescription(of model: String, number: Int) async throws -> TrainingDescription? {
        try await database.read("read the registry") { db in
            Self.decode(try String.fetchOne(db, sql: "SELECT training FROM versions WHERE model = ? AND number = ?",
                                            arguments: [model, number]))
        }
    }

    // MARK: Versions

    public func createVersion(_ version: NewVersion) async throws -> ModelVersion {
        let time = now()
        let params = try Self.json(version.params)
        let tags = try Self.json(version.tags)
        let training = try version.training.map(Self.json)
        return try await database.write("create a version of '\(version.model)'") { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM models WHERE name = ?", arguments: [version.model]) == true else {
                throw RegistryError.modelNotFound(version.model)
            }
            if let existing = try Int.fetchOne(db, sql: "SELECT number FROM versions WHERE model = ? AND fingerprint = ?",
                                               arguments: [version.model, version.fingerprint]) {
                throw RegistryError.duplicateFingerprint(model: version.model, fingerprint: version.fingerprint, existing: existing)
            }
            // Versions are never deleted, so the next number is never one used before.
            let number = (try Int.fetchOne(db, sql: "SELECT MAX(number) FROM versions WHERE model = ?", arguments: [version.model]) ?? 0) + 1
            try db.execute(sql: """
                INSERT INTO versions (model, number, status, fingerprint, commit_id, params, created_at, tags, training)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [version.model, number, version.status.rawValue, version.fingerprint, version.commit, params, time, tags,
                                training])
            return try Self.fetchVersion(db, version.model, number)!
        }
    }

    @discardableResult
    public func updateVersion(model: String, number: Int, _ update: VersionUpdate) async throws -> ModelVersion {
        var sets: [String] = []
        var arguments: StatementArguments = []
        if let s = update.status { sets.append("status = ?"); arguments += [s.rawValue] }
        if let m = update.metrics { sets.append("metrics = ?"); arguments += [try Self.json(m)] }
        if let d = update.artifactDigest { sets.append("artifact_digest = ?"); arguments += [d] }
        if let l = update.artifactLocation { sets.append("artifact_path = ?"); arguments += [l] }
        if let g = update.gateResults { sets.append("gate_results = ?"); arguments += [try Self.json(g)] }
        if let t = update.logTail { sets.append("log_tail = ?"); arguments += [t] }
        if let t = update.tags { sets.append("tags = ?"); arguments += [try Self.json(t)] }
        if let a = update.attempts { sets.append("attempts = ?"); arguments += [a] }
        if let f = update.failedAt { sets.append("failed_at = ?"); arguments += [f] }
        if let a = update.archivedAt { sets.append("archived_at = ?"); arguments += [a] }
        if let c = update.commit { sets.append("commit_id = ?"); arguments += [c] }
        let assignments = sets
        let values = arguments
        return try await database.write("update v\(number) of '\(model)'") { db in
            if !assignments.isEmpty {
                try db.execute(sql: "UPDATE versions SET \(assignments.joined(separator: ", ")) WHERE model = ? AND number = ?",
                               arguments: values + [model, number])
            }
            guard let version = try Self.fetchVersion(db, model, number) else {
                throw RegistryError.versionNotFound(model: model, number: number)
            }
            return version
        }
    }

    public func versions(of model: String) async throws -> [ModelVersion] {
        try await database.read("read the registry") { db in
            try Row.fetchAll(db, sql: "SELECT * FROM versions WHERE model = ? ORDER BY number", arguments: [model]).map(Self.version)
        }
    }

    public func version(of model: String, number: Int) async throws -> ModelVersion? {
        try await database.read("read the registry") { db in try Self.fetchVersion(db, model, number) }
    }

    public func version(of model: String, fingerprint: String) async throws -> ModelVersion? {
        try await database.read("read the registry") { db in
            try Row.fetchOne(db, sql: "SELECT * FROM versions WHERE model = ? AND fingerprint = ?", arguments: [model, fingerprint])
                .map(Self.version)
        }
    }

    public func versions(of model: String, status: VersionStatus) async throws -> [ModelVersion] {
        try await database.read("read the registry") { db in
            try Row.fetchAll(db, sql: "SELECT * FROM versions WHERE model = ? AND status = ? ORDER BY number",
                             arguments: [model, status.rawValue]).map(Self.version)
        }
    }

    public func newestValidated(of model: String) async throws -> ModelVersion? {
        try await database.read("read the registry") { db in
            try Row.fetchOne(db, sql: "SELECT * FROM versions WHERE model = ? AND status = 'validated' AND archived_at IS NULL ORDER BY number DESC LIMIT 1",
                             arguments: [model]).map(Self.version)
        }
    }

    // MARK: Aliases

    public func aliases(of model: String) async throws -> [String: Int] {
        try await database.read("read the registry") { db in
            var out: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT alias, version FROM aliases WHERE model = ?", arguments: [model]) {
                out[row["alias"]] = row["version"]
            }
            return out
        }
    }

    public func resolveAlias(_ alias: String, of model: String) async throws -> Int? {
        try await database.read("read the registry") { db in
            try Int.fetchOne(db, sql: "SELECT version FROM aliases WHERE model = ? AND alias = ?", arguments: [model, alias])
        }
    }

    public func setAlias(_ alias: String, of model: String, to number: Int, commit: String?, reason: String) async throws {
        let time = now()
        try await database.write("point alias '\(alias)' of '\(model)' at v\(number)") { db in
            guard let status = try String.fetchOne(db, sql: "SELECT status FROM versions WHERE model = ? AND number = ?",
                                                   arguments: [model, number]) else {
                throw RegistryError.versionNotFound(model: model, number: number)
            }
            guard status == VersionStatus.validated.rawValue else {
                throw RegistryError.notValidated(model: model, number: number, status: VersionStatus(rawValue: status) ?? .failed)
            }
            if try Int64.fetchOne(db, sql: "SELECT archived_at FROM versions WHERE model = ? AND number = ?", arguments: [model, number]) != nil {
                throw RegistryError.archived(model: model, number: number)
            }
            let from = try Int.fetchOne(db, sql: "SELECT version FROM aliases WHERE model = ? AND alias = ?", arguments: [model, alias])
            guard from != number else { return }
            try db.execute(sql: """
                INSERT INTO aliases (model, alias, version, updated_at) VALUES (?, ?, ?, ?)
                ON CONFLICT(model, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at
                """, arguments: [model, alias, number, time])
            try db.execute(sql: """
                INSERT INTO alias_history (model, alias, from_version, to_version, at, commit_id, reason) VALUES (?, ?, ?, ?, ?, ?, ?)
                """, arguments: [model, alias, from, number, time, commit, reason])
        }
    }

    public func deleteAlias(_ alias: String, of model: String, commit: String?, reason: String) async throws {
        let time = now()
        try await database.write("delete alias '\(alias)' of '\(model)'") { db in
            guard let from = try Int.fetchOne(db, sql: "SELECT version FROM aliases WHERE model = ? AND alias = ?",
                                              arguments: [model, alias]) else { return }
            try db.execute(sql: "DELETE FROM aliases WHERE model = ? AND alias = ?", arguments: [model, alias])
            try db.execute(sql: """
                INSERT INTO alias_history (model, alias, from_version, to_version, at, commit_id, reason) VALUES (?, ?, ?, NULL, ?, ?, ?)
                """, arguments: [model, alias, from, time, commit, reason])
        }
    }

    public func aliasHistory(of model: String, alias: String?) async throws -> [AliasMove] {
        try await database.read("read the registry") { db in
            let rows: [Row]
            if let alias {
                rows = try Row.fetchAll(db, sql: "SELECT * FROM alias_history WHERE model = ? AND alias = ? ORDER BY id",
                                        arguments: [model, alias])
            } else {
                rows = try Row.fetchAll(db, sql: "SELECT * FROM alias_history WHERE model = ? ORDER BY id", arguments: [model])
            }
            return rows.map { row in
                AliasMove(model: row["model"], alias: row["alias"], from: row["from_version"], to: row["to_version"],
                          at: row["at"], commit: row["commit_id"], reason: row["reason"])
            }
        }
    }

    public func aliasHolder(_ alias: String, of model: String, at time: Int64) async throws -> Int? {
        try await database.read("read the registry") { db in
            // The last move at or before `time` says where the alias pointed (nil: deleted).
            guard let row = try Row.fetchOne(db, sql: """
                SELECT to_version FROM alias_history WHERE model = ? AND alias = ? AND at <= ? ORDER BY at DESC, id DESC LIMIT 1
                """, arguments: [model, alias, time]) else { return nil }
            return row["to_version"]
        }
    }

    /// The ledger of a registry others write too (MLflow), in the same database: its alias
    /// moves in alias_history, the tags of its versions and the drift adopted.
    public var ledger: any RegistryLedgerStore { LedgerTables(registry: self) }

    /// SQLite's order of text (BINARY: by bytes).
    static func precedes(_ a: String, _ b: String) -> Bool {
        a.utf8.lexicographicallyPrecedes(b.utf8)
    }

    // MARK: Generations

    /// The generation, and the generation of the last removal of a model or version row.
    static func generations(_ db: Database) throws -> (generation: Int64, removedAt: Int64) {
        guard let row = try Row.fetchOne(db, sql: "SELECT generation, removed_at FROM registry_generation WHERE id = 1") else {
            return (0, 0)
        }
        return (row["generation"], row["removed_at"])
    }

    // MARK: Rows

    static func fetchVersion(_ db: Database, _ model: String, _ number: Int) throws -> ModelVersion? {
        try Row.fetchOne(db, sql: "SELECT * FROM versions WHERE model = ? AND number = ?", arguments: [model, number]).map(version)
    }

    static func model(_ row: Row) -> RegisteredModel {
        let description: String = row["description"]
        return RegisteredModel(name: row["name"], description: description.isEmpty ? nil : description,
                               labels: decode(row["labels"]) ?? [:], createdAt: row["created_at"], updatedAt: row["updated_at"])
    }

    static func version(_ row: Row) -> ModelVersion {
        ModelVersion(
            model: row["model"], number: row["number"],
            status: VersionStatus(rawValue: row["status"]) ?? .failed, fingerprint: row["fingerprint"], commit: row["commit_id"],
            params: decode(row["params"]) ?? [:], metrics: decode(row["metrics"]) ?? [:],
            artifactDigest: row["artifact_digest"], artifactLocation: row["artifact_path"],
            gateResults: decode(row["gate_results"]) ?? [], logTail: row["log_tail"], tags: decode(row["tags"]) ?? [:],
            createdAt: row["created_at"], attempts: row["attempts"], failedAt: row["failed_at"], archivedAt: row["archived_at"],
            training: decode(row["training"]))
    }

    static func json<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    /// One decoder for every column of every row: creating a decoder per value dominated the
    /// cost of reading 10,000 versions.
    static let decoder = JSONDecoder()

    static func decode<T: Decodable>(_ text: String?) -> T? {
        guard let text else { return nil }
        return try? decoder.decode(T.self, from: Data(text.utf8))
    }
}

/// Reads the rows of a registry snapshot: columns by position (GRDB's lookup by name costs a
/// case-insensitive comparison per column and value), JSON columns straight from SQLite's buffer,
/// and short JSON texts (`{}`, `[]`, a lone metric) decoded once per read and reused: at 10,000
/// versions the per-value decoding is most of the cost of the read.
struct SnapshotReader {
    /// The columns `version(_:)` reads, in its order.
    static let versionColumns = """
        model, number, status, fingerprint, commit_id, params, metrics, artifact_digest, artifact_path, gate_results, log_tail,
        created_at, tags, attempts, failed_at, archived_at
        """

    private var strings = Memo<[String: String]>()

    /// A row of `SELECT name, description, labels, created_at, updated_at FROM models`.
    mutating func model(_ row: Row) -> RegisteredModel {
        let description: String = row[1]
        return RegisteredModel(name: row[0], description: description.isEmpty ? nil : description,
                               labels: strings.decode(row, 2) ?? [:], createdAt: row[3], updatedAt: row[4])
    }

    /// A row of `SELECT \(versionColumns) FROM versions`; without its training description.
    /// Its JSON columns (params, metrics, gate results, tags) are copied, not decoded: they are
    /// decoded when first read (`ModelVersion.init(…deferred:)`), and a snapshot of every
    /// version decodes none of them.
    mutating func version(_ row: Row) -> ModelVersion {
        let texts = Texts(params: Self.bytes(row, 5), metrics: Self.bytes(row, 6), gates: Self.bytes(row, 9), tags: Self.bytes(row, 12))
        return ModelVersion(
            model: row[0], number: row[1], status: VersionStatus(rawValue: row[2]) ?? .failed, fingerprint: row[3], commit: row[4],
            artifactDigest: row[7], artifactLocation: row[8], logTail: row[10], createdAt: row[11], attempts: row[13],
            failedAt: row[14], archivedAt: row[15], deferred: { texts.decoded() })
    }

    /// A version's JSON columns as stored (nil for NULL).
    struct Texts: Sendable {
        var params: Data?
        var metrics: Data?
        var gates: Data?
        var tags: Data?

        /// Decoded as the registry always read them: NULL, or text that does not decode, is empty.
        func decoded() -> VersionDetails {
            func decode<T: Decodable>(_ data: Data?, _ type: T.Type) -> T? {
                data.flatMap { try? EmbeddedRegistry.decoder.decode(T.self, from: $0) }
            }
            return VersionDetails(params: decode(params, [String: ParamValue].self) ?? [:],
                                  metrics: decode(metrics, [String: Double].self) ?? [:],
                                  gateResults: decode(gates, [GateResult].self) ?? [], tags: decode(tags, [String: String].self) ?? [:])
        }
    }

    static func bytes(_ row: Row, _ index: Int) -> Data? {
        // A copy: SQLite's buffer is valid only in this closure.
        try? row.withUnsafeData(atIndex: index) { data in data.map { d in d.withUnsafeBytes { Data($0) } } }
    }

    /// Decoded JSON values of one column type, by text, for texts short enough to repeat.
    struct Memo<T: Decodable> {
        static var longest: Int { 48 }
        private var values: [Data: T] = [:]

        /// The JSON at `index` decoded as `T`; nil for NULL, and (as the registry always read it)
        /// for text that does not decode.
        mutating func decode(_ row: Row, _ index: Int) -> T? {
            try? row.withUnsafeData(atIndex: index) { data -> T? in
                guard let data else { return nil }
                if data.count <= Self.longest, let known = values[data] { return known }
                guard let value = try? EmbeddedRegistry.decoder.decode(T.self, from: data) else { return nil }
                // A copy: `data` is SQLite's buffer, valid only in this closure.
                if data.count <= Self.longest { values[data.withUnsafeBytes { Data($0) }] = value }
                return value
            }
        }
    }
}

/// The ledger of another registry (MLflow) whose aliases and versions Capstan changes:
/// alias_history (as for the embedded registry), external_versions and drift_adoptions, fenced
/// like the rest of the state.
struct LedgerTables: RegistryLedgerStore {
    let registry: EmbeddedRegistry

    func record(_ move: AliasMove) async throws {
        try await registry.database.write("record the move of alias '\(move.alias)' of '\(move.model)'") { db in
            try db.execute(sql: """
                INSERT INTO alias_history (model, alias, from_version, to_version, at, commit_id, reason) VALUES (?, ?, ?, ?, ?, ?, ?)
                """, arguments: [move.model, move.alias, move.from, move.to, move.at, move.commit, move.reason])
        }
    }

    func moves(of model: String, alias: String?) async throws -> [AliasMove] {
        try await registry.aliasHistory(of: model, alias: alias)
    }

    func holder(_ alias: String, of model: String, at time: Int64) async throws -> Int? {
        try await registry.aliasHolder(alias, of: model, at: time)
    }

    func recordVersion(model: String, number: Int, tags: [String: String]) async throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let text = String(decoding: try encoder.encode(tags), as: UTF8.self)
        try await registry.database.write("record the tags of v\(number) of '\(model)'") { db in
            try db.execute(sql: "INSERT OR REPLACE INTO external_versions (model, number, tags) VALUES (?, ?, ?)",
                           arguments: [model, number, text])
        }
    }

    func adopt(model: String, object: DriftObject, _ adoption: DriftAdoption) async throws {
        try await registry.database.write("adopt the drift of \(object) of '\(model)'") { db in
            try db.execute(sql: "INSERT OR REPLACE INTO drift_adoptions (model, object, value, spec) VALUES (?, ?, ?, ?)",
                           arguments: [model, object.key, adoption.value, adoption.spec])
        }
    }

    func recordedVersions(of model: String) async throws -> [Int: [String: String]] {
        try await registry.database.read("read the recorded tags of the versions of '\(model)'") { db in
            var out: [Int: [String: String]] = [:]
            let decoder = JSONDecoder()
            for row in try Row.fetchAll(db, sql: "SELECT number, tags FROM external_versions WHERE model = ?", arguments: [model]) {
                let text: String = row["tags"]
                out[row["number"]] = (try? decoder.decode([String: String].self, from: Data(text.utf8))) ?? [:]
            }
            return out
        }
    }

    func ledger() async throws -> RegistryLedger {
        try await registry.database.read("read the registry ledger") { db in
            var ledger = RegistryLedger()
            // The last move of each alias (by id: the order they were made in).
            for row in try Row.fetchAll(db, sql: """
                SELECT model, alias, to_version FROM alias_history
                WHERE id IN (SELECT max(id) FROM alias_history GROUP BY model, alias)
                """) {
                let to: Int? = row["to_version"]
                ledger.aliases[row["model"], default: [:]][row["alias"]] = .some(to)
            }
            let decoder = JSONDecoder()
            for row in try Row.fetchAll(db, sql: "SELECT model, number, tags FROM external_versions") {
                let text: String = row["tags"]
                let tags = (try? decoder.decode([String: String].self, from: Data(text.utf8))) ?? [:]
                ledger.versions[row["model"], default: [:]][row["number"]] = tags
            }
            for row in try Row.fetchAll(db, sql: "SELECT model, object, value, spec FROM drift_adoptions") {
                guard let object = DriftObject(key: row["object"]) else { continue }
                ledger.adoptions[row["model"], default: [:]][object] = DriftAdoption(value: row["value"], spec: row["spec"])
            }
            return ledger
        }
    }
}
