import CapstanCore
@testable import CapstanStore
@testable import CapstanTestSupport
@testable import CapstanSystem
import Foundation
import GRDB
import Synchronization
import Testing

/// Leases carry a generation, and every write of a pass checks it in its own transaction.
@Suite struct FencingTests {
    @Test func generationsGrowWithEveryAcquisitionAndAreNeverGivenTwice() async throws {
        let temp = try TemporaryDirectory()
        var generations: [Int64] = []
        do {
            let lock = StateLock(database: try StateDatabase(stateDirectory: temp.path))
            let first = try lock.tryAcquire(holder: "one", command: "capstan apply", ttl: 60)
            generations.append(first.lease.generation)
            // Renewing, or taking the same lease again, is the same acquisition.
            #expect(try lock.renew(first.fence, ttl: 60).generation == first.lease.generation)
            #expect(try lock.tryAcquire(holder: "one", command: "capstan apply", ttl: 60).lease.generation == first.lease.generation)
            // Released, the row is gone; the next acquisition still gets a new number.
            #expect(try lock.release(holder: "one"))
            generations.append(try lock.tryAcquire(holder: "two", command: "capstan apply", ttl: 60).lease.generation)
            #expect(try lock.forceUnlock(id: "two")?.holder == "two")
            generations.append(try lock.tryAcquire(holder: "three", command: "capstan apply", ttl: 60).lease.generation)
            #expect(try lock.release(holder: "three"))
            try lock.database.close()
        }
        // …and after the database is opened again.
        let lock = StateLock(database: try StateDatabase(stateDirectory: temp.path))
        generations.append(try lock.tryAcquire(holder: "four", command: "capstan apply", ttl: 60).lease.generation)
        #expect(generations == [1, 2, 3, 4])
        // Another lock name counts on its own.
        #expect(try lock.tryAcquire(name: "other", holder: "five", command: "x", ttl: 60).lease.generation == 1)
    }

    /// Every writer of the store, through a database fenced by a lease: each write succeeds while
    /// the lease is held; once it is removed, each fails with `.leaseLost` and the database is
    /// left exactly as it was. `onLost` is told once.
    @Test func everyWriterChecksTheFenceAndWritesNothingOnceTheLeaseIsLost() async throws {
        let temp = try TemporaryDirectory()
        let plain = try StateDatabase(stateDirectory: temp.path)
        let lock = StateLock(database: plain)
        let acquired = try lock.tryAcquire(holder: "pass", command: "capstan apply", ttl: 600)
        let reported = Mutex<[String]>([])
        let database = plain.fenced(by: acquired.fence) { error in reported.withLock { $0.append((error as? StoreError)?.message ?? "\(error)") } }
        #expect(database.fence == acquired.fence)

        let writers = Self.writers(database)
        var round = 0
        for (name, write) in writers {
            round += 1
            do { try await write(round) } catch { Issue.record("\(name) failed while the lease was held: \(error)") }
        }
        #expect(reported.withLock { $0.isEmpty })

        #expect(try lock.forceUnlock(id: "pass") != nil)
        let before = try Self.dump(plain)
        for (name, write) in writers {
            round += 1
            do {
                try await write(round)
                Issue.record("\(name) wrote although the lease was removed")
            } catch let error as StoreError {
                #expect(error.code == .leaseLost, "\(name): \(error)")
                #expect(error.message.contains("this process lost its lease on the state folder '\(temp.path)' (lock 'apply', holder pass, generation 1): it was removed (`capstan unlock`)"), "\(name): \(error.message)")
            } catch {
                Issue.record("\(name) threw \(error), not a lost lease")
            }
        }
        #expect(try Self.dump(plain) == before)
        #expect(reported.withLock { $0.count } == 1)
        #expect(throws: StoreError.self) { try database.checkLease() }

        // Outside a pass (status, unlock), writes are not fenced.
        try AuditLog(database: plain).record(Samples.event(.model("x"), .update))
    }

