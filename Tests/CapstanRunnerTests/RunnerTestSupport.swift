import CapstanRunner
import Foundation
import Synchronization
@testable import CapstanTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// What a run handed to its callbacks.
final class Callbacks: Sendable {
    private let state = Mutex<(pids: [Int32], lines: [String])>(([], []))

    var pids: [Int32] { state.withLock { $0.pids } }
    var lines: [String] { state.withLock { $0.lines } }

    var started: @Sendable (Int32) -> Void { { pid in self.state.withLock { $0.pids.append(pid) } } }
    var line: @Sendable (String) -> Void { { text in self.state.withLock { $0.lines.append(text) } } }
}

let testPath = "/usr/local/bin:/usr/bin:/bin"

func step(
    _ argv: [String], in dir: TempDir, timeout: Int64 = 60_000, grace: Int64 = 300,
    environment: [String: String] = ["PATH": testPath], log: String? = nil, prefix: String? = nil, redact: [String] = []
) -> StepRequest {
    StepRequest(
        argv: argv, workdir: dir.path, environment: environment, timeout: ManifestDuration(milliseconds: timeout),
        logPath: log, outputPrefix: prefix, killGrace: ManifestDuration(milliseconds: grace), redact: redact)
}

/// Whether `pid` can no longer run: it does not exist, or it is a zombie (orphans are reparented
/// to PID 1, which in some containers never reaps them).
func isGone(_ pid: Int32) -> Bool {
    if kill(pid, 0) != 0 && errno == ESRCH { return true }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return true }
    return stat[stat.index(after: close)...].split(separator: " ").first == "Z"
}

/// Polls `condition` until it holds or `seconds` have passed; returns its last value.
func eventually(within seconds: Double = 30, _ condition: () -> Bool) async -> Bool {
    let clock = ContinuousClock()
    let end = clock.now + .milliseconds(Int(seconds * 1000))
    while clock.now < end {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

/// A pid a test's child wrote to `path`, once the file is complete.
func readPID(_ path: String) -> Int32? {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8), text.hasSuffix("\n") else { return nil }
    return Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
}
