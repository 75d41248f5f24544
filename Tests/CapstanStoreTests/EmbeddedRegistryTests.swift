import CapstanCore
import CapstanStore
import Foundation
import Synchronization
import Testing

/// The embedded registry over a real SQLite file, with a manual clock for alias-history times.
struct EmbeddedRegistryTests {
    final class ManualClock: Sendable {
        let value = Mutex<Int64>(1_000)
        func advance(_ ms: Int64) { value.withLock { $0 += ms } }
        var now: Int64 { value.withLock { $0 } }
    }

    let dir: TemporaryDirectory
    let clock = ManualClock()
    let registry: EmbeddedRegistry

    init() throws {
        dir = try TemporaryDirectory()
        let clock = self.clock
        registry = EmbeddedRegistry(database: try StateDatabase(stateDirectory: dir.path), now: { clock.now })
    }

    func validated(_ model: String, _ fingerprint: String, accuracy: Double = 0.9) async throws -> ModelVersion {
        let v = try await registry.createVersion(NewVersion(model: model, fingerprint: fingerprint, commit: "c0ffee"))
        return try await registry.updateVersion(model: model, number: v.number, VersionUpdate(status: .validated, metrics: ["accuracy": accuracy]))
    }

    @Test func modelsAreCreatedAndUpdated() async throws {
        let created = try await registry.upsertModel(name: "churn", description: "Predicts churn.", labels: ["team": "growth"])
        #expect(created.createdAt == 1_000 && created.updatedAt == 1_000)
        clock.advance(500)
        let updated = try await registry.upsertModel(name: "churn", description: "Predicts churn in 30 days.", labels: ["team": "growth"])
        #expect(updated.description == "Predicts churn in 30 days.")
        #expect(updated.createdAt == 1_000 && updated.updatedAt == 1_500)
        #expect(try await registry.models().map(\.name) == ["churn"])
        let missing = try await registry.model(named: "nope")
        #expect(missing == nil)
    }

