import CapstanCore
@testable import CapstanStore
import Foundation
import GRDB
import Testing

/// A clock the test moves by hand (milliseconds since the epoch).
/// `@unchecked Sendable`: every access to `value` goes through `lock`.
final class ManualClock: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Int64

    init(_ start: Int64 = 1_700_000_000_000) { value = start }

    func now() -> Int64 { lock.withLock { value } }
    func advance(seconds: Double) { lock.withLock { value += Int64(seconds * 1000) } }
    var reading: @Sendable () -> Int64 { { self.now() } }
}

@Suite struct StateLockTests {
    /// Two databases on one folder, two pools: as two processes would open it.
    func twoProcesses(_ temp: TemporaryDirectory, clock: ManualClock? = nil) throws -> (StateLock, StateLock) {
        let now = clock?.reading ?? StoreTime.systemMilliseconds
        let first = StateLock(database: try StateDatabase(stateDirectory: temp.path), host: "host-a", pid: 1111, processStart: 111, now: now)
        let second = StateLock(database: try StateDatabase(stateDirectory: temp.path), host: "host-b", pid: 2222, processStart: 222, now: now)
        return (first, second)
    }

    @Test func theSecondProcessFailsAtOnceAndTheMessageNamesTheHolder() async throws {
        let temp = try TemporaryDirectory()
        let clock = ManualClock()
        let (a, b) = try twoProcesses(temp, clock: clock)
        let acquired = try await a.acquire(holder: "holder-a", command: "capstan apply --repo x", ttl: 60)
        #expect(acquired.tookOver == nil)
        #expect(acquired.lease == StateLock.Lease(name: "apply", holder: "holder-a", generation: 1, host: "host-a", pid: 1111,
                                                  processStart: 111, command: "capstan apply --repo x",
                                                  startedAtMilliseconds: clock.now(), expiresAtMilliseconds: clock.now() + 60_000))

        let error = await #expect(throws: StoreError.self) {
            try await b.acquire(holder: "holder-b", command: "capstan apply", ttl: 60)
        }
        #expect(error?.code == .locked)
        let message = error?.message ?? ""
        #expect(message.contains("the state folder '\(temp.path)' is still locked: lock 'apply' is held by holder holder-a (pid 1111 on host host-a, running 'capstan apply --repo x') since 2023-11-14T22:13:20Z; its lease expires at 2023-11-14T22:14:20Z"))
        #expect(message.contains("pass --lock-timeout <duration> (30s, 5m) to wait for it, or, if that process is gone, run `capstan unlock holder-a`"))
        #expect(try b.current().map(\.holder) == ["holder-a"])

        // The synchronous form refuses the same way.
        let syncError = #expect(throws: StoreError.self) {
            try b.tryAcquire(holder: "holder-b", command: "capstan apply", ttl: 60)
        }
        #expect(syncError?.code == .locked)
    }

    @Test func aWaitingProcessGetsTheLockOnceTheHolderReleasesIt() async throws {
        let temp = try TemporaryDirectory()
        let (a, b) = try twoProcesses(temp)
        _ = try await a.acquire(holder: "holder-a", command: "capstan apply", ttl: 60)
        let releaser = Task.detached {
            try await Task.sleep(for: .milliseconds(300))
            return try a.release(holder: "holder-a")
        }
        let acquired = try await b.acquire(holder: "holder-b", command: "capstan apply", ttl: 60, wait: 30)
        #expect(try await releaser.value == true)
        #expect(acquired.lease.holder == "holder-b")
        #expect(acquired.tookOver == nil)
        #expect(try a.current().map(\.holder) == ["holder-b"])
    }

    @Test func waitingRunsOutWhileTheHolderKeepsTheLock() async throws {
        let temp = try TemporaryDirectory()
        let (a, b) = try twoProcesses(temp)
        _ = try await a.acquire(holder: "holder-a", command: "capstan apply", ttl: 60)
        let error = await #expect(throws: StoreError.self) {
            try await b.acquire(holder: "holder-b", command: "capstan run", ttl: 60, wait: 0.3)
        }
        #expect(error?.code == .locked)
        #expect(error?.message.contains("is still locked after waiting 0.3s: lock 'apply' is held by holder holder-a") == true)
        #expect(try b.current().map(\.holder) == ["holder-a"])
    }

    @Test func anExpiredLeaseIsTakenOverAndItsHolderCanNoLongerRenewIt() async throws {
        let temp = try TemporaryDirectory()
        let clock = ManualClock()
        let (a, b) = try twoProcesses(temp, clock: clock)
        let first = try await a.acquire(holder: "holder-a", command: "capstan apply", ttl: 30)

        // Still live one second before it expires.
        clock.advance(seconds: 29)
        await #expect(throws: StoreError.self) { try await b.acquire(holder: "holder-b", command: "capstan apply", ttl: 30) }

        clock.advance(seconds: 1)
        let second = try await b.acquire(holder: "holder-b", command: "capstan apply", ttl: 30)
        #expect(second.tookOver == first.lease)
        #expect(second.lease.holder == "holder-b")
        #expect(second.lease.startedAtMilliseconds == clock.now())

        #expect(first.lease.generation == 1)
        #expect(second.lease.generation == 2)
        let error = #expect(throws: StoreError.self) { try a.renew(first.fence, ttl: 30) }
        #expect(error?.code == .leaseLost)
        #expect(error?.message.contains("this process lost its lease on the state folder '\(temp.path)' (lock 'apply', holder holder-a, generation 1): lock 'apply' is now held by holder holder-b (pid 2222 on host host-b, running 'capstan apply'), generation 2") == true)
        // Releasing the lost lease leaves the new holder's alone.
        #expect(try a.release(holder: "holder-a") == false)
        #expect(try a.current() == [second.lease])
    }

    @Test func renewingKeepsTheLeaseAlive() async throws {
        let temp = try TemporaryDirectory()
        let clock = ManualClock()
        let (a, b) = try twoProcesses(temp, clock: clock)
        let start = clock.now()
        let held = try await a.acquire(holder: "holder-a", command: "capstan run", ttl: 30)
        clock.advance(seconds: 20)
        let renewed = try a.renew(held.fence, ttl: 30)
        #expect(renewed.startedAtMilliseconds == start)
        #expect(renewed.expiresAtMilliseconds == start + 50_000)
        // Past the first expiry, before the renewed one.
        clock.advance(seconds: 20)
        await #expect(throws: StoreError.self) { try await b.acquire(holder: "holder-b", command: "capstan apply", ttl: 30) }
        clock.advance(seconds: 10)
        #expect(try await b.acquire(holder: "holder-b", command: "capstan apply", ttl: 30).tookOver?.holder == "holder-a")
    }

    @Test func forceUnlockRemovesALeaseById() async throws {
        let temp = try TemporaryDirectory()
        let (a, b) = try twoProcesses(temp)
        let held = try await a.acquire(holder: "holder-a", command: "capstan apply", ttl: 600)
        #expect(try b.forceUnlock(id: "no-such-holder") == nil)
        #expect(try b.forceUnlock(id: "holder-a") == held.lease)
        #expect(try b.forceUnlock(id: "holder-a") == nil)
        #expect(try b.current() == [])

        let acquired = try await b.acquire(holder: "holder-b", command: "capstan apply", ttl: 600)
        #expect(acquired.tookOver == nil)
        let error = #expect(throws: StoreError.self) { try a.renew(held.fence, ttl: 600) }
        #expect(error?.code == .leaseLost)
        #expect(error?.message.contains("is now held by holder holder-b") == true)
        #expect(acquired.lease.generation == held.lease.generation + 1)
    }

    /// A real second process (python3's sqlite3) writes a live lease of another host into the same
    /// file and exits.
    @Test func aLeaseWrittenByAnotherProcessBlocksAcquire() async throws {
        let temp = try TemporaryDirectory()
        let lock = StateLock(database: try StateDatabase(stateDirectory: temp.path))
        let script = """
            import os, socket, sqlite3, sys, time
            con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
            now = int(time.time() * 1000)
            con.execute("INSERT INTO locks (name, holder, host, pid, command, started_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        ("apply", "python-holder", "other-host", os.getpid(), "capstan apply (python)", now, now + 600000))
            con.close()
            print(os.getpid())
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script, lock.database.path]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let childPID = printed.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(childPID == String(process.processIdentifier))

        let error = await #expect(throws: StoreError.self) {
            try await lock.acquire(holder: StateLock.newHolderID(), command: "capstan apply", ttl: 60)
        }
        #expect(error?.code == .locked)
        #expect(error?.message.contains("held by holder python-holder (pid \(childPID) on host other-host, running 'capstan apply (python)')") == true)
        #expect(error?.message.contains("`capstan unlock python-holder`") == true)
        #expect(try lock.current().map(\.holder) == ["python-holder"])
    }

    /// A lease of this host whose process is gone (killed) is taken over at once, not at expiry;
    /// a lease of a live process of this host is not.
    @Test func aLeaseOfADeadProcessOfThisHostIsTakenOverAtOnce() async throws {
        let temp = try TemporaryDirectory()
        let now: @Sendable () -> Int64 = { 1_700_000_000_000 }
        let database = try StateDatabase(stateDirectory: temp.path)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/true")
        try process.run()
        process.waitUntilExit()
        let dead = Int64(process.processIdentifier)
        let gone = StateLock(database: database, host: StateLock.localHostName(), pid: dead, now: now)
        _ = try gone.tryAcquire(holder: "dead-holder", command: "capstan apply", ttl: 600)
        let me = StateLock(database: database, now: now)
        let acquired = try me.tryAcquire(holder: "live-holder", command: "capstan apply", ttl: 600)
        #expect(acquired.tookOver?.holder == "dead-holder")

        let live = StateLock(database: database, host: StateLock.localHostName(), pid: Int64(getppid()), now: now)
        let error = #expect(throws: StoreError.self) { try live.tryAcquire(holder: "third", command: "capstan apply", ttl: 600) }
        #expect(error?.code == .locked)
    }
}

@Suite struct JournalTests {
    @Test func unfinishedOperationsSurviveAReopen() throws {
        let temp = try TemporaryDirectory()
        let clock = ManualClock()
        let started: Int64
        let pending: Int64
        do {
            let journal = Journal(database: try StateDatabase(stateDirectory: temp.path), now: clock.reading)
            let done = try journal.begin(operation: "train", subject: "model/churn")
            started = clock.now()
            pending = try journal.begin(operation: "alias", subject: "model/churn/alias/production",
                                        detail: .map(["from": .int(3), "to": .int(4), "dry": .bool(false)]))
            clock.advance(seconds: 5)
            try journal.finish(id: done, detail: .map(["version": .int(4)]))
            // The process is killed here: `pending` is never finished.
            try journal.database.close()
        }

        let journal = Journal(database: try StateDatabase(stateDirectory: temp.path), now: clock.reading)
        let unfinished = try journal.unfinished()
        #expect(unfinished == [Journal.Entry(id: pending, operation: "alias", subject: "model/churn/alias/production",
                                             state: .started, startedAtMilliseconds: started, finishedAtMilliseconds: nil,
                                             detail: .map(["from": .int(3), "to": .int(4), "dry": .bool(false)]))])
        let finished = try journal.entry(id: pending - 1)
        #expect(finished?.state == .finished)
        #expect(finished?.finishedAtMilliseconds == started + 5000)
        #expect(finished?.detail == .map(["version": .int(4)]))

        // The next pass rolls it back and records that; the original detail is kept.
        clock.advance(seconds: 1)
        try journal.fail(id: pending)
        #expect(try journal.unfinished() == [])
        let failed = try journal.entry(id: pending)
        #expect(failed?.state == .failed)
        #expect(failed?.finishedAtMilliseconds == started + 6000)
        #expect(failed?.detail == .map(["from": .int(3), "to": .int(4), "dry": .bool(false)]))
    }

    @Test func anEntryIsClosedOnlyOnce() throws {
        let temp = try TemporaryDirectory()
        let journal = Journal(database: try StateDatabase(stateDirectory: temp.path))
        let id = try journal.begin(operation: "train", subject: "model/churn")
        try journal.finish(id: id)
        let again = #expect(throws: StoreError.self) { try journal.fail(id: id) }
        #expect(again?.message.contains("cannot mark journal entry \(id) failed") == true)
        #expect(again?.message.contains("it is already finished") == true)
        let missing = #expect(throws: StoreError.self) { try journal.finish(id: 999) }
        #expect(missing?.message.contains("there is no such entry") == true)
        #expect(try journal.entry(id: id)?.state == .finished)
    }

    struct Abort: Error {}

    @Test func journalingInsideARolledBackTransactionLeavesNoRow() throws {
        let temp = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: temp.path)
        let journal = Journal(database: database)

        #expect(throws: Abort.self) {
            try database.pool.write { db in
                _ = try journal.begin(db, operation: "register", subject: "model/churn")
                try insertModel(db, "churn")
                throw Abort()
            }
        }
        try database.pool.writeWithoutTransaction { db in
            try db.inTransaction {
                let id = try journal.begin(db, operation: "register", subject: "model/fraud")
                try journal.finish(db, id: id)
                return .rollback
            }
        }
        let (journalRows, models) = try database.pool.read { db in
            (try Int.fetchOne(db, sql: "SELECT count(*) FROM journal"), try Int.fetchOne(db, sql: "SELECT count(*) FROM models"))
        }
        #expect(journalRows == 0)
        #expect(models == 0)

        // Committed, the entry and the effect are both there.
        let id = try database.pool.write { db in
            let id = try journal.begin(db, operation: "register", subject: "model/churn")
            try insertModel(db, "churn")
            try journal.finish(db, id: id)
            return id
        }
        #expect(try journal.entry(id: id)?.state == .finished)
        #expect(try journal.unfinished() == [])
    }
}

@Suite struct AuditLogTests {
    static let base = Date(timeIntervalSince1970: 1_700_000_000)

    func event(_ minutes: Double, _ object: String, _ action: String, before: ParamValue? = nil,
               after: ParamValue? = nil) -> AuditEvent {
        AuditEvent(at: Self.base.addingTimeInterval(minutes * 60), actor: "capstan apply", host: "host-a",
                   commit: "abc123", object: object, action: action, before: before, after: after,
                   reason: "commit abc123 changed \(object)")
    }

    func recordSamples(_ log: AuditLog) throws -> [AuditEvent] {
        var recorded: [AuditEvent] = []
        for var sample in [
            event(0, "model/churn", "create", after: .map(["labels": .map(["team": .string("growth")])])),
            event(1, "model/churn/alias/production", "set-alias", before: .null, after: .int(3)),
            event(2, "model/churn-v2", "create"),
            event(3, "deployment/churn-api", "rollout", before: .string("v2 100%"),
                  after: .map(["weights": .list([.int(90), .int(10)]), "paused": .bool(true), "error": .double(0.25)])),
            event(4, "model/churn", "update", before: .map(["description": .string("")]),
                  after: .map(["description": .string("Churn / 30 days")])),
        ] {
            sample.id = try log.record(sample)
            recorded.append(sample)
        }
        return recorded
    }

    @Test func eventsComeBackNewestFirstAndUnchanged() throws {
        let temp = try TemporaryDirectory()
        let log = AuditLog(database: try StateDatabase(stateDirectory: temp.path))
        let recorded = try recordSamples(log)
        #expect(try log.query() == recorded.reversed())
        #expect(try log.query(limit: 2) == [recorded[4], recorded[3]])
        #expect(recorded.map(\.id) == [1, 2, 3, 4, 5])
    }

    @Test func queriesFilterByObjectAndTime() throws {
        let temp = try TemporaryDirectory()
        let log = AuditLog(database: try StateDatabase(stateDirectory: temp.path))
        let r = try recordSamples(log)
        // A model and what is below it, not another model whose name starts the same.
        #expect(try log.query(.model("churn")) == [r[4], r[1], r[0]])
        #expect(try log.query(.object("model/churn")) == [r[4], r[0]])
        #expect(try log.query(.objectPrefix("model/churn")) == [r[4], r[2], r[1], r[0]])
        #expect(try log.query(.objectPrefix("MODEL/")) == [])
        #expect(try log.query(.deployment("churn-api")) == [r[3]])
        #expect(try log.query(.deployment("churn")) == [])
        // `since` is inclusive.
        #expect(try log.query(since: Self.base.addingTimeInterval(2 * 60)) == [r[4], r[3], r[2]])
        #expect(try log.query(.model("churn"), since: Self.base.addingTimeInterval(60), limit: 1) == [r[4]])
    }

    @Test func anEventRecordedInARolledBackTransactionIsNotKept() throws {
        let temp = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: temp.path)
        let log = AuditLog(database: database)
        struct Abort: Error {}
        #expect(throws: Abort.self) {
            try database.pool.write { db in
                try log.record(db, event(0, "model/churn", "create"))
                throw Abort()
            }
        }
        #expect(try log.query() == [])
    }
}