    /// Another process takes the lock over (a new generation): the old holder's writes fail, even
    /// with a holder id that is reused.
    @Test func aTakeoverFencesOutTheOldGeneration() async throws {
        let temp = try TemporaryDirectory()
        let clock = ManualClock()
        let a = StateLock(database: try StateDatabase(stateDirectory: temp.path), host: "host-a", pid: 1111, processStart: 1, now: clock.reading)
        let b = StateLock(database: try StateDatabase(stateDirectory: temp.path), host: "host-b", pid: 2222, processStart: 2, now: clock.reading)
        let first = try a.tryAcquire(holder: "same-id", command: "capstan apply", ttl: 30)
        let journal = Journal(database: a.database.fenced(by: first.fence))
        _ = try journal.begin(JournalTests.training, subject: .model("churn"))
        clock.advance(seconds: 31)
        let second = try b.tryAcquire(holder: "same-id-2", command: "capstan run", ttl: 30)
        #expect(second.lease.generation == first.lease.generation + 1)
        #expect(second.tookOverBecause?.contains("its lease expired") == true)
        let error = #expect(throws: StoreError.self) { try journal.begin(JournalTests.training, subject: .model("churn")) }
        #expect(error?.code == .leaseLost)
        #expect(error?.message.contains("lock 'apply' is now held by holder same-id-2 (pid 2222 on host host-b, running 'capstan run'), generation 2") == true)
        #expect(try Journal(database: b.database).unfinished().count == 1)
        #expect(throws: StoreError.self) { try a.check(first.fence) }
        try b.check(second.fence)
    }

    /// One write of each kind the store offers, numbered so that each call changes something.
    static func writers(_ database: StateDatabase) -> [(String, (Int) async throws -> Void)] {
        let registry = EmbeddedRegistry(database: database)
        let journal = Journal(database: database)
        let audit = AuditLog(database: database)
        let passes = PassRecords(database: database)
        let serving = ServingTables(database: database)
        return [
            ("registry.upsertModel", { n in _ = try await registry.upsertModel(name: n == 1 ? "churn" : "m\(n)", description: nil, labels: [:]) }),
            ("registry.createVersion", { n in
                _ = try await registry.upsertModel(name: "v\(n)", description: nil, labels: [:])
                _ = try await registry.createVersion(NewVersion(model: "churn", fingerprint: "f\(n)", commit: "c"))
            }),
            ("registry.updateVersion", { n in try await registry.updateVersion(model: "churn", number: 1, VersionUpdate(status: .validated, attempts: n)) }),
            ("registry.setAlias", { n in
                try await registry.setAlias(n % 2 == 0 ? "a" : "b", of: "churn", to: 1, commit: nil, reason: "test")
            }),
            ("registry.deleteAlias", { n in try await registry.deleteAlias(n % 2 == 0 ? "b" : "a", of: "churn", commit: nil, reason: "test") }),
            ("journal.begin", { n in _ = try journal.begin(JournalTests.training, subject: .model("m\(n)")) }),
            ("audit.record", { n in try audit.record(Samples.event(.model("m\(n)"), .update)) }),
            ("passes.start", { n in _ = try passes.start(command: "apply", commit: "c\(n)") }),
            ("passes.setConditions", { n in
                try passes.setConditions([ObjectCondition(object: .model("churn"), type: .ready, reason: "R\(n)", message: "", commit: nil, updatedAt: Int64(n))])
            }),
            ("serving.setRollout", { n in
                try serving.setRollout("d", RolloutState(deployment: "d", model: "churn", from: 1, to: 1, phase: .starting, step: n,
                                                         stepStartedAt: Int64(n), startedAt: Int64(n), specHash: "h"))
            }),
            ("serving.addQuarantine", { n in
                try serving.addQuarantine(Quarantine(deployment: "d", version: n, specHash: "h", reason: "r", at: Int64(n)))
            }),
            ("serving.setApplied", { n in try serving.setApplied("d", model: "churn", [BackendWeight(version: 1, weight: 100, replicas: n)]) }),
        ]
    }

