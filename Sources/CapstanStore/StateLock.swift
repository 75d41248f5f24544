import CapstanCore
import CapstanSystem
import Foundation
import GRDB

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A lease lock in the state database: one writer per state folder.
///
/// A lease is a row of `locks`, keyed by the lock's name (`apply`): who holds it (a fresh id per
/// acquisition), the generation of that acquisition, the host, pid, process start time and
/// command of that process, when it was taken and when it expires. A holder renews its lease
/// while it works and deletes it when done. Rows are read and written in one write transaction,
/// so two processes never both win.
///
/// Each acquisition gets the next **generation** of the lock (1, 2, 3…; kept in
/// `lock_generations`, so a number is never given out twice, even after the lease row was
/// deleted). A pass writes through `StateDatabase.fenced(by:)` with the `Fence` of its
/// acquisition, and each of its writes checks, in the same transaction, that the lease row still
/// has that holder and generation.
///
/// A lease that has expired belongs to a process that died or hung without renewing, and the
/// next `acquire` takes it over (and says whom it took over). So does a lease whose holder was a
/// process of this host that is gone: no such pid, a zombie, or a pid now used by a process that
/// started at another time than the one recorded.
///
/// Times are milliseconds since the Unix epoch, from `now`; tests pass a manual clock. Waiting in
/// `acquire` is measured in real time.
public struct StateLock: Sendable {
    /// The lock `capstan apply` and `capstan run` take before changing anything.
    public static let apply = "apply"

    /// One try: the lock was taken, or a live lease holds it.
    enum Attempt: Sendable {
        case acquired(LeaseGrant)
        case held(Lease)
    }

    /// Whether the holder of a lease is still there, as this host can tell.
    public enum HolderState: Hashable, Sendable {
        /// A live process of this host (or this very process).
        case alive
        /// A process of this host that is gone, and why.
        case gone(String)
        /// A process of another host: this host cannot check it.
        case otherHost
    }

    public let database: StateDatabase
    public let host: String
    public let pid: Int64
    /// The start time of the process `pid` (what `LocalProcess` compares to tell a recycled pid).
    public let processStart: Int64?
    let now: @Sendable () -> Int64

    /// - Parameters:
    ///   - now: the current time in milliseconds since the Unix epoch.
    public init(database: StateDatabase, host: String = StateLock.localHostName(), pid: Int64 = Int64(getpid()),
                processStart: Int64? = nil, now: @escaping @Sendable () -> Int64 = StoreTime.systemMilliseconds) {
        // The lock's own writes are never fenced: taking and renewing leases is what fencing is about.
        self.database = database.unfenced
        self.host = host
        self.pid = pid
        self.processStart = processStart ?? (pid == Int64(getpid()) ? LocalProcess.currentStartTime : LocalProcess.status(of: pid)?.startTime)
        self.now = now
    }

