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