    @Test func versionNumbersCountUpPerModelAndOneFingerprintHasOneVersion() async throws {
        try await registry.upsertModel(name: "churn", description: nil, labels: [:])
        try await registry.upsertModel(name: "fraud", description: nil, labels: [:])
        let a = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f1", params: ["lr": .double(0.1)]))
        let b = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f2"))
        let c = try await registry.createVersion(NewVersion(model: "fraud", fingerprint: "f1"))
        #expect([a.number, b.number, c.number] == [Int]([1, 2, 1]))
        #expect(a.status == .training && a.params == ["lr": .double(0.1)])
        await #expect(throws: RegistryError.duplicateFingerprint(model: "churn", fingerprint: "f1", existing: 1)) {
            _ = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f1"))
        }
        await #expect(throws: RegistryError.modelNotFound("ghost")) {
            _ = try await registry.createVersion(NewVersion(model: "ghost", fingerprint: "f9"))
        }
        #expect(try await registry.version(of: "churn", fingerprint: "f2")?.number == 2)
    }

    @Test func updatesLookupsAndNewestValidated() async throws {
        try await registry.upsertModel(name: "churn", description: nil, labels: [:])
        let v1 = try await validated("churn", "f1", accuracy: 0.91)
        let v2 = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f2"))
        let failed = try await registry.updateVersion(model: "churn", number: v2.number,
                                                      VersionUpdate(status: .failed, logTail: "Traceback: boom"))
        #expect(failed.status == .failed && failed.logTail == "Traceback: boom")
        let v3 = try await validated("churn", "f3", accuracy: 0.93)
        let rejected = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f4"))
        try await registry.updateVersion(model: "churn", number: rejected.number, VersionUpdate(
            status: .rejected, gateResults: [GateResult(gate: "metric accuracy >= 0.9", passed: false, detail: "0.85 < 0.9")]))
        #expect(try await registry.newestValidated(of: "churn")?.number == v3.number)
        #expect(try await registry.versions(of: "churn", status: .validated).map(\.number) == [v1.number, v3.number])
        #expect(try await registry.version(of: "churn", number: 4)?.gateResults.first?.passed == false)
        #expect(try await registry.versions(of: "churn").map(\.status) == [.validated, .failed, .validated, .rejected])
        await #expect(throws: RegistryError.versionNotFound(model: "churn", number: 99)) {
            try await registry.updateVersion(model: "churn", number: 99, VersionUpdate(status: .trained))
        }
    }

    @Test func aliasesPointOnlyAtValidatedVersionsAndEveryMoveIsKept() async throws {
        try await registry.upsertModel(name: "churn", description: nil, labels: [:])
        let v1 = try await validated("churn", "f1")
        let training = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f2"))
        await #expect(throws: RegistryError.notValidated(model: "churn", number: training.number, status: .training)) {
            try await registry.setAlias("champion", of: "churn", to: training.number, commit: "c1", reason: "promote")
        }
        #expect(try await registry.resolveAlias("champion", of: "churn") == nil)

        try await registry.setAlias("champion", of: "churn", to: v1.number, commit: "c1", reason: "first champion")  // t=1000
        clock.advance(1_000)
        let v3 = try await validated("churn", "f3")
        try await registry.setAlias("champion", of: "churn", to: v3.number, commit: "c2", reason: "PR #7")  // t=2000
        try await registry.setAlias("champion", of: "churn", to: v3.number, commit: "c2", reason: "again")  // no-op
        clock.advance(1_000)
        try await registry.deleteAlias("champion", of: "churn", commit: "c3", reason: "pin removed")  // t=3000

        #expect(try await registry.aliases(of: "churn").isEmpty)
        let history = try await registry.aliasHistory(of: "churn", alias: "champion")
        #expect(history.map(\.from) == [nil, v1.number, v3.number])
        #expect(history.map(\.to) == [v1.number, v3.number, nil])
        #expect(history.map(\.commit) == ["c1", "c2", "c3"])
        #expect(history.map(\.reason) == ["first champion", "PR #7", "pin removed"])
        // Which version was champion at time T.
        #expect(try await registry.aliasHolder("champion", of: "churn", at: 999) == nil)
        #expect(try await registry.aliasHolder("champion", of: "churn", at: 1_500) == v1.number)
        #expect(try await registry.aliasHolder("champion", of: "churn", at: 2_500) == v3.number)
        #expect(try await registry.aliasHolder("champion", of: "churn", at: 3_000) == nil)
    }

    /// A snapshot hands over every version's JSON columns undecoded: they are decoded when first
    /// read, to the same values a single version's read gives, and the two compare equal.
    @Test func aSnapshotDecodesAVersionsDetailsOnlyWhenRead() async throws {
        try await registry.upsertModel(name: "churn", description: nil, labels: [:])
        let v = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f1", params: ["lr": .double(0.1), "depth": .int(3)],
                                                            tags: ["team": "risk"]))
        try await registry.updateVersion(model: "churn", number: v.number, VersionUpdate(
            status: .rejected, metrics: ["accuracy": 0.85], gateResults: [GateResult(gate: "metric accuracy >= 0.9", passed: false, detail: "0.85 < 0.9")]))
        let read = try #require(try await registry.version(of: "churn", number: v.number))
        #expect(!read.detailsDeferred)
        let inSnapshot = try #require(try await registry.snapshot().versions["churn"]?.first)
        #expect(inSnapshot.detailsDeferred)
        #expect(inSnapshot.status == .rejected && inSnapshot.fingerprint == "f1")
        #expect(inSnapshot.detailsDeferred, "reading the plain fields decodes nothing")
        #expect(inSnapshot.metrics == ["accuracy": 0.85])
        #expect(!inSnapshot.detailsDeferred)
        #expect(inSnapshot.params == ["lr": .double(0.1), "depth": .int(3)] && inSnapshot.tags == ["team": "risk"])
        #expect(inSnapshot.gateResults == [GateResult(gate: "metric accuracy >= 0.9", passed: false, detail: "0.85 < 0.9")])
        let again = try #require(try await registry.snapshot().versions["churn"]?.first)
        #expect(again == read && read == again)
        #expect(Set([again, read]).count == 1)
        // Changed like any value: the copy changes, the original does not.
        var changed = again
        changed.metrics["auc"] = 0.7
        #expect(changed.metrics == ["accuracy": 0.85, "auc": 0.7] && again.metrics == ["accuracy": 0.85] && changed != again)
        // And coded as it always was.
        let decoded = try JSONDecoder().decode(ModelVersion.self, from: try JSONEncoder().encode(again))
        #expect(decoded == read)
        let keys = try #require(try JSONSerialization.jsonObject(with: try JSONEncoder().encode(read)) as? [String: Any]).keys
        #expect(Set(keys) == ["model", "number", "status", "fingerprint", "params", "metrics", "gateResults", "tags", "createdAt", "attempts"])
    }

    @Test func everythingSurvivesReopeningTheDatabase() async throws {
        try await registry.upsertModel(name: "churn", description: "d", labels: ["a": "b"])
        let v1 = try await validated("churn", "f1")
        try await registry.setAlias("champion", of: "churn", to: v1.number, commit: nil, reason: "r")
        try registry.database.close()
        let reopened = EmbeddedRegistry(database: try StateDatabase(stateDirectory: dir.path))
        #expect(try await reopened.model(named: "churn")?.labels == ["a": "b"])
        #expect(try await reopened.resolveAlias("champion", of: "churn") == v1.number)
        #expect(try await reopened.version(of: "churn", number: 1)?.metrics == ["accuracy": 0.9])
    }
}