    /// This machine's host name (`gethostname`), or "localhost".
    public static func localHostName() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }

    /// A fresh holder id.
    public static func newHolderID() -> String {
        UUID().uuidString.lowercased()
    }

    // MARK: - Acquire

    /// Takes the lock `name` for `holder` for `ttl` seconds. When another live lease holds it,
    /// tries again every `pollInterval` until `wait` seconds have passed, then throws a
    /// `StoreError` with code `.locked` that names the holder.
    public func acquire(name: String = StateLock.apply, holder: String, command: String, ttl: TimeInterval,
                        wait: TimeInterval = 0, pollInterval: TimeInterval = 0.05) async throws -> LeaseGrant {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .milliseconds(Int64((max(wait, 0) * 1000).rounded())))
        while true {
            let attempt = try await database.write("take the lock '\(name)'") { db in
                try attemptAcquire(db, name: name, holder: holder, command: command, ttl: ttl)
            }
            switch attempt {
            case .acquired(let acquired):
                return acquired
            case .held(let held):
                if clock.now >= deadline {
                    throw lockedError(name: name, by: held, waited: wait)
                }
                let pause = min(Duration.milliseconds(Int64((max(pollInterval, 0.001) * 1000).rounded())),
                                clock.now.duration(to: deadline))
                try await Task.sleep(for: pause)
            }
        }
    }

    /// Takes the lock `name` now or throws `.locked`, without waiting.
    public func tryAcquire(name: String = StateLock.apply, holder: String, command: String,
                           ttl: TimeInterval) throws -> LeaseGrant {
        let attempt = try database.write("take the lock '\(name)'") { db in
            try attemptAcquire(db, name: name, holder: holder, command: command, ttl: ttl)
        }
        switch attempt {
        case .acquired(let acquired): return acquired
        case .held(let held): throw lockedError(name: name, by: held, waited: 0)
        }
    }

    /// Inserts the lease when the lock is free, its lease expired or its holder is gone; returns
    /// the live lease that holds it otherwise. A new acquisition gets the next generation. Part of
    /// the caller's write transaction.
    func attemptAcquire(_ db: Database, name: String, holder: String, command: String,
                        ttl: TimeInterval) throws -> Attempt {
        let time = now()
        let existing = try Self.fetchLeases(db, where: "name = ?", arguments: [name]).first
        var freedBecause: String?
        if let existing, existing.holder != holder {
            if existing.isExpired(at: time) {
                freedBecause = "its lease expired at \(StoreTime.iso(existing.expiresAt))"
            } else if case .gone(let why) = holderState(existing) {
                freedBecause = why
            } else {
                return .held(existing)
            }
        }
        let generation: Int64
        if let existing, existing.holder == holder {
            // The same acquisition again: a renewal, same generation.
            generation = existing.generation
        } else {
            let counter = try Int64.fetchOne(db, sql: "SELECT generation FROM lock_generations WHERE name = ?", arguments: [name]) ?? 0
            generation = max(counter, existing?.generation ?? 0) + 1
            try db.execute(sql: """
                INSERT INTO lock_generations (name, generation) VALUES (?, ?)
                ON CONFLICT(name) DO UPDATE SET generation = excluded.generation
                """, arguments: [name, generation])
        }
        let lease = Lease(name: name, holder: holder, generation: generation, host: host, pid: pid, processStart: processStart,
                          command: command,
                          startedAt: existing.map { $0.holder == holder ? $0.startedAt : time } ?? time,
                          expiresAt: time + StoreTime.milliseconds(seconds: ttl))
        try db.execute(sql: """
            INSERT OR REPLACE INTO locks (name, holder, generation, host, pid, process_start, command, started_at, expires_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [lease.name, lease.holder, lease.generation, lease.host, lease.pid, lease.processStart, lease.command,
                             lease.startedAt, lease.expiresAt])
        let tookOver = existing.flatMap { $0.holder == holder ? nil : $0 }
        return .acquired(LeaseGrant(lease: lease, tookOver: tookOver, tookOverBecause: tookOver == nil ? nil : freedBecause))
    }

    /// Whether `lease`'s holder still runs. Only a process of this host can be checked: it is gone
    /// when there is no such pid, when it is a zombie, or when the pid now belongs to a process
    /// that started at another time than the one recorded with the lease.
    public func holderState(_ lease: Lease) -> HolderState {
        guard lease.host == host else { return .otherHost }
        if lease.pid == pid { return .alive }
        switch LocalProcess.liveness(pid: lease.pid, startTime: lease.processStart) {
        case .alive: return .alive
        case .gone(let why): return .gone(why)
        }
    }

    func lockedError(name: String, by held: Lease, waited: TimeInterval) -> StoreError {
        let waitedText = waited > 0 ? " after waiting \(StoreTime.seconds(waited))" : ""
        return StoreError(
            code: .locked,
            message: "the state folder '\(database.folder)' is still locked\(waitedText): lock '\(name)' is held by \(held.holderDescription) since \(StoreTime.iso(held.startedAt)); its lease expires at \(StoreTime.iso(held.expiresAt)). Wait for that command to finish, pass --lock-timeout <duration> (30s, 5m) to wait for it, or, if that process is gone, run `capstan unlock \(held.holder)`",
            path: database.path)
    }

    // MARK: - Renew, check, release, unlock

    /// Extends the lease of `fence` to `ttl` seconds from now. Throws `.leaseLost` when the lease
    /// is gone: removed with `capstan unlock`, or taken over by another process. The caller must
    /// then stop writing (its fenced writes fail anyway).
    @discardableResult
    public func renew(_ fence: Fence, ttl: TimeInterval) throws -> Lease {
        let expires = now() + StoreTime.milliseconds(seconds: ttl)
        let folder = database.folder, path = database.path
        return try database.write("renew the lease of \(fence.holder)") { db in
            try db.execute(sql: "UPDATE locks SET expires_at = ? WHERE name = ? AND holder = ? AND generation = ?",
                           arguments: [expires, fence.lock, fence.holder, fence.generation])
            let current = try Self.fetchLeases(db, where: "name = ?", arguments: [fence.lock]).first
            guard db.changesCount > 0, let current else {
                throw Self.lostError(fence, current: current, folder: folder, path: path)
            }
            return current
        }
    }

    /// Throws `.leaseLost` unless the lease of `fence` is still held (a read; a pass checks it
    /// often to stop its running step soon after losing the lease).
    public func check(_ fence: Fence) throws {
        let folder = database.folder, path = database.path
        try database.read("check the lease of \(fence.holder)") { db in
            let current = try Self.fetchLeases(db, where: "name = ?", arguments: [fence.lock]).first
            guard let current, current.holder == fence.holder, current.generation == fence.generation else {
                throw Self.lostError(fence, current: current, folder: folder, path: path)
            }
        }
    }

    /// The error of a pass whose lease is no longer the one it took.
    static func lostError(_ fence: Fence, current: Lease?, folder: String, path: String) -> StoreError {
        let detail: String
        if let current, current.holder != fence.holder || current.generation != fence.generation {
            detail = "lock '\(current.name)' is now held by \(current.holderDescription), generation \(current.generation)"
        } else {
            detail = "it was removed (`capstan unlock`)"
        }
        return StoreError(
            code: .leaseLost,
            message: "this process lost its lease on the state folder '\(folder)' (\(fence)): \(detail). It stops here and writes nothing more; another process may be changing the state, and the next pass finishes the work",
            path: path)
    }

    /// Deletes `holder`'s lease. Returns false when it no longer held one (a lease taken over by
    /// another holder is left alone).
    @discardableResult
    public func release(holder: String) throws -> Bool {
        try database.write("release the lease of \(holder)") { db in
            try db.execute(sql: "DELETE FROM locks WHERE holder = ?", arguments: [holder])
            return db.changesCount > 0
        }
    }

    /// Deletes the lease of `fence` (its lock, holder and generation). Returns false when that
    /// acquisition no longer holds the lock (it was removed, or taken over: the new holder's
    /// lease is left alone).
    @discardableResult
    public func release(_ fence: Fence) throws -> Bool {
        try database.write("release the lease of \(fence.holder)") { db in
            try db.execute(sql: "DELETE FROM locks WHERE name = ? AND holder = ? AND generation = ?",
                           arguments: [fence.lock, fence.holder, fence.generation])
            return db.changesCount > 0
        }
    }

    /// Whether `capstan unlock` may remove a lease without `--force`.
    public enum UnlockCheck: Hashable, Sendable {
        /// Its holder is gone, or its lease expired: removing it breaks nothing. Why.
        case safe(String)
        /// Its holder may be working: removing it needs `--force`. Why.
        case holderMayBeAlive(String)
    }

    /// The rule of `capstan unlock`: a lease whose process runs on this host is not removed
    /// without `--force` (nor one of another host, which cannot be checked from here, while it is
    /// still renewed); one whose process is gone, or that expired, is.
    public func unlockCheck(_ lease: Lease) -> UnlockCheck {
        switch holderState(lease) {
        case .gone(let why):
            return .safe("its process is gone: \(why)")
        case .alive:
            return .holderMayBeAlive("its holder is alive: pid \(lease.pid) on this host (\(host)), running '\(lease.command)' since \(StoreTime.iso(lease.startedAt))")
        case .otherHost:
            if lease.isExpired(at: now()) {
                return .safe("it expired at \(StoreTime.iso(lease.expiresAt)) (its host \(lease.host) cannot be checked from here)")
            }
            return .holderMayBeAlive("its holder runs on host \(lease.host), which cannot be checked from here (pid \(lease.pid), running '\(lease.command)'), and it was renewed until \(StoreTime.iso(lease.expiresAt)): that process is probably alive")
        }
    }

    /// The lease with holder id `id`, or nil.
    public func lease(id: String) throws -> Lease? {
        try database.read("read the locks") { db in try Self.fetchLeases(db, where: "holder = ?", arguments: [id]).first }
    }

    /// Removes the lease with holder id `id` and generation `generation` (when given), whoever
    /// holds it. Returns the lease removed, or nil when there was none. The caller decides
    /// whether removing it is safe (`capstan unlock` refuses a live holder without `--force`).
    @discardableResult
    public func forceUnlock(id: String, generation: Int64? = nil) throws -> Lease? {
        try database.write("remove the lease \(id)") { db in
            guard let lease = try Self.fetchLeases(db, where: "holder = ?", arguments: [id]).first,
                  generation == nil || lease.generation == generation else { return nil }
            try db.execute(sql: "DELETE FROM locks WHERE holder = ? AND generation = ?", arguments: [id, lease.generation])
            return lease
        }
    }

    /// Every lease, expired or not, by lock name.
    public func current() throws -> [Lease] {
        try database.read("read the locks") { db in try Self.fetchLeases(db, where: "1", arguments: []) }
    }

    static func fetchLeases(_ db: Database, where condition: String, arguments: StatementArguments) throws -> [Lease] {
        // CAST: a row written by another program may hold the numbers as text.
        try Row.fetchAll(db, sql: """
            SELECT name, holder, CAST(generation AS INTEGER) AS generation, host, CAST(pid AS INTEGER) AS pid,
                   CAST(process_start AS INTEGER) AS process_start, command,
                   CAST(started_at AS INTEGER) AS started_at, CAST(expires_at AS INTEGER) AS expires_at
            FROM locks WHERE \(condition) ORDER BY name
            """, arguments: arguments).map { row in
            Lease(name: row["name"], holder: row["holder"], generation: row["generation"], host: row["host"], pid: row["pid"],
                  processStart: row["process_start"], command: row["command"], startedAt: row["started_at"],
                  expiresAt: row["expires_at"])
        }
    }
}

// MARK: - Shared helpers

/// Times in the state database: milliseconds since the Unix epoch.
public enum StoreTime {
    /// The system time in milliseconds since the Unix epoch.
    @Sendable public static func systemMilliseconds() -> Int64 {
        Int64((Date().timeIntervalSince1970 * 1000).rounded(.down))
    }

    static func milliseconds(seconds: TimeInterval) -> Int64 {
        Int64((seconds * 1000).rounded())
    }

    /// `2026-12-06T15:04:05Z` (UTC, to the second), as messages show times.
    static func iso(_ milliseconds: Int64) -> String {
        Timestamp.iso8601(milliseconds: milliseconds, fractional: false)
    }

    static func seconds(_ seconds: TimeInterval) -> String {
        seconds == seconds.rounded() ? "\(Int64(seconds))s" : String(format: "%.1fs", seconds)
    }
}

extension StateDatabase {
    /// `error` as a `StoreError`: itself when it is one, else a `.databaseFailure` that says what
    /// could not be done.
    /// A full disk, a read-only file system or a folder Capstan may not write is named as such,
    /// with the system's reason and what to do.
    public func failure(_ what: String, _ error: any Error) -> StoreError {
        FileSystemFailure.describe(error, what: "\(what) in the state database", path: path, folder: folder,
                                   otherwise: .databaseFailure)
    }
}