    /// Every row of every table but the locks, as text.
    static func dump(_ database: StateDatabase) throws -> String {
        try database.pool.read { db in
            let tables = try String.fetchAll(db, sql: """
                SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
                AND name NOT IN ('locks', 'lock_generations') ORDER BY name
                """)
            return try tables.map { table in
                "\(table): " + (try Row.fetchAll(db, sql: "SELECT * FROM \(table) ORDER BY rowid").map(\.description).joined(separator: "; "))
            }.joined(separator: "\n")
        }
    }

    /// Capstan's code writes only through `StateDatabase.write` (which checks the fence): no other
    /// source file opens a write transaction on the pool itself.
    @Test func onlyTheStateDatabaseWritesToThePoolDirectly() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources")
        let files = FileManager.default.enumerator(at: sources, includingPropertiesForKeys: nil)?
            .compactMap { $0 as? URL }.filter { $0.pathExtension == "swift" } ?? []
        #expect(files.count > 50)
        var offenders: [String] = []
        for file in files where file.lastPathComponent != "StateDatabase.swift" {
            let text = try String(contentsOf: file, encoding: .utf8)
            for pattern in ["pool.write", "pool.writeWithoutTransaction", "pool.barrierWrite", "pool.writeInTransaction"]
            where text.contains(pattern) {
                offenders.append("\(file.lastPathComponent): \(pattern)")
            }
        }
        #expect(offenders == [])
    }
}

/// Whether a lease's holder is alive: pids that are gone, zombies, recycled pids.
@Suite struct HolderLivenessTests {
    @Test func procStatIsReadPastACommandNameWithSpacesAndParentheses() {
        let fields = (4...52).map(String.init).joined(separator: " ")
        let line = "4242 (my (odd) name) S \(fields)\n"
        // Field 22 is the 19th after the state.
        let status = LocalProcess.parse(stat: line)
        #expect(status == LocalProcess.Status(state: "S", startTime: 22))
        #expect(LocalProcess.parse(stat: "garbage") == nil)
        let me = LocalProcess.status(of: Int64(getpid()))
        #expect(me?.state == "R" || me?.state == "S")
        #expect(me?.startTime == LocalProcess.currentStartTime)
    }

    /// A child that exited but whose parent never reaps it (as PID 1 of some containers) is a
    /// zombie: its lease is free at once.
    @Test func aZombieHolderIsGoneAndItsLeaseIsTakenOverAtOnce() throws {
        let temp = try TemporaryDirectory()
        let zombie = try ZombieProcess()
        defer { zombie.stop() }
        let status = try #require(LocalProcess.status(of: zombie.pid))
        #expect(status.isZombie)

        let database = try StateDatabase(stateDirectory: temp.path)
        let holder = StateLock(database: database, pid: zombie.pid, processStart: status.startTime)
        _ = try holder.tryAcquire(holder: "zombie-holder", command: "capstan apply", ttl: 600)
        let me = StateLock(database: database)
        guard case .gone(let why) = me.holderState(try #require(try me.lease(id: "zombie-holder"))) else {
            Issue.record("a zombie holder is not gone")
            return
        }
        #expect(why.contains("zombie"))
        let acquired = try me.tryAcquire(holder: "next", command: "capstan apply", ttl: 600)
        #expect(acquired.tookOver?.holder == "zombie-holder")
        #expect(acquired.tookOverBecause?.contains("zombie") == true)
    }

