import CapstanCore
@testable import CapstanStore
import Foundation
import GRDB
import Synchronization
import Testing

/// The `StateStore` port over a real SQLite file: leases, the journal, passes, one-transaction
/// changes, reads, fencing and the classification of its errors.
@Suite struct SQLiteStateStoreTests {
    /// A store of "process a" on a fresh folder, with a manual clock.
    func store(_ temp: TemporaryDirectory, clock: ManualClock, host: String = "host-a", pid: Int64 = 1111) throws -> SQLiteStateStore {
        SQLiteStateStore(database: try StateDatabase(stateDirectory: temp.path), host: host, pid: pid, processStart: pid,
                         now: clock.reading)
    }

    static let endpoint = EndpointStatus(deployment: "churn-api", model: "churn", backends: [], bootID: "boot-1")

    /// One change of every kind.
    static func everyWrite(journal started: Int64, _ other: Int64, pass: Int64) -> StateChanges {
        var changes = StateChanges("record the test's changes")
        changes.record(Samples.event(.version(model: "churn", number: 3), .trained, at: 1_700_000_000_250))
        changes.updateJournal(started, Samples.journalRecords[1].1)
        changes.finishJournal(started)
        changes.failJournal(other, JournalClosing(interrupted: true, error: "killed"), record: Samples.journalRecords[2].1)
        changes.finishPass(pass, commit: "c2", outcome: .progressing, summary: "1 done, 1 waiting")
        changes.setConditions([ObjectCondition(object: .model("churn"), type: .degraded, reason: "TrainingFailed", message: "backoff",
                                               commit: "c2", updatedAt: 5, failureClass: .waiting(until: 9_000))],
                              pruning: [.model])
        changes.setApplied("churn-api", model: "churn", [BackendWeight(version: 3, weight: 100, replicas: 2)])
        changes.setRollout("churn-api", Samples.rollout)
        changes.addQuarantine(Quarantine(deployment: "churn-api", version: 2, specHash: "h1", reason: "error rate", at: 7))
        changes.setObserved([endpoint])
        changes.cacheInputHash(InputHashRecord(path: "/data/a.csv", size: 10, mtimeNanoseconds: 11, inode: 12, digest: "d1", checkedAt: 13))
        changes.cacheInputHash(InputHashRecord(path: "/data/b.csv", size: 20, mtimeNanoseconds: 21, inode: 22, digest: "d2", checkedAt: 23))
        changes.forgetInputHash("/data/b.csv")
        return changes
    }