/// The registry's generation, and snapshots refreshed from it.
struct RegistryGenerationTests {
    let dir: TemporaryDirectory
    let registry: EmbeddedRegistry

    init() throws {
        dir = try TemporaryDirectory()
        registry = EmbeddedRegistry(database: try StateDatabase(stateDirectory: dir.path))
    }

    /// Runs `change` and tells whether the generation moved.
    func moves(_ change: () async throws -> Void) async throws -> Bool {
        let before = try await registry.generation()
        try await change()
        return try await registry.generation() != before
    }

    @Test func everyChangeMovesTheGenerationAndNothingElseDoes() async throws {
        #expect(try await moves { try await registry.upsertModel(name: "churn", description: nil, labels: [:]) })
        #expect(try await !moves { try await registry.upsertModel(name: "churn", description: nil, labels: [:]) })
        #expect(try await moves { try await registry.upsertModel(name: "churn", description: "d", labels: [:]) })
        #expect(try await moves { _ = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f1")) })
        #expect(try await moves { try await registry.updateVersion(model: "churn", number: 1, VersionUpdate(status: .validated)) })
        #expect(try await !moves { try await registry.updateVersion(model: "churn", number: 1, VersionUpdate()) })
        #expect(try await moves { try await registry.setAlias("champion", of: "churn", to: 1, commit: nil, reason: "r") })
        #expect(try await !moves { try await registry.setAlias("champion", of: "churn", to: 1, commit: nil, reason: "again") })
        #expect(try await moves { try await registry.deleteAlias("champion", of: "churn", commit: nil, reason: "r") })
        #expect(try await !moves { try await registry.deleteAlias("champion", of: "churn", commit: nil, reason: "gone") })
        // Reads and refused writes leave it.
        #expect(try await !moves { _ = try await registry.snapshot() })
        #expect(try await !moves { _ = try? await registry.createVersion(NewVersion(model: "churn", fingerprint: "f1")) })
        // Generations only grow.
        var seen: [Int64] = [try await registry.generation()]
        for i in 2...5 {
            _ = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f\(i)"))
            seen.append(try await registry.generation())
        }
        #expect(seen == seen.sorted() && Set(seen).count == seen.count)
    }

