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
/// acquisition), the host, pid and command of that process, when it was taken and when it expires.
/// A holder renews its lease while it works and deletes it when done. A lease that has expired
/// belongs to a process that died or hung without renewing, and the next `acquire` takes it over
/// (and says whom it took over). Rows are read and written in one write transaction, so two
/// processes never both win.
///
/// Times are milliseconds since the Unix epoch, from `now`; tests pass a manual clock. Waiting in
/// `acquire` is measured in real time.
public struct StateLock: Sendable {
    /// The lock `capstan apply` and `capstan run` take before changing anything.
    public static let apply = "apply"

    /// One lease, as stored.
    public struct Lease: Hashable, Sendable, Codable {
        public var name: String
        /// The id of the acquisition (what `capstan unlock <id>` takes).
        public var holder: String
        public var host: String
        public var pid: Int64
        public var command: String
        public var startedAtMilliseconds: Int64
        public var expiresAtMilliseconds: Int64

        public init(name: String, holder: String, host: String, pid: Int64, command: String,
                    startedAtMilliseconds: Int64, expiresAtMilliseconds: Int64) {
            self.name = name
            self.holder = holder
            self.host = host
            self.pid = pid
            self.command = command
            self.startedAtMilliseconds = startedAtMilliseconds
            self.expiresAtMilliseconds = expiresAtMilliseconds
        }

        public var startedAt: Date { StoreTime.date(startedAtMilliseconds) }
        public var expiresAt: Date { StoreTime.date(expiresAtMilliseconds) }

        /// Whether the lease has run out at `milliseconds` (its holder stopped renewing it).
        public func isExpired(atMilliseconds milliseconds: Int64) -> Bool {
            expiresAtMilliseconds <= milliseconds
        }

        /// "holder 7f3c… (pid 4242 on host build-1, running 'capstan apply')".
        var holderDescription: String {
            "holder \(holder) (pid \(pid) on host \(host), running '\(command)')"
        }
    }

    /// One try: the lock was taken, or a live lease holds it.
    enum Attempt: Sendable {
        case acquired(Acquired)
        case held(Lease)
    }

    /// What `acquire` got.
    public struct Acquired: Hashable, Sendable {
        public var lease: Lease
        /// The expired lease this acquisition replaced, when its holder had stopped renewing it.
        public var tookOver: Lease?
    }

    public let database: StateDatabase
    public let host: String
    public let pid: Int64
    let now: @Sendable () -> Int64