    @Test func everyWriteOfAChangeLandsInOneCommit() async throws {
        let temp = try TemporaryDirectory()
        let clock = ManualClock()
        let store = try store(temp, clock: clock)
        let first = try await store.beginJournal(Samples.journalRecords[0].1, subject: .model("churn"))
        let second = try await store.beginJournal(Samples.journalRecords[3].1, subject: .model("churn"))
        let pass = try await store.startPass(command: "capstan apply", commit: "c1")
        // A condition of a model that is no longer listed is pruned; a deployment's is kept.
        var earlier = StateChanges("record conditions")
        earlier.setConditions([
            ObjectCondition(object: .model("gone"), type: .ready, reason: "Converged", message: "", commit: "c1", updatedAt: 1),
            ObjectCondition(object: .deployment("churn-api"), type: .ready, reason: "Converged", message: "", commit: "c1", updatedAt: 1),
        ])
        try await store.commit(earlier)
        clock.advance(seconds: 2)

        try await store.commit(Self.everyWrite(journal: first, second, pass: pass))

        let events = try await store.auditEvents(AuditQuery())
        #expect(events.map(\.object) == [.version(model: "churn", number: 3)])
        #expect(events.first?.at == 1_700_000_000_250)
        #expect(try await store.unfinishedJournal() == [])
        let finished = try #require(try await store.journalEntry(first))
        #expect(finished.state == .finished)
        #expect(finished.finishedAt == clock.now())
        #expect(finished.record == Samples.journalRecords[1].1)
        let failed = try #require(try await store.journalEntry(second))
        #expect(failed.state == .failed)
        #expect(failed.operation == .registerModel)
        #expect(failed.record == Samples.journalRecords[2].1)
        #expect(try await store.journalClosing(second) == JournalClosing(interrupted: true, error: "killed"))
        let passes = try await store.recentPasses(limit: 5)
        #expect(passes == [PassRecord(id: pass, command: "capstan apply", commit: "c2", startedAt: clock.now() - 2000,
                                      finishedAt: clock.now(), outcome: .progressing, summary: "1 done, 1 waiting")])
        #expect(try await store.conditions().map(\.object) == [.deployment("churn-api"), .model("churn")])
        #expect(try await store.conditions().last?.failureClass == .waiting(until: 9_000))
        let serving = try await store.servingRecords()
        #expect(serving.applied == ["churn-api": [BackendWeight(version: 3, weight: 100, replicas: 2)]])
        #expect(serving.rollouts == ["churn-api": Samples.rollout])
        #expect(serving.quarantine == [Quarantine(deployment: "churn-api", version: 2, specHash: "h1", reason: "error rate", at: 7)])
        #expect(serving.observed == ["churn-api": Self.endpoint])
        #expect(try await store.inputHashes(["/data/a.csv", "/data/b.csv", "/data/c.csv"]) == [
            "/data/a.csv": InputHashRecord(path: "/data/a.csv", size: 10, mtimeNanoseconds: 11, inode: 12, digest: "d1", checkedAt: 13),
        ])
        // A rollout removed, an endpoint's weights removed.
        var removal = StateChanges("retire churn-api")
        removal.setRollout("churn-api", nil)
        removal.setApplied("churn-api", model: "churn", nil)
        try await store.commit(removal)
        #expect(try await store.servingRecords().rollouts.isEmpty)
        #expect(try await store.servingRecords().applied.isEmpty)
    }

    /// A write that fails in the middle of a change (here: closing a journal entry that is
    /// already closed) leaves nothing of the change, before or after it; the error says what the
    /// change was.
    @Test func aFailingWriteInTheMiddleLeavesNothing() async throws {
        let temp = try TemporaryDirectory()
        let clock = ManualClock()
        let store = try store(temp, clock: clock)
        let closed = try await store.beginJournal(Samples.journalRecords[0].1, subject: .model("churn"))
        var finish = StateChanges("finish")
        finish.finishJournal(closed)
        try await store.commit(finish)
        let open = try await store.beginJournal(Samples.journalRecords[2].1, subject: .model("churn"))
        let pass = try await store.startPass(command: "capstan apply", commit: "c1")
        let before = try FencingTests.dump(store.database)

        var changes = Self.everyWrite(journal: open, closed, pass: pass)
        changes.record(Samples.event(.model("churn"), .update))
        let error = await #expect(throws: StoreError.self) { try await store.commit(changes) }
        #expect(error?.message.contains("cannot mark journal entry \(closed) failed") == true, "\(error?.message ?? "")")
        #expect(error?.message.contains("it is already finished") == true)
        #expect(try FencingTests.dump(store.database) == before)
        #expect(try await store.unfinishedJournal().map(\.id) == [open])
    }

    /// A store fenced by a lease writes while it holds the lease; once another process took the
    /// lease over, every kind of write is refused with `.leaseLost` (`onLost` is told once), and
    /// nothing is written.
    @Test func aFencedStoreRefusesEveryWriteAfterATakeover() async throws {
        let temp = try TemporaryDirectory()
        let clock = ManualClock()
        let a = try store(temp, clock: clock)
        let b = try store(temp, clock: clock, host: "host-b", pid: 2222)
        let grant = try await a.acquireLease(name: StateLock.apply, holder: "pass-a", command: "capstan run", ttlMilliseconds: 30_000,
                                             waitMilliseconds: 0)
        let lost = Mutex<[String]>([])
        let fenced = a.fencedStore(by: grant.fence) { error in lost.withLock { $0.append("\(error)") } }
        #expect(fenced.fence == grant.fence)
        #expect((a.fenced(by: grant.fence) { _ in } as? SQLiteStateStore)?.fence == grant.fence)

        // While the lease is held, each kind of write goes through.
        let started = try await fenced.beginJournal(Samples.journalRecords[0].1, subject: .model("churn"))
        let other = try await fenced.beginJournal(Samples.journalRecords[3].1, subject: .model("churn"))
        let pass = try await fenced.startPass(command: "capstan run", commit: "c1")
        try await fenced.checkLease()
        try await fenced.renewLease(grant.fence, ttlMilliseconds: 30_000)
        try await fenced.registry.upsertModel(name: "churn", description: nil, labels: [:])
        #expect(lost.withLock { $0.isEmpty })

        // The lease expires; process b takes it over.
        clock.advance(seconds: 31)
        let takeover = try await b.acquireLease(name: StateLock.apply, holder: "pass-b", command: "capstan apply",
                                                ttlMilliseconds: 30_000, waitMilliseconds: 0)
        #expect(takeover.tookOver?.holder == "pass-a")
        #expect(takeover.lease.generation == grant.lease.generation + 1)
        let before = try FencingTests.dump(a.database)

        var writes: [(String, () async throws -> Void)] = [
            ("beginJournal", { _ = try await fenced.beginJournal(Samples.journalRecords[0].1, subject: .model("churn")) }),
            ("startPass", { _ = try await fenced.startPass(command: "capstan run", commit: "c2") }),
            ("checkLease", { try await fenced.checkLease() }),
            ("registry.upsertModel", { try await fenced.registry.upsertModel(name: "fraud", description: nil, labels: [:]) }),
            ("registry.createVersion", { _ = try await fenced.registry.createVersion(NewVersion(model: "churn", fingerprint: "f9")) }),
        ]
        for (i, write) in Self.everyWrite(journal: started, other, pass: pass).writes.enumerated() {
            writes.append(("commit \(i) (\(write))", {
                var one = StateChanges("one write")
                one = Self.only(write, in: one)
                try await fenced.commit(one)
            }))
        }
        for (name, write) in writes {
            do {
                try await write()
                Issue.record("\(name) wrote although the lease was taken over")
            } catch let error as StoreError {
                #expect(error.code == .leaseLost, "\(name): \(error)")
                #expect(error.message.contains("lock 'apply' is now held by holder pass-b (pid 2222 on host host-b, running 'capstan apply'), generation \(takeover.lease.generation)"),
                        "\(name): \(error.message)")
                #expect(error.failure == .transient(.leaseLost, error.message), "\(name)")
            } catch {
                Issue.record("\(name) threw \(error), not a lost lease")
            }
        }
        #expect(try FencingTests.dump(a.database) == before)
        #expect(lost.withLock { $0.count } == 1)
        // Renewing the lost lease fails; releasing it leaves the new holder's lease alone.
        await #expect(throws: StoreError.self) { try await a.renewLease(grant.fence, ttlMilliseconds: 30_000) }
        try await a.releaseLease(grant.fence)
        #expect(try await a.leases() == [takeover.lease])
        try await b.releaseLease(takeover.fence)
        #expect(try await a.leases() == [])
    }

    static func only(_ write: StateChanges.Write, in changes: StateChanges) -> StateChanges {
        var changes = changes
        switch write {
        case .audit(let e): changes.record(e)
        case .updateJournal(let id, let r): changes.updateJournal(id, r)
        case .closeJournal(let id, let state, let closing, let record):
            if state == .finished { changes.finishJournal(id, record: record) } else { changes.failJournal(id, closing, record: record) }
        case .finishPass(let id, let commit, let outcome, let summary): changes.finishPass(id, commit: commit, outcome: outcome, summary: summary)
        case .setConditions(let c, let pruning): changes.setConditions(c, pruning: pruning)
        case .removeConditions(let objects): changes.removeConditions(objects)
        case .setApplied(let d, let m, let w): changes.setApplied(d, model: m, w)
        case .setRollout(let d, let r): changes.setRollout(d, r)
        case .addQuarantine(let q): changes.addQuarantine(q)
        case .setObserved(let e): changes.setObserved(e)
        case .cacheInputHash(let r): changes.cacheInputHash(r)
        case .forgetInputHash(let p): changes.forgetInputHash(p)
        }
        return changes
    }

    /// A held lock through the port: `.locked`, transient, after waiting; the waiter gets it once
    /// the holder lets go.
    @Test func leasesThroughThePort() async throws {
        let temp = try TemporaryDirectory()
        let clock = ManualClock()
        let a = try store(temp, clock: clock)
        let b = try store(temp, clock: clock, host: "host-b", pid: 2222)
        let grant = try await a.acquireLease(name: StateLock.apply, holder: "h-a", command: "capstan apply", ttlMilliseconds: 60_000,
                                             waitMilliseconds: 0)
        #expect(grant.lease == Lease(name: "apply", holder: "h-a", generation: 1, host: "host-a", pid: 1111, processStart: 1111,
                                     command: "capstan apply", startedAt: clock.now(), expiresAt: clock.now() + 60_000))
        let error = await #expect(throws: StoreError.self) {
            try await b.acquireLease(name: StateLock.apply, holder: "h-b", command: "capstan run", ttlMilliseconds: 60_000,
                                     waitMilliseconds: 200)
        }
        #expect(error?.code == .locked)
        #expect(error?.message.contains("is still locked after waiting 0.2s: lock 'apply' is held by holder h-a") == true, "\(error?.message ?? "")")
        #expect(error?.failure == .transient(.locked, error?.message ?? ""))

        clock.advance(seconds: 30)
        try await a.renewLease(grant.fence, ttlMilliseconds: 60_000)
        #expect(try await b.leases().map(\.expiresAt) == [clock.now() + 60_000])
        try await a.releaseLease(grant.fence)
        let next = try await b.acquireLease(name: StateLock.apply, holder: "h-b", command: "capstan run", ttlMilliseconds: 60_000,
                                            waitMilliseconds: 0)
        #expect(next.tookOver == nil)
        #expect(next.lease.generation == 2)

        // `capstan unlock`: a lease of another host that is still renewed needs --force.
        let held = try #require(try a.lease(holder: "h-b"))
        guard case .holderMayBeAlive = a.unlockCheck(held) else {
            Issue.record("a renewed lease of another host may be removed without --force")
            return
        }
        #expect(try a.forceUnlock(holder: "h-b", generation: 1) == nil)
        #expect(try a.forceUnlock(holder: "h-b") == next.lease)
        #expect(try await a.leases() == [])
    }

    @Test func aNewPassMarksOneLeftRunningInterrupted() async throws {
        let temp = try TemporaryDirectory()
        let clock = ManualClock()
        let store = try store(temp, clock: clock)
        let killed = try await store.startPass(command: "capstan run", commit: "c1")
        clock.advance(seconds: 1)
        let next = try await store.startPass(command: "capstan run", commit: nil)
        let passes = try await store.recentPasses(limit: 10)
        #expect(passes.map(\.id) == [next, killed])
        #expect(passes.map(\.outcome) == [.running, .interrupted])
        #expect(passes.last?.finishedAt == clock.now())
        #expect(try await store.recentPasses(limit: 1).map(\.id) == [next])
    }

    /// Every failure class, and none, reads back as written; pruning removes only the kinds asked.
    @Test func conditionsKeepTheirFailureClass() async throws {
        let temp = try TemporaryDirectory()
        let store = try store(temp, clock: ManualClock())
        let classes: [ReconcileFailure.Class?] = [nil, .stalled, .waiting(until: 1_700_000_060_000), .waiting(until: nil), .transient, .terminal]
        let conditions = classes.enumerated().map { i, failureClass in
            ObjectCondition(object: i % 2 == 0 ? .model("m\(i)") : .deployment("d\(i)"), type: failureClass == nil ? .ready : .degraded,
                            reason: "R\(i)", message: "message \(i)", commit: i == 0 ? nil : "c\(i)", updatedAt: Int64(i),
                            failureClass: failureClass)
        }
        var changes = StateChanges("record conditions")
        changes.setConditions(conditions)
        try await store.commit(changes)
        #expect(try await store.conditions() == conditions.sorted { $0.object < $1.object })
        let stored = try store.database.read("test") { db in
            try Row.fetchAll(db, sql: "SELECT failure_class, until_at FROM conditions ORDER BY updated_at")
        }
        #expect(stored.map { $0["failure_class"] as String? } == [nil, "stalled", "waiting", "waiting", "transient", "terminal"])
        #expect(stored.map { $0["until_at"] as Int64? } == [nil, nil, 1_700_000_060_000, nil, nil, nil])

        // The next pass desires only m0 and d1: the other models go, the deployments stay.
        var next = StateChanges("record conditions")
        next.setConditions([conditions[0]], pruning: [.model])
        try await store.commit(next)
        #expect(try await store.conditions().map(\.object) == [.deployment("d1"), .deployment("d3"), .deployment("d5"), .model("m0")])
        var both = StateChanges("record conditions")
        both.setConditions([conditions[1]], pruning: [.model, .deployment])
        try await store.commit(both)
        #expect(try await store.conditions().map(\.object) == [.deployment("d1")])
    }

    /// A stored condition of an object no Capstan names is refused by name, and pruning leaves it.
    @Test func aForeignConditionIsRefusedByName() async throws {
        let temp = try TemporaryDirectory()
        let store = try store(temp, clock: ManualClock())
        try await store.database.write("test") { db in
            try db.execute(sql: "INSERT INTO conditions (object, type, reason, updated_at) VALUES ('pipeline/x', 'Ready', 'R', 1)")
        }
        var changes = StateChanges("record conditions")
        changes.setConditions([], pruning: [.model, .deployment])
        try await store.commit(changes)
        let error = await #expect(throws: StoreError.self) { try await store.conditions() }
        #expect(error?.code == .foreignRecord)
        #expect(error?.message.contains("the condition of 'pipeline/x' in '\(store.location)' is about no object Capstan knows") == true,
                "\(error?.message ?? "")")
    }

    @Test func auditEventsFilterByObjectTimeAndId() async throws {
        let temp = try TemporaryDirectory()
        let store = try store(temp, clock: ManualClock())
        var changes = StateChanges("record events")
        let objects: [ObjectRef] = [.model("churn"), .version(model: "churn", number: 1), .alias(model: "churn", alias: "champion"),
                                    .model("churner"), .deployment("churn"), .deployment("churn-api")]
        for (i, object) in objects.enumerated() {
            changes.record(Samples.event(object, .update, at: Samples.time + Int64(i) * 1000))
        }
        try await store.commit(changes)
        func objectsOf(_ query: AuditQuery) async throws -> [ObjectRef] { try await store.auditEvents(query).map(\.object) }
        #expect(try await objectsOf(AuditQuery(.object(.model("churn")))) == [objects[2], objects[1], objects[0]])
        #expect(try await objectsOf(AuditQuery(.object(.deployment("churn")))) == [objects[4]])
        #expect(try await objectsOf(AuditQuery(since: Samples.time + 4000)) == [objects[5], objects[4]])
        #expect(try await objectsOf(AuditQuery(.object(.model("churn")), afterID: 2)) == [objects[2]])
        #expect(try await objectsOf(AuditQuery(limit: 1)) == [objects[5]])
    }

    @Test func inputHashPathsAreThePathAndWhatIsBelowIt() async throws {
        let temp = try TemporaryDirectory()
        let store = try store(temp, clock: ManualClock())
        var changes = StateChanges("cache input hashes")
        for path in ["/data/a", "/data/a/x.csv", "/data/a/y/z.csv", "/data/ab", "/data/a0", "/data/a.csv", "/data"] {
            changes.cacheInputHash(InputHashRecord(path: path, size: 1, mtimeNanoseconds: 2, inode: 3, digest: "d", checkedAt: 4))
        }
        try await store.commit(changes)
        #expect(try await store.inputHashPaths(atOrBelow: "/data/a") == ["/data/a", "/data/a/x.csv", "/data/a/y/z.csv"])
        #expect(try await store.inputHashPaths(atOrBelow: "/data/a/y") == ["/data/a/y/z.csv"])
        #expect(try await store.inputHashPaths(atOrBelow: "/elsewhere") == [])
        #expect(try await store.inputHashes(["/data/ab", "/nothing"]).keys.sorted() == ["/data/ab"])
    }

    /// What the loop does about each error of the store: the class and reason the engine reads
    /// instead of the error's type or text.
    @Test(arguments: [
        (StoreError.Code.leaseLost, ReconcileFailure.Class.transient, FailureReason.leaseLost),
        (.locked, .transient, .locked),
        (.diskFull, .transient, .diskFull),
        (.damagedDatabase, .transient, .stateUnavailable),
        (.newerDatabase, .transient, .stateUnavailable),
        (.foreignDatabase, .transient, .stateUnavailable),
        (.databaseFailure, .transient, .stateUnavailable),
        (.foreignRecord, .transient, .stateUnavailable),
        (.fileSystem, .transient, .stateUnavailable),
        (.holderAlive, .transient, .stateUnavailable),
        (.readOnlyFileSystem, .transient, .stateUnavailable),
        (.permissionDenied, .transient, .stateUnavailable),
        (.invalidDigest, .transient, .stateUnavailable),
        (.artifactModified, .terminal, .artifactChanged),
        (.artifactMissing, .terminal, .artifactChanged),
        (.unsupportedEntry, .waiting(until: nil), .invalidOutput),
    ])
    func storeErrorsAreClassified(_ code: StoreError.Code, _ failureClass: ReconcileFailure.Class, _ reason: FailureReason) {
        let error = StoreError(code: code, message: "what went wrong with '/state/capstan.db'", path: "/state/capstan.db")
        let classified: any ClassifiedError = error
        #expect(classified.failure == ReconcileFailure(failureClass, reason, "what went wrong with '/state/capstan.db'"))
    }
}
