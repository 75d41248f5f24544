import CapstanCore
import CapstanEngine
import CapstanGit
import CapstanRunner
import CapstanStore
import Foundation
import Synchronization
import Testing
@testable import CapstanTestSupport

/// What a long-lived reconciler (the controller's) keeps between passes: the parse cache, the
/// registry snapshot (refreshed by the registry's generation) and the conditions it recorded
/// (only those that changed are written). Real Git repositories, a real state database, real
/// trainings (`sh`).
struct ReconcilerReuseTests {
    final class Fixture {
        let dir: TempDir
        let repo: GitRepo
        let store: SQLiteStateStore
        /// Moves a millisecond on every reading, so that a condition written again has another
        /// time; `advance` jumps.
        final class Clock: Sendable {
            let time = Mutex<Int64>(1_700_000_000_000)
            func now() -> Int64 { time.withLock { $0 += 1; return $0 } }
        }

        let clock = Clock()

        func advance(milliseconds: Int64) { clock.time.withLock { $0 += milliseconds } }

        init(models: [String]) throws {
            dir = try TempDir()
            repo = try GitRepo(at: dir.sub("repo"))
            store = try SQLiteStateStore(stateDirectory: dir.sub("state").path)
            try repo.write("capstan.yaml", """
                apiVersion: capstan/v1
                kind: Config
                metadata: {name: default}
                spec:
                  manifests: [models]

                """)
            for name in models { try write(model: name) }
            try repo.commit("models \(models.joined(separator: ", "))")
        }

        func write(model name: String, command: String = #"'echo model > "$CAPSTAN_OUTPUT_DIR/model.txt"'"#,
                   inputs: [String] = [], description: String? = nil) throws {
            try repo.write("models/\(name)/model.yaml", """
                apiVersion: capstan/v1
                kind: Model
                metadata: {name: \(name)}
                spec:
                \(description.map { "  description: \($0)\n" } ?? "")  train:
                    command: [sh, -c, \(command)]
                    workdir: models/\(name)
                \(inputs.isEmpty ? "" : "    inputs: [\(inputs.joined(separator: ", "))]\n")  aliases: {champion: latest}

                """)
        }

        /// A reconciler as a command wires one: the Git source, the state database and its
        /// registry, local subprocesses and artifacts.
        func reconciler() -> Reconciler {
            let store = self.store
            let clock = self.clock
            let source = GitSourceRepository(source: GitSource(
                location: .local(path: repo.path),
                options: GitSourceOptions(stateDirectory: dir.sub("state").path, credentials: GitCredentials(environment: [:]))))
            return Reconciler(ports: ReconcilerPorts(
                source: source, store: store, registry: store.registry,
                fenced: { fence, onLost in
                    let fenced = store.fencedStore(by: fence, onLost: onLost)
                    return (fenced, fenced.registry)
                },
                runner: LocalStepRunner(), artifacts: LocalArtifactStore(stateDirectory: dir.sub("state").path),
                serving: { _ in nil }, workFolder: dir.sub("state").path, actor: "test", host: "localhost",
                now: { clock.now() }))
        }

        /// Expects `reconciler`'s plan at main to be the one a fresh reconciler makes from scratch
        /// (but for their creation times), and returns it.
        @discardableResult
        func expectSamePlan(_ reconciler: Reconciler, _ what: String, sourceLocation: Testing.SourceLocation) async throws -> Plan {
            var kept = try await reconciler.plan(at: "main", fetch: false).plan
            var fresh = try await self.reconciler().plan(at: "main", fetch: false).plan
            kept.createdAt = 0
            fresh.createdAt = 0
            #expect(kept == fresh, "\(what)", sourceLocation: sourceLocation)
            return kept
        }

        /// One pass of `reconciler` at main, under the lease, as the controller runs it.
        func pass(_ reconciler: Reconciler) async throws -> PassReport {
            let keeper = try await LeaseKeeper.acquire(store, holder: UUID().uuidString, command: "test", waitMilliseconds: 0)
            do {
                let report = try await reconciler.pass(at: "main", fence: keeper.fence, command: "test", fetch: false,
                                                       events: { _ in }, onLeaseLost: { _ in })
                await keeper.release()
                return report
            } catch {
                await keeper.release()
                throw error
            }
        }
    }

    /// A pass over the commit the last pass saw parses no file, reads the registry only for its
    /// generation, and writes no condition: each keeps the time at which it was set.
    @Test func aPassOverAnUnchangedCommitReadsAndWritesNothingAgain() async throws {
        let f = try Fixture(models: ["a", "b"])
        let reconciler = f.reconciler()
        let first = try await f.pass(reconciler)
        #expect(first.outcome == .converged, "\(first.summary)")
        #expect(Set(first.plan.changes.filter { $0.action == .train }.map(\.name)) == ["a", "b"])
        let decoded = reconciler.parsedFiles.decodedFiles
        #expect(decoded == 3)
        let conditions = try await f.store.conditions()
        #expect(conditions.map(\.object) == [.model("a"), .model("b")])
        #expect(reconciler.registryGeneration == (try await f.store.registry.generation()))

        let second = try await f.pass(reconciler)
        #expect(second.outcome == .converged)
        #expect(second.plan.changes.isEmpty)
        #expect(reconciler.parsedFiles.decodedFiles == decoded)
        #expect(try await f.store.conditions() == conditions)
        #expect(reconciler.registryGeneration == (try await f.store.registry.generation()))
    }