    /// After each kind of change, a refreshed snapshot is exactly what a full read gives; with no
    /// change it is the snapshot it was given.
    @Test func aRefreshedSnapshotEqualsAFullRead() async throws {
        var current = try await registry.snapshot(refreshing: nil)
        #expect(current.snapshot == RegistrySnapshot(models: [], versions: [:], aliases: [:]))
        let steps: [(String, () async throws -> Void)] = [
            ("register two models", {
                try await registry.upsertModel(name: "fraud", description: nil, labels: ["team": "risk"])
                try await registry.upsertModel(name: "churn", description: nil, labels: [:])
            }),
            ("create versions", {
                for f in ["f1", "f2", "f3"] { _ = try await registry.createVersion(NewVersion(model: "churn", fingerprint: f, params: ["lr": .double(0.1)])) }
                _ = try await registry.createVersion(NewVersion(model: "fraud", fingerprint: "g1"))
            }),
            ("validate and point aliases", {
                for n in [1, 3] {
                    try await registry.updateVersion(model: "churn", number: n, VersionUpdate(
                        status: .validated, metrics: ["accuracy": 0.9], gateResults: [GateResult(gate: "g", passed: true, detail: "ok")]))
                }
                try await registry.setAlias("champion", of: "churn", to: 1, commit: nil, reason: "r")
                try await registry.setAlias("challenger", of: "churn", to: 3, commit: nil, reason: "r")
            }),
            ("move one alias", { try await registry.setAlias("champion", of: "churn", to: 3, commit: nil, reason: "r") }),
            ("delete one alias", { try await registry.deleteAlias("challenger", of: "churn", commit: nil, reason: "r") }),
            ("delete the last alias", { try await registry.deleteAlias("champion", of: "churn", commit: nil, reason: "r") }),
            ("a new model between the others", { try await registry.upsertModel(name: "dunning", description: "d", labels: [:]) }),
            ("change a model", { try await registry.upsertModel(name: "fraud", description: "now described", labels: [:]) }),
            ("archive and fail versions", {
                try await registry.updateVersion(model: "churn", number: 2, VersionUpdate(status: .failed, logTail: "boom", failedAt: 5))
                try await registry.updateVersion(model: "churn", number: 1, VersionUpdate(archivedAt: 6))
            }),
            ("nothing", {}),
        ]
        for (name, step) in steps {
            try await step()
            let refreshed = try await registry.snapshot(refreshing: current)
            let full = try await registry.snapshot(refreshing: nil)
            #expect(refreshed == full, "\(name)")
            #expect(refreshed.generation == (try await registry.generation()), "\(name)")
            // The refresh names the models it read again: every model that differs, at least.
            if refreshed.generation != current.generation, let since = current.generation {
                let refresh = try #require(refreshed.refreshed, "\(name)")
                #expect(refresh.since == since, "\(name)")
                let differ = Set(full.snapshot.models.map(\.name)).union(current.snapshot.models.map(\.name)).filter { model in
                    full.snapshot.models.first { $0.name == model } != current.snapshot.models.first { $0.name == model }
                        || full.snapshot.versions[model] != current.snapshot.versions[model]
                        || full.snapshot.aliases[model] != current.snapshot.aliases[model]
                }
                #expect(!differ.isEmpty && differ.isSubset(of: refresh.models), "\(name): \(differ.sorted()) ⊄ \(refresh.models.sorted())")
            }
            current = refreshed
        }
        #expect(current.snapshot.models.map(\.name) == ["churn", "dunning", "fraud"])
        #expect(current.snapshot.aliases["churn"] == nil)
        #expect(current.snapshot.versions["churn"]?.map(\.status) == [.validated, .failed, .validated])
    }

    /// Another program writing the database (a seeding script, sqlite3) moves the generation too;
    /// a row it deletes makes the next refresh read everything again.
    @Test func anotherProgramsWritesAreSeen() async throws {
        try await registry.upsertModel(name: "churn", description: nil, labels: [:])
        _ = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f1"))
        _ = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f2"))
        let before = try await registry.snapshot(refreshing: nil)
        let script = """
            import sqlite3, sys
            con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
            con.execute("PRAGMA foreign_keys = ON")
            con.execute(sys.argv[2])
            con.close()
            """
        func python(_ sql: String) throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["python3", "-c", script, registry.database.path, sql]
            try process.run()
            process.waitUntilExit()
            #expect(process.terminationStatus == 0, "\(sql)")
        }

        try python("INSERT INTO versions (model, number, status, fingerprint, created_at) VALUES ('churn', 3, 'trained', 'f3', 9)")
        let inserted = try await registry.snapshot(refreshing: before)
        #expect((inserted.generation ?? 0) > (before.generation ?? 0))
        #expect(inserted.snapshot.versions["churn"]?.map(\.number) == [1, 2, 3])
        #expect(inserted == (try await registry.snapshot(refreshing: nil)))

        try python("UPDATE versions SET status = 'validated' WHERE number = 3")
        try python("INSERT INTO aliases (model, alias, version, updated_at) VALUES ('churn', 'champion', 3, 10)")
        let updated = try await registry.snapshot(refreshing: inserted)
        #expect(updated.snapshot.versions["churn"]?.last?.status == .validated)
        #expect(updated.snapshot.aliases == ["churn": ["champion": 3]])

        try python("DELETE FROM versions WHERE number = 2")
        let removed = try await registry.snapshot(refreshing: updated)
        #expect(removed.snapshot.versions["churn"]?.map(\.number) == [1, 3])
        #expect(removed == (try await registry.snapshot(refreshing: nil)))
    }

    /// A snapshot from a later state than the database's (another database, a restored backup)
    /// is not trusted: everything is read again.
    @Test func aSnapshotFromALaterStateIsReadAgain() async throws {
        try await registry.upsertModel(name: "churn", description: nil, labels: [:])
        let now = try await registry.snapshot(refreshing: nil)
        var foreign = now
        foreign.generation = (now.generation ?? 0) + 1_000_000
        foreign.snapshot.models = []
        #expect(try await registry.snapshot(refreshing: foreign) == now)
        // And one of the same generation is taken as it is (that is what the generation is for).
        #expect(try await registry.snapshot(refreshing: now) == now)
    }
}
