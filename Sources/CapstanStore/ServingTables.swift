import CapstanCore
import Foundation
import GRDB

/// The reconciler's memory of the serving side, in the state database's tables `rollouts`,
/// `quarantine` and `endpoints`: rollouts in progress, quarantined versions, and per endpoint what
/// Capstan last set (`applied`) and last saw (`observed`). `records()` reads them all at once, as
/// the core's `ServingRecords`.
public struct ServingTables: Sendable {
    public let database: StateDatabase
    let now: @Sendable () -> Int64

    public init(database: StateDatabase, now: @escaping @Sendable () -> Int64 = StoreTime.systemMilliseconds) {
        self.database = database
        self.now = now
    }

    public func rollouts() throws -> [String: RolloutState] {
        try read("read rollouts") { db in try rollouts(db) }
    }

    func rollouts(_ db: Database) throws -> [String: RolloutState] {
        var out: [String: RolloutState] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT deployment, state FROM rollouts") {
            if let state: RolloutState = Self.decode(row["state"]) { out[row["deployment"]] = state }
        }
        return out
    }

    /// Stores the rollout of `deployment`, or removes it (nil: no rollout in progress).
    public func setRollout(_ deployment: String, _ state: RolloutState?) throws {
        try write("record the rollout of \(deployment)") { db in try setRollout(db, deployment, state) }
    }

    /// `setRollout` in the caller's transaction.
    public func setRollout(_ db: Database, _ deployment: String, _ state: RolloutState?) throws {
        if let state {
            try db.execute(sql: """
                INSERT INTO rollouts (deployment, state, updated_at) VALUES (?, ?, ?)
                ON CONFLICT(deployment) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at
                """, arguments: [deployment, try Self.encode(state), now()])
        } else {
            try db.execute(sql: "DELETE FROM rollouts WHERE deployment = ?", arguments: [deployment])
        }
    }

    public func quarantine() throws -> [Quarantine] {
        try read("read quarantined versions") { db in try quarantine(db) }
    }

    func quarantine(_ db: Database) throws -> [Quarantine] {
        try Row.fetchAll(db, sql: "SELECT * FROM quarantine ORDER BY at").map { row in
            Quarantine(deployment: row["deployment"], version: row["version"], specHash: row["spec_hash"],
                       reason: row["reason"], at: row["at"])
        }
    }

    public func addQuarantine(_ q: Quarantine) throws {
        try write("quarantine v\(q.version) for \(q.deployment)") { db in try addQuarantine(db, q) }
    }

    /// `addQuarantine` in the caller's transaction.
    public func addQuarantine(_ db: Database, _ q: Quarantine) throws {
        try db.execute(sql: """
            INSERT OR REPLACE INTO quarantine (deployment, version, spec_hash, reason, at) VALUES (?, ?, ?, ?, ?)
            """, arguments: [q.deployment, q.version, q.specHash, q.reason, q.at])
    }

    /// What Capstan last set on each endpoint.
    public func applied() throws -> [String: [BackendWeight]] {
        try read("read endpoints") { db in try applied(db) }
    }

    func applied(_ db: Database) throws -> [String: [BackendWeight]] {
        var out: [String: [BackendWeight]] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT deployment, applied FROM endpoints WHERE applied IS NOT NULL") {
            if let weights: [BackendWeight] = Self.decode(row["applied"]) { out[row["deployment"]] = weights }
        }
        return out
    }

    /// Records what Capstan set on an endpoint (nil: it was removed).
    public func setApplied(_ deployment: String, model: String, _ backends: [BackendWeight]?) throws {
        try write("record the endpoint \(deployment)") { db in try setApplied(db, deployment, model: model, backends) }
    }

    /// `setApplied` in the caller's transaction.
    public func setApplied(_ db: Database, _ deployment: String, model: String, _ backends: [BackendWeight]?) throws {
        if let backends {
            try db.execute(sql: """
                INSERT INTO endpoints (deployment, model, applied, updated_at) VALUES (?, ?, ?, ?)
                ON CONFLICT(deployment) DO UPDATE SET model = excluded.model, applied = excluded.applied, updated_at = excluded.updated_at
                """, arguments: [deployment, model, try Self.encode(backends), now()])
        } else {
            try db.execute(sql: "DELETE FROM endpoints WHERE deployment = ?", arguments: [deployment])
        }
    }

    /// Records what the serving layer showed of each endpoint in the last pass (for `status`).
    public func setObserved(_ endpoints: [EndpointStatus]) throws {
        try write("record observed endpoints") { db in try setObserved(db, endpoints) }
    }

    /// `setObserved` in the caller's transaction.
    public func setObserved(_ db: Database, _ endpoints: [EndpointStatus]) throws {
        for endpoint in endpoints {
            try db.execute(sql: """
                INSERT INTO endpoints (deployment, model, observed, updated_at) VALUES (?, ?, ?, ?)
                ON CONFLICT(deployment) DO UPDATE SET observed = excluded.observed, updated_at = excluded.updated_at
                """, arguments: [endpoint.deployment, endpoint.model, try Self.encode(endpoint), now()])
        }
    }

    /// The endpoints as last observed, by deployment.
    public func observed() throws -> [String: EndpointStatus] {
        try read("read observed endpoints") { db in try observed(db) }
    }

    func observed(_ db: Database) throws -> [String: EndpointStatus] {
        var out: [String: EndpointStatus] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT deployment, observed FROM endpoints WHERE observed IS NOT NULL") {
            if let status: EndpointStatus = Self.decode(row["observed"]) { out[row["deployment"]] = status }
        }
        return out
    }

    /// Everything at once, in one read.
    public func records() throws -> CapstanCore.ServingRecords {
        try read("read the serving records") { db in try records(db) }
    }

    /// `records()` in the caller's transaction.
    public func records(_ db: Database) throws -> CapstanCore.ServingRecords {
        CapstanCore.ServingRecords(applied: try applied(db), observed: try observed(db), rollouts: try rollouts(db),
                                   quarantine: try quarantine(db))
    }

    static func encode<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    static func decode<T: Decodable>(_ text: String?) -> T? {
        guard let text else { return nil }
        return try? JSONDecoder().decode(T.self, from: Data(text.utf8))
    }

    func write<T: Sendable>(_ what: String, _ body: (Database) throws -> T) throws -> T {
        try database.write(what, body)
    }

    func read<T: Sendable>(_ what: String, _ body: (Database) throws -> T) throws -> T {
        try database.read(what, body)
    }
}