    /// After a commit that changes one model, the long-lived reconciler plans that model again
    /// and keeps the others' entries: the plan is the one a fresh reconciler makes from scratch,
    /// for a changed model, a changed description and after a later commit that changes another.
    @Test func aCommitThatChangesOneModelPlansAsAFreshReconciler() async throws {
        let f = try Fixture(models: ["a", "b", "c"])
        let reconciler = f.reconciler()
        #expect(try await f.pass(reconciler).outcome == .converged)
        func expectSamePlan(_ what: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) async throws {
            try await f.expectSamePlan(reconciler, what, sourceLocation: sourceLocation)
        }
        try f.write(model: "b", command: #"'echo other > "$CAPSTAN_OUTPUT_DIR/model.txt"'"#)
        try f.repo.commit("b trains otherwise")
        try await expectSamePlan("b changed")
        let changed = try await reconciler.plan(at: "main", fetch: false).plan
        #expect(changed.changes.filter { $0.action == .train }.map(\.name) == ["b"])
        #expect(try await f.pass(reconciler).outcome == .converged)
        try f.repo.write("models/c/model.yaml", try String(contentsOfFile: f.repo.path + "/models/c/model.yaml", encoding: .utf8)
            .replacingOccurrences(of: "  train:", with: "  description: now described\n  train:"))
        try f.repo.commit("c described")
        try await expectSamePlan("c's description")
        #expect(try await reconciler.plan(at: "main", fetch: false).plan.changes.map(\.action) == [.updateModel])
    }

    /// The kept snapshot is refreshed when the registry moves, whoever moved it: a description
    /// changed behind Capstan's back is seen (and corrected) by the next pass at the same commit,
    /// and a version written by that pass is in the snapshot it keeps.
    @Test func theKeptSnapshotFollowsEveryRegistryWrite() async throws {
        let f = try Fixture(models: ["a"])
        let reconciler = f.reconciler()
        #expect(try await f.pass(reconciler).outcome == .converged)
        let before = try #require(reconciler.registryGeneration)

        try await f.store.registry.upsertModel(name: "a", description: "changed outside Capstan", labels: [:])
        let corrected = try await f.pass(reconciler)
        #expect(corrected.plan.changes.map(\.action) == [.updateModel])
        #expect(try await f.store.registry.model(named: "a")?.description != "changed outside Capstan")
        let after = try #require(reconciler.registryGeneration)
        #expect(after > before)
        #expect(after == (try await f.store.registry.generation()))

        // A new model trained by a pass: its version is in the kept snapshot, so the next pass
        // plans nothing.
        try f.write(model: "b")
        try f.repo.commit("model b")
        let trained = try await f.pass(reconciler)
        #expect(trained.plan.changes.filter { $0.action == .train }.map(\.name) == ["b"])
        #expect(try await f.pass(reconciler).plan.changes.isEmpty)
    }

    /// The conditions of models no longer in Git are removed; and what this reconciler remembers
    /// of the stored conditions is not trusted after another process ran a pass (an `apply`
    /// from cron): it reads them again.
    @Test func conditionsFollowTheStoreWhenAnotherPassRan() async throws {
        let f = try Fixture(models: ["a", "b"])
        let controller = f.reconciler()
        #expect(try await f.pass(controller).outcome == .converged)
        let b = try #require(try await f.store.conditions().first { $0.object == .model("b") })

        // Another process removes model b from Git and reconciles: b's condition goes.
        try f.repo.remove("models/b/model.yaml")
        try f.repo.commit("no model b")
        #expect(try await f.pass(f.reconciler()).outcome == .converged)
        #expect(try await f.store.conditions().map(\.object) == [.model("a")])

        // b is back; its condition is the one the controller wrote before, which it must not
        // take as still stored.
        try f.write(model: "b")
        try f.repo.commit("model b again")
        #expect(try await f.pass(controller).outcome == .converged)
        let conditions = try await f.store.conditions()
        #expect(conditions.map(\.object) == [.model("a"), .model("b")])
        let again = try #require(conditions.first { $0.object == .model("b") })
        #expect(again.type == b.type && again.reason == b.reason)

        // And the controller removes it itself when b goes again.
        try f.repo.remove("models/b/model.yaml")
        try f.repo.commit("no model b, again")
        #expect(try await f.pass(controller).outcome == .converged)
        #expect(try await f.store.conditions().map(\.object) == [.model("a")])
    }

    /// A pass over an unchanged commit and registry takes the last plan again, but not once a
    /// backoff it waits for has ended: the failed training is retried then.
    @Test func aKeptPlanIsNotTakenOnceItsBackoffEnded() async throws {
        let f = try Fixture(models: [])
        try f.write(model: "f", command: "'exit 3'")
        try f.repo.commit("a model whose training fails")
        let reconciler = f.reconciler()
        #expect(try await f.pass(reconciler).outcome == .failed)
        for _ in 1...2 {
            let waiting = try await f.pass(reconciler)
            #expect(waiting.plan.entries.filter { $0.name == "f" }.map(\.action) == [.wait])
            #expect(waiting.plan.changes.isEmpty)
        }
        f.advance(milliseconds: 61_000)  // The first backoff is a minute.
        let retried = try await f.pass(reconciler)
        #expect(retried.plan.changes.first?.action == .train)
    }

    /// After a commit that only edits files, the long-lived reconciler reads only what changed:
    /// the load is patched (one file decoded), and only the models whose manifest or inputs the
    /// commit touched are resolved again; the plan is the one a fresh reconciler makes.
    @Test func anEditIsReadAloneAndPlansAsAFreshReconciler() async throws {
        let f = try Fixture(models: [])
        for name in ["a", "b", "c"] {
            try f.repo.write("data/\(name).csv", "x,y\n1,\(name)\n")
            try f.write(model: name, inputs: ["data/\(name).csv"])
        }
        try f.repo.commit("three models with data")
        let reconciler = f.reconciler()
        #expect(try await f.pass(reconciler).outcome == .converged)
        func expectSamePlan(_ what: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) async throws -> Plan {
            try await f.expectSamePlan(reconciler, what, sourceLocation: sourceLocation)
        }
        let (patched, resolved, decoded) = (reconciler.patchedLoads, reconciler.resolvedModels, reconciler.parsedFiles.decodedFiles)

        // b's description: one file decoded, one model resolved.
        try f.write(model: "b", inputs: ["data/b.csv"], description: "described")
        try f.repo.commit("b described")
        #expect(try await expectSamePlan("b described").changes.map(\.action) == [.updateModel])
        #expect(reconciler.patchedLoads == patched + 1)
        #expect(reconciler.resolvedModels == resolved + 1)
        #expect(reconciler.parsedFiles.decodedFiles == decoded + 1)
        #expect(try await f.pass(reconciler).outcome == .converged)

        // c's data: no manifest read, c alone resolved, and it retrains.
        let resolvedBefore = reconciler.resolvedModels
        try f.repo.write("data/c.csv", "x,y\n2,c\n")
        try f.repo.commit("new data for c")
        let plan = try await expectSamePlan("c's data")
        #expect(plan.changes.filter { $0.action == .train }.map(\.name) == ["c"])
        #expect(reconciler.resolvedModels == resolvedBefore + 1)
        #expect(reconciler.patchedLoads == patched + 2)
    }

    /// Whatever the patched load could get wrong is read in full: a changed file with an error
    /// (reported exactly as a fresh reconciler reports it), a model renamed in its file, a
    /// capstan.yaml edited, a file added.
    @Test func whatAPatchCannotSayIsReadInFull() async throws {
        let f = try Fixture(models: ["a", "b"])
        let reconciler = f.reconciler()
        #expect(try await f.pass(reconciler).outcome == .converged)
        let patched = reconciler.patchedLoads
        func diagnostics(_ r: Reconciler) async -> [Diagnostic]? {
            do {
                _ = try await r.plan(at: "main", fetch: false)
                return nil
            } catch let invalid as InvalidDesiredState {
                return invalid.load.diagnostics
            } catch {
                return nil
            }
        }
        func expectSamePlan(_ what: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) async throws {
            try await f.expectSamePlan(reconciler, what, sourceLocation: sourceLocation)
        }

        try f.repo.write("models/b/model.yaml", "apiVersion: capstan/v1\nkind: Model\nmetadata: {name: b}\nspec:\n  train: {workdir: nowhere}\n")
        try f.repo.commit("b broken")
        let reported = try #require(await diagnostics(reconciler))
        #expect(!reported.isEmpty)
        #expect(reported == (await diagnostics(f.reconciler())))

        try f.write(model: "b")
        try f.repo.commit("b repaired")
        try await expectSamePlan("b repaired")

        try f.repo.write("models/b/model.yaml", try String(contentsOfFile: f.repo.path + "/models/b/model.yaml", encoding: .utf8)
            .replacingOccurrences(of: "{name: b}", with: "{name: bb}"))
        try f.repo.commit("b renamed bb")
        try await expectSamePlan("b renamed")
        #expect(try await reconciler.plan(at: "main", fetch: false).desired.models.map(\.name) == ["a", "bb"])

        try f.repo.write("capstan.yaml", "apiVersion: capstan/v1\nkind: Config\nmetadata: {name: default}\nspec:\n  manifests: [models]  # edited\n")
        try f.repo.commit("config edited")
        try await expectSamePlan("config edited")
        // The broken commit (an error), its repair (the commit before had errors), the rename
        // (other objects) and the config: each read in full.
        #expect(reconciler.patchedLoads == patched)
    }
}
