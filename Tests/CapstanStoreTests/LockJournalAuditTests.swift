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
        #expect(acquired.lease == Lease(name: "apply", holder: "holder-a", generation: 1, host: "host-a", pid: 1111,
                                                  processStart: 111, command: "capstan apply --repo x",
                                                  startedAt: clock.now(), expiresAt: clock.now() + 60_000))

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
        #expect(second.lease.startedAt == clock.now())

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
        #expect(renewed.startedAt == start)
        #expect(renewed.expiresAt == start + 50_000)
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
    static let training = JournalRecord.training(TrainingRun(fingerprint: "f1", commit: "c1", run: "run-1", attempt: 1))
    static let alias = JournalRecord.registryChange(.moveAlias(model: "churn", alias: "production", to: 4),
                                                    event: Samples.event(.alias(model: "churn", alias: "production"), .moveAlias, after: .int(4)))

    @Test func unfinishedOperationsSurviveAReopen() throws {
        let temp = try TemporaryDirectory()
        let clock = ManualClock()
        let started: Int64
        let pending: Int64
        let done: Int64
        do {
            let journal = Journal(database: try StateDatabase(stateDirectory: temp.path), now: clock.reading)
            done = try journal.begin(Self.training, subject: .model("churn"))
            started = clock.now()
            pending = try journal.begin(Self.alias, subject: .alias(model: "churn", alias: "production"))
            clock.advance(seconds: 5)
            var claimed = TrainingRun(fingerprint: "f1", commit: "c1", run: "run-1", attempt: 1)
            claimed.version = 4
            try journal.finish(id: done, record: .training(claimed))
            // The process is killed here: `pending` is never finished.
            try journal.database.close()
        }

        let journal = Journal(database: try StateDatabase(stateDirectory: temp.path), now: clock.reading)
        let unfinished = try journal.unfinished()
        #expect(unfinished == [JournalEntry(id: pending, operation: .moveAlias, subject: .alias(model: "churn", alias: "production"),
                                            state: .started, startedAt: started, finishedAt: nil, record: Self.alias)])
        let finished = try journal.entry(id: done)
        #expect(finished?.state == .finished)
        #expect(finished?.operation == .train)
        #expect(finished?.finishedAt == started + 5000)
        guard case .training(let run)? = finished?.record else {
            Issue.record("the finished entry lost its record: \(String(describing: finished))")
            return
        }
        #expect(run.version == 4)

        // The next pass rolls it back and records that; the original record is kept, and how it
        // ended is kept beside it.
        clock.advance(seconds: 1)
        try journal.fail(id: pending, JournalClosing(interrupted: true, error: "the pass was killed"))
        #expect(try journal.unfinished() == [])
        let failed = try journal.entry(id: pending)
        #expect(failed?.state == .failed)
        #expect(failed?.finishedAt == started + 6000)
        #expect(failed?.record == Self.alias)
        let closing = try journal.database.read("test") { db in try journal.closing(db, id: pending) }
        #expect(closing == JournalClosing(interrupted: true, error: "the pass was killed"))
        #expect(try journal.database.read("test") { db in try journal.closing(db, id: done) } == nil)
    }

    /// Every kind of record reads back as it was written, started, updated and closed.
    @Test(arguments: Samples.journalRecords.indices)
    func everyRecordRoundTrips(_ index: Int) throws {
        let (name, record, subject) = Samples.journalRecords[index]
        let temp = try TemporaryDirectory()
        let journal = Journal(database: try StateDatabase(stateDirectory: temp.path))
        let id = try journal.begin(record, subject: subject)
        let entry = try #require(try journal.entry(id: id))
        #expect(entry.record == record, "\(name)")
        #expect(entry.operation == record.operation, "\(name)")
        #expect(entry.subject == subject, "\(name)")
        try journal.update(id: id, record)
        try journal.fail(id: id, JournalClosing(error: "boom"))
        #expect(try journal.entry(id: id)?.record == record, "\(name)")
    }

    /// What an older Capstan left in `detail` is no record of this one: the entry reads back with
    /// no record (recovery closes it without acting on it), not as an error.
    @Test func anOlderDetailReadsBackWithoutARecord() throws {
        let temp = try TemporaryDirectory()
        let journal = Journal(database: try StateDatabase(stateDirectory: temp.path))
        try journal.database.write("test") { db in
            try db.execute(sql: """
                INSERT INTO journal (operation, subject, state, started_at, detail) VALUES
                    ('train', 'model/churn', 'started', 1, '{"fingerprint":"f1","attempt":1,"run":"r"}'),
                    ('move-alias', 'model/churn', 'started', 2, NULL),
                    ('deploy', 'deployment/api', 'started', 3, '[1,2]')
                """)
        }
        let entries = try journal.unfinished()
        #expect(entries.map(\.operation) == [.train, .moveAlias, .deploy])
        #expect(entries.map(\.subject) == [.model("churn"), .model("churn"), .deployment("api")])
        #expect(entries.allSatisfy { $0.record == nil })
        // Closed with a closing, an old detail keeps what it had.
        try journal.fail(id: entries[0].id, JournalClosing(interrupted: true))
        let detail = try journal.database.read("test") { db in
            try String.fetchOne(db, sql: "SELECT detail FROM journal WHERE id = ?", arguments: [entries[0].id])
        }
        #expect(detail == #"{"fingerprint":"f1","attempt":1,"run":"r","closing":{"interrupted":true}}"#)
    }

    /// An operation or a subject that no Capstan writes (another program wrote the row) is an
    /// error that names the row, not a guess.
    @Test(arguments: [("publish", "model/churn", "the operation 'publish'"), ("train", "churn", "the subject 'churn'"),
                      ("train", "model/churn/alias", "the subject 'model/churn/alias'")])
    func aRowNoCapstanWroteIsRefusedByName(_ operation: String, _ subject: String, _ quoted: String) throws {
        let temp = try TemporaryDirectory()
        let journal = Journal(database: try StateDatabase(stateDirectory: temp.path))
        let id = try journal.database.write("test") { db in
            try db.execute(sql: "INSERT INTO journal (operation, subject, state, started_at) VALUES (?, ?, 'started', 1)",
                           arguments: [operation, subject])
            return db.lastInsertedRowID
        }
        let error = #expect(throws: StoreError.self) { try journal.unfinished() }
        #expect(error?.code == .foreignRecord)
        #expect(error?.message.contains("journal entry \(id) in '\(journal.database.path)' has \(quoted)") == true, "\(error?.message ?? "")")
        #expect(error?.message.contains("another program did") == true)
    }

    @Test func anEntryIsClosedOnlyOnce() throws {
        let temp = try TemporaryDirectory()
        let journal = Journal(database: try StateDatabase(stateDirectory: temp.path))
        let id = try journal.begin(Self.training, subject: .model("churn"))
        try journal.finish(id: id)
        let again = #expect(throws: StoreError.self) { try journal.fail(id: id) }
        #expect(again?.message.contains("cannot mark journal entry \(id) failed") == true)
        #expect(again?.message.contains("it is already finished") == true)
        let missing = #expect(throws: StoreError.self) { try journal.finish(id: 999) }
        #expect(missing?.message.contains("there is no such entry") == true)
        #expect(try journal.entry(id: id)?.state == .finished)
        let started = #expect(throws: StoreError.self) {
            try journal.database.write("test") { db in try journal.close(db, id: id, as: .started) }
        }
        #expect(started?.message.contains("cannot close journal entry \(id) as 'started'") == true)
    }

    struct Abort: Error {}

    @Test func journalingInsideARolledBackTransactionLeavesNoRow() throws {
        let temp = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: temp.path)
        let journal = Journal(database: database)
        let register = JournalRecord.registryChange(.registerModel(model: "churn"), event: Samples.event(.model("churn"), .register))

        #expect(throws: Abort.self) {
            try database.write("test") { db in
                _ = try journal.begin(db, register, subject: .model("churn"))
                try insertModel(db, "churn")
                throw Abort()
            }
        }
        let (journalRows, models) = try database.pool.read { db in
            (try Int.fetchOne(db, sql: "SELECT count(*) FROM journal"), try Int.fetchOne(db, sql: "SELECT count(*) FROM models"))
        }
        #expect(journalRows == 0)
        #expect(models == 0)

        // Committed, the entry and the effect are both there.
        let id = try database.write("test") { db in
            let id = try journal.begin(db, register, subject: .model("churn"))
            try insertModel(db, "churn")
            try journal.close(db, id: id, as: .finished)
            return id
        }
        #expect(try journal.entry(id: id)?.state == .finished)
        #expect(try journal.unfinished() == [])
    }
}

