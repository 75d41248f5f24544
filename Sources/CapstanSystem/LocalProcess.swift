import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What this host's `/proc` says about a process: whether it runs, is a zombie, and when it
/// started (so that a pid the kernel gave to another process since is not taken for it).
public enum LocalProcess {
    /// One process as `/proc/<pid>/stat` shows it.
    public struct Status: Hashable, Sendable {
        /// Field 3: `R`, `S`, `D`, `T`, `Z` (zombie: exited, not yet reaped by its parent), `X`…
        public var state: Character
        /// Field 22: when the process started, in clock ticks after boot. Never changes for a
        /// process; a recycled pid gets another.
        public var startTime: Int64

        public var isZombie: Bool { state == "Z" || state == "X" || state == "x" }
    }

    /// The status of `pid`, or nil when there is no such process or `/proc` is not there (not Linux).
    public static func status(of pid: Int64) -> Status? {
        guard pid > 0, pid <= Int64(Int32.max),
              let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return nil }
        return parse(stat: text)
    }

    /// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may hold
    /// spaces and parentheses itself: fields are counted after the last `)`.
    static func parse(stat text: String) -> Status? {
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
        guard fields.count > 19, let state = fields[0].first, let start = Int64(fields[19]) else { return nil }
        return Status(state: state, startTime: start)
    }

    /// The start time of this process (field 22 of `/proc/self/stat`), nil where there is no `/proc`.
    public static let currentStartTime: Int64? = status(of: Int64(getpid()))?.startTime

    /// Whether `pid` is a live process on this host, as far as can be told.
    public enum Liveness: Hashable, Sendable {
        case alive
        /// Gone, and why ("there is no process 4242").
        case gone(String)
    }

    /// Whether the process `pid`, which started at `startTime` (when recorded), still runs here.
    /// A zombie is gone (it exited; a parent that never reaps, such as the init of some
    /// containers, keeps it listed), and so is a pid whose start time differs (the kernel gave
    /// the number to another process).
    public static func liveness(pid: Int64, startTime: Int64?) -> Liveness {
        guard pid > 0, pid <= Int64(Int32.max) else { return .gone("pid \(pid) is not a process id") }
        if kill(pid_t(pid), 0) != 0 && errno == ESRCH {
            return .gone("there is no process \(pid) on this host")
        }
        guard let status = status(of: pid) else {
            // It exists (kill did not say ESRCH) but /proc tells nothing more.
            return .alive
        }
        if status.isZombie {
            return .gone("process \(pid) has exited (a zombie its parent has not reaped)")
        }
        if let startTime, startTime != status.startTime {
            return .gone("pid \(pid) now belongs to another process (it started at tick \(status.startTime), the holder at tick \(startTime))")
        }
        return .alive
    }
}