    /// - Parameters:
    ///   - now: the current time in milliseconds since the Unix epoch.
    public init(database: StateDatabase, host: String = StateLock.localHostName(), pid: Int64 = Int64(getpid()),
                now: @escaping @Sendable () -> Int64 = StoreTime.systemMilliseconds) {
        self.database = database
        self.host = host
        self.pid = pid
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
                        wait: TimeInterval = 0, pollInterval: TimeInterval = 0.05) async throws -> Acquired {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .milliseconds(Int64((max(wait, 0) * 1000).rounded())))
        while true {
            let attempt: Attempt
            do {
                attempt = try await database.pool.write { db in
                    try attemptAcquire(db, name: name, holder: holder, command: command, ttl: ttl)
                }
            } catch {
                throw database.failure("take the lock '\(name)'", error)
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
                           ttl: TimeInterval) throws -> Acquired {
        let attempt: Attempt
        do {
            attempt = try database.pool.write { db in
                try attemptAcquire(db, name: name, holder: holder, command: command, ttl: ttl)
            }
        } catch {
            throw database.failure("take the lock '\(name)'", error)
        }
        switch attempt {
        case .acquired(let acquired): return acquired
        case .held(let held): throw lockedError(name: name, by: held, waited: 0)
        }
    }

    /// Inserts the lease when the lock is free or its lease expired; returns the live lease that
    /// holds it otherwise. Part of the caller's write transaction.
    func attemptAcquire(_ db: Database, name: String, holder: String, command: String,
                        ttl: TimeInterval) throws -> Attempt {
        let time = now()
        let existing = try Self.fetchLeases(db, where: "name = ?", arguments: [name]).first
        if let existing, existing.holder != holder, !existing.isExpired(atMilliseconds: time), !holderIsGone(existing) {
            return .held(existing)
        }
        let lease = Lease(name: name, holder: holder, host: host, pid: pid, command: command,
                          startedAtMilliseconds: existing.map { $0.holder == holder ? $0.startedAtMilliseconds : time } ?? time,
                          expiresAtMilliseconds: time + StoreTime.milliseconds(seconds: ttl))
        try db.execute(sql: """
            INSERT OR REPLACE INTO locks (name, holder, host, pid, command, started_at, expires_at)
            VALUES (?, ?, ?, ?, ?, ?, ?)
            """, arguments: [lease.name, lease.holder, lease.host, lease.pid, lease.command,
                             lease.startedAtMilliseconds, lease.expiresAtMilliseconds])
        let tookOver = existing.flatMap { $0.holder == holder ? nil : $0 }
        return .acquired(Acquired(lease: lease, tookOver: tookOver))
    }

    /// A lease held by a process of this host that no longer exists (killed, crashed) is free at
    /// once rather than at its expiry. Leases of other hosts, and of live processes (even a
    /// recycled pid), are left to expire.
    func holderIsGone(_ lease: Lease) -> Bool {
        guard lease.host == host, lease.pid > 0, lease.pid != pid, lease.pid <= Int64(Int32.max) else { return false }
        return kill(pid_t(lease.pid), 0) != 0 && errno == ESRCH
    }

    func lockedError(name: String, by held: Lease, waited: TimeInterval) -> StoreError {
        let folder = (database.path as NSString).deletingLastPathComponent
        let waitedText = waited > 0 ? " after waiting \(StoreTime.seconds(waited))" : ""
        return StoreError(
            code: .locked,
            message: "the state folder '\(folder)' is still locked\(waitedText): lock '\(name)' is held by \(held.holderDescription) since \(StoreTime.iso(held.startedAt)); its lease expires at \(StoreTime.iso(held.expiresAt)). Wait for that command to finish, pass --lock-timeout <duration> (30s, 5m) to wait for it, or, if that process is gone, run `capstan unlock \(held.holder)`",
            path: database.path)
    }

    // MARK: - Renew, release, unlock

    /// Extends `holder`'s lease to `ttl` seconds from now. Throws `.locked` when the lease is gone:
    /// it expired and another process took it over, or someone ran `capstan unlock`. The caller
    /// must then stop writing.
    @discardableResult
    public func renew(holder: String, ttl: TimeInterval) throws -> Lease {
        do {
            return try database.pool.write { db in
                let expires = now() + StoreTime.milliseconds(seconds: ttl)
                try db.execute(sql: "UPDATE locks SET expires_at = ? WHERE holder = ?", arguments: [expires, holder])
                guard db.changesCount > 0,
                      let lease = try Self.fetchLeases(db, where: "holder = ?", arguments: [holder]).first else {
                    throw lostError(holder: holder, current: try Self.fetchLeases(db, where: "1", arguments: []))
                }
                return lease
            }
        } catch {
            throw database.failure("renew the lease of \(holder)", error)
        }
    }

    func lostError(holder: String, current: [Lease]) -> StoreError {
        let time = now()
        let others = current.filter { !$0.isExpired(atMilliseconds: time) }
        let detail = others.isEmpty
            ? "it was removed (`capstan unlock`) or taken over after it expired"
            : "lock '\(others[0].name)' is now held by \(others[0].holderDescription)"
        return StoreError(
            code: .locked,
            message: "the lease \(holder) on the state folder '\((database.path as NSString).deletingLastPathComponent)' was lost: \(detail). Stop: another process may be changing the state",
            path: database.path)
    }

    /// Deletes `holder`'s lease. Returns false when it no longer held one (a lease taken over by
    /// another holder is left alone).
    @discardableResult
    public func release(holder: String) throws -> Bool {
        do {
            return try database.pool.write { db in
                try db.execute(sql: "DELETE FROM locks WHERE holder = ?", arguments: [holder])
                return db.changesCount > 0
            }
        } catch {
            throw database.failure("release the lease of \(holder)", error)
        }
    }

    /// Removes the lease with holder id `id`, whoever holds it (`capstan unlock <id>`). Returns
    /// the lease removed, or nil when there was none.
    @discardableResult
    public func forceUnlock(id: String) throws -> Lease? {
        do {
            return try database.pool.write { db in
                let lease = try Self.fetchLeases(db, where: "holder = ?", arguments: [id]).first
                try db.execute(sql: "DELETE FROM locks WHERE holder = ?", arguments: [id])
                return lease
            }
        } catch {
            throw database.failure("remove the lease \(id)", error)
        }
    }

    /// Every lease, expired or not, by lock name.
    public func current() throws -> [Lease] {
        do {
            return try database.pool.read { db in try Self.fetchLeases(db, where: "1", arguments: []) }
        } catch {
            throw database.failure("read the locks", error)
        }
    }

    static func fetchLeases(_ db: Database, where condition: String, arguments: StatementArguments) throws -> [Lease] {
        // CAST: a row written by another program may hold the times as text.
        try Row.fetchAll(db, sql: """
            SELECT name, holder, host, CAST(pid AS INTEGER) AS pid, command,
                   CAST(started_at AS INTEGER) AS started_at, CAST(expires_at AS INTEGER) AS expires_at
            FROM locks WHERE \(condition) ORDER BY name
            """, arguments: arguments).map { row in
            Lease(name: row["name"], holder: row["holder"], host: row["host"], pid: row["pid"],
                  command: row["command"], startedAtMilliseconds: row["started_at"],
                  expiresAtMilliseconds: row["expires_at"])
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

    public static func date(_ milliseconds: Int64) -> Date {
        Date(timeIntervalSince1970: Double(milliseconds) / 1000)
    }

    public static func milliseconds(of date: Date) -> Int64 {
        Int64((date.timeIntervalSince1970 * 1000).rounded())
    }

    static func iso(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: false))
    }

    static func seconds(_ seconds: TimeInterval) -> String {
        seconds == seconds.rounded() ? "\(Int64(seconds))s" : String(format: "%.1fs", seconds)
    }
}

extension StateDatabase {
    /// `error` as a `StoreError`: itself when it is one, else a `.databaseFailure` that says what
    /// could not be done.
    public func failure(_ what: String, _ error: any Error) -> StoreError {
        if let error = error as? StoreError { return error }
        return StoreError(code: .databaseFailure,
                          message: "cannot \(what) in the state database '\(path)'",
                          path: path, underlying: error)
    }
}