@Suite struct AuditLogTests {
    static let base: Int64 = 1_700_000_000_000

    func event(_ minutes: Int64, _ object: ObjectRef, _ action: AuditAction, before: ParamValue? = nil,
               after: ParamValue? = nil) -> AuditEvent {
        // Milliseconds are kept.
        AuditEvent(at: Self.base + minutes * 60_000 + 250, actor: "capstan apply", host: "host-a",
                   commit: "abc123", object: object, action: action, before: before, after: after,
                   reason: "commit abc123 changed \(object)")
    }

    func recordSamples(_ log: AuditLog) throws -> [AuditEvent] {
        var recorded: [AuditEvent] = []
        for var sample in [
            event(0, .model("churn"), .register, after: .map(["labels": .map(["team": .string("growth")])])),
            event(1, .alias(model: "churn", alias: "production"), .moveAlias, before: .null, after: .int(3)),
            event(2, .model("churn-v2"), .register),
            event(3, .deployment("churn-api"), .advanceRollout, before: .string("v2 100%"),
                  after: .map(["weights": .list([.int(90), .int(10)]), "paused": .bool(true), "error": .double(0.25)])),
            event(4, .model("churn"), .update, before: .map(["description": .string("")]),
                  after: .map(["description": .string("Churn / 30 days")])),
            event(5, .version(model: "churn", number: 3), .trained),
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
        #expect(try log.query(AuditQuery(limit: 2)) == [recorded[5], recorded[4]])
        #expect(recorded.map(\.id) == [1, 2, 3, 4, 5, 6])
        // Stored in their one text form.
        let stored = try log.database.read("test") { db in try Row.fetchAll(db, sql: "SELECT object, action FROM audit_log ORDER BY id") }
        #expect(stored.map { $0["object"] as String } == ["model/churn", "model/churn/alias/production", "model/churn-v2",
                                                          "deployment/churn-api", "model/churn", "model/churn/v3"])
        #expect(stored.map { $0["action"] as String } == ["register", "move-alias", "register", "advance-rollout", "update", "trained"])
    }

    @Test func queriesFilterByObjectAndTime() throws {
        let temp = try TemporaryDirectory()
        let log = AuditLog(database: try StateDatabase(stateDirectory: temp.path))
        let r = try recordSamples(log)
        // A model and what is below it, not another model whose name starts the same.
        #expect(try log.query(AuditQuery(.object(.model("churn")))) == [r[5], r[4], r[1], r[0]])
        #expect(try log.query(AuditQuery(.object(.version(model: "churn", number: 3)))) == [r[5]])
        #expect(try log.query(AuditQuery(.object(.alias(model: "churn", alias: "production")))) == [r[1]])
        #expect(try log.query(AuditQuery(.object(.deployment("churn-api")))) == [r[3]])
        #expect(try log.query(AuditQuery(.object(.deployment("churn")))) == [])
        #expect(try log.query(AuditQuery(.object(.model("churn-v")))) == [])
        // `since` is inclusive, to the millisecond.
        #expect(try log.query(AuditQuery(since: Self.base + 2 * 60_000 + 250)) == [r[5], r[4], r[3], r[2]])
        #expect(try log.query(AuditQuery(since: Self.base + 2 * 60_000 + 251)) == [r[5], r[4], r[3]])
        #expect(try log.query(AuditQuery(.object(.model("churn")), since: Self.base + 60_000, limit: 1)) == [r[5]])
        // `afterID`: what was recorded since.
        #expect(try log.query(AuditQuery(afterID: 4)) == [r[5], r[4]])
        #expect(try log.query(AuditQuery(.object(.model("churn")), afterID: 2)) == [r[5], r[4]])
    }

    /// A row with an object or an action no Capstan writes is an error that names the row.
    @Test(arguments: [("churn", "register", "the object 'churn'"), ("model/churn", "note", "the action 'note'")])
    func aForeignRowIsRefusedByName(_ object: String, _ action: String, _ quoted: String) throws {
        let temp = try TemporaryDirectory()
        let log = AuditLog(database: try StateDatabase(stateDirectory: temp.path))
        try log.record(event(0, .model("churn"), .register))
        try log.database.write("test") { db in
            try db.execute(sql: "INSERT INTO audit_log (at, actor, host, object, action) VALUES (1, 'x', 'h', ?, ?)",
                           arguments: [object, action])
        }
        let error = #expect(throws: StoreError.self) { try log.query() }
        #expect(error?.code == .foreignRecord)
        #expect(error?.message.contains("row 2 of the audit log in '\(log.database.path)' has \(quoted)") == true, "\(error?.message ?? "")")
        // The row is not matched by another object's filter, so that object's history still reads.
        #expect(try log.query(AuditQuery(.object(.deployment("x")))) == [])
    }

    @Test func anEventRecordedInARolledBackTransactionIsNotKept() throws {
        let temp = try TemporaryDirectory()
        let database = try StateDatabase(stateDirectory: temp.path)
        let log = AuditLog(database: database)
        struct Abort: Error {}
        #expect(throws: Abort.self) {
            try database.write("test") { db in
                try log.record(db, event(0, .model("churn"), .register))
                throw Abort()
            }
        }
        #expect(try log.query() == [])
    }
}