    /// A lease whose pid now belongs to a process that started at another time (the kernel gave
    /// the number out again) is free; with the recorded start time it is held.
    @Test func aRecycledPidIsNotTakenForTheHolder() throws {
        let temp = try TemporaryDirectory()
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["600"]
        try sleeper.run()
        defer { Processes.stop(sleeper) }
        let pid = Int64(sleeper.processIdentifier)
        let start = try #require(LocalProcess.status(of: pid)?.startTime)
        let database = try StateDatabase(stateDirectory: temp.path)
        let me = StateLock(database: database)

        _ = try StateLock(database: database, pid: pid, processStart: start).tryAcquire(holder: "live", command: "capstan apply", ttl: 600)
        #expect(me.holderState(try #require(try me.lease(id: "live"))) == .alive)
        let refused = #expect(throws: StoreError.self) { try me.tryAcquire(holder: "next", command: "capstan apply", ttl: 600) }
        #expect(refused?.code == .locked)
        #expect(try me.forceUnlock(id: "live") != nil)

        _ = try StateLock(database: database, pid: pid, processStart: start - 5).tryAcquire(holder: "recycled", command: "capstan apply", ttl: 600)
        guard case .gone(let why) = me.holderState(try #require(try me.lease(id: "recycled"))) else {
            Issue.record("a recycled pid was taken for the holder")
            return
        }
        #expect(why.contains("now belongs to another process"))
        #expect(try me.tryAcquire(holder: "next", command: "capstan apply", ttl: 600).tookOver?.holder == "recycled")
    }

    /// `capstan unlock`'s rule.
    @Test func unlockNeedsForceOnlyWhileTheHolderMayBeAlive() throws {
        let temp = try TemporaryDirectory()
        let clock = ManualClock()
        let database = try StateDatabase(stateDirectory: temp.path)
        let me = StateLock(database: database, now: clock.reading)
        func lease(host: String, pid: Int64, start: Int64? = nil) -> Lease {
            Lease(name: "apply", holder: "h", generation: 1, host: host, pid: pid, processStart: start, command: "capstan apply",
                            startedAt: clock.now(), expiresAt: clock.now() + 60_000)
        }
        let parent = Int64(getppid())
        let parentStart = LocalProcess.status(of: parent)?.startTime
        guard case .holderMayBeAlive(let alive) = me.unlockCheck(lease(host: me.host, pid: parent, start: parentStart)) else {
            Issue.record("a live holder of this host may be unlocked without --force")
            return
        }
        #expect(alive.contains("its holder is alive: pid \(parent) on this host"))
        let exited = Process()
        exited.executableURL = URL(fileURLWithPath: "/bin/true")
        try exited.run()
        exited.waitUntilExit()
        guard case .safe(let gone) = me.unlockCheck(lease(host: me.host, pid: Int64(exited.processIdentifier))) else {
            Issue.record("a gone holder needs --force")
            return
        }
        #expect(gone.contains("its process is gone: there is no process \(exited.processIdentifier)"))
        guard case .holderMayBeAlive(let remote) = me.unlockCheck(lease(host: "elsewhere", pid: 4242)) else {
            Issue.record("a renewed lease of another host may be unlocked without --force")
            return
        }
        #expect(remote.contains("host elsewhere, which cannot be checked from here"))
        let remoteLease = lease(host: "elsewhere", pid: 4242)
        clock.advance(seconds: 61)
        guard case .safe(let expired) = me.unlockCheck(remoteLease) else {
            Issue.record("an expired lease of another host needs --force")
            return
        }
        #expect(expired.contains("it expired at"))
    }
}

/// A child of a Python parent that never reaps it: a zombie until the parent is killed.
final class ZombieProcess {
    let parent: Process
    let pid: Int64

    init() throws {
        parent = Process()
        parent.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        parent.arguments = ["python3", "-c", """
            import os, sys, time
            child = os.fork()
            if child == 0:
                os._exit(0)
            print(child, flush=True)
            time.sleep(600)
            """]
        let out = Pipe()
        parent.standardOutput = out
        try parent.run()
        var text = ""
        while !text.contains("\n") {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        guard let pid = Int64(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw FixtureError("the zombie's parent printed '\(text)'")
        }
        self.pid = pid
        // Until the child has exited, it is not a zombie yet.
        for _ in 0..<200 where LocalProcess.status(of: pid)?.isZombie != true { usleep(10_000) }
    }

    func stop() {
        Processes.stop(parent)
    }
}
