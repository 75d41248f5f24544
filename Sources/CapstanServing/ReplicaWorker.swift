import AsyncHTTPClient
import Foundation
import NIOCore
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Which backend a worker belongs to.
struct BackendKey: Hashable, Sendable, CustomStringConvertible {
    var deployment: String
    var version: Int
    var description: String { "\(deployment) v\(version)" }
}

/// Keeps one replica of one backend running: start, wait ready, watch, restart with backoff,
/// until asked to stop. Every state change is reported to the supervisor, which owns the
/// routes and the health; the worker owns only its process.
final class ReplicaWorker: Sendable {
    let id: Int
    let key: BackendKey
    let replica: Int
    let spec: BackendSpec
    /// The environment of the server, except `PORT` (set per start).
    let environment: [String: String]
    let logPath: String
    let timing: SupervisorTiming
    private let client: HTTPClient
    private let supervisor: Supervisor

    private struct Control {
        var stopRequested = false
        /// Wait for the requests in flight to this replica (bounded) before SIGTERM.
        var drain: ReplicaTarget?
    }

    private let control = Mutex(Control())

    init(id: Int, key: BackendKey, replica: Int, spec: BackendSpec, environment: [String: String], logPath: String,
         timing: SupervisorTiming, client: HTTPClient, supervisor: Supervisor) {
        self.id = id
        self.key = key
        self.replica = replica
        self.spec = spec
        self.environment = environment
        self.logPath = logPath
        self.timing = timing
        self.client = client
        self.supervisor = supervisor
    }

    /// Asks the worker to stop its process (after draining `drain`, if given). Returns at once.
    func requestStop(drain: ReplicaTarget?) {
        control.withLock {
            $0.stopRequested = true
            if $0.drain == nil { $0.drain = drain }
        }
    }

    var isStopRequested: Bool { control.withLock { $0.stopRequested } }

    /// `python3 serve.py`, for messages.
    var commandText: String { spec.command.joined(separator: " ") }

    private enum Outcome {
        case stopped(ProcessTermination?, killed: Bool)
        /// The process failed; `readyFor` is how long it had been ready (nil: never).
        case failed(String, readyFor: Duration?)
    }

    /// Runs until a stop is requested.
    func run() async {
        var delay = timing.initialBackoff
        var ended: (ProcessTermination?, Bool) = (nil, false)
        while !isStopRequested {
            switch await runOnce() {
            case .stopped(let termination, let killed):
                ended = (termination, killed)
            case .failed(let message, let readyFor):
                if let readyFor, readyFor >= timing.healthyReset { delay = timing.initialBackoff }
                if isStopRequested { break }
                await supervisor.workerFailed(self, message: message, delay: delay)
                let clock = ContinuousClock()
                let until = clock.now + delay
                while !isStopRequested, clock.now < until {
                    await pause(milliseconds: Int(min(100, max(1, (until - clock.now).milliseconds))))
                }
                delay = min(delay * 2, timing.maximumBackoff)
            }
        }
        await supervisor.workerFinished(self, termination: ended.0, killed: ended.1)
    }

    private func runOnce() async -> Outcome {
        let clock = ContinuousClock()
        guard let executable = ModelServerProcess.resolveExecutable(spec.command[0], path: environment["PATH"], workdir: spec.workdir) else {
            let where_ = spec.command[0].contains("/") ? "does not exist or is not executable" : "was not found in PATH (\(environment["PATH"] ?? "unset"))"
            return .failed("cannot start `\(commandText)`: '\(spec.command[0])' \(where_)", readyFor: nil)
        }
        var info = stat()
        guard stat(spec.workdir, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else {
            return .failed("cannot start `\(commandText)`: its workdir '\(spec.workdir)' does not exist", readyFor: nil)
        }
        let process: ModelServerProcess
        let port: Int
        do {
            port = try allocateLoopbackPort()
            var env = environment
            env["PORT"] = String(port)
            ServerLogs.rotateBeforeStart(logPath, limit: timing.logLimitBytes)
            process = try ModelServerProcess.spawn(executable: executable, argv: spec.command, environment: env, workdir: spec.workdir, logPath: logPath)
        } catch {
            return .failed("cannot start `\(commandText)`: \(error.message)", readyFor: nil)
        }
        await supervisor.workerStarted(self, pid: process.pid, port: port)

        // Readiness: poll until 200, the process exits, the timeout passes, or a stop.
        let startedAt = clock.now
        let timeout = Duration.milliseconds(spec.readinessTimeoutMilliseconds)
        let url = "http://127.0.0.1:\(port)\(spec.readinessPath)"
        while true {
            if isStopRequested {
                let (termination, killed) = await stop(process, drain: nil)
                return .stopped(termination, killed: killed)
            }
            if let termination = process.pollExit() {
                return .failed("`\(commandText)` \(termination) before it was ready\(lastOutput)", readyFor: nil)
            }
            let remaining = timeout - (clock.now - startedAt)
            if remaining <= .zero {
                _ = await process.terminate(grace: timing.stopGrace)
                return .failed("`\(commandText)` was not ready within \(Duration.text(milliseconds: spec.readinessTimeoutMilliseconds)) "
                    + "(GET \(spec.readinessPath) never answered 200); it was stopped\(lastOutput)", readyFor: nil)
            }
            if await probe(url, timeout: min(remaining, .seconds(2))) { break }
            let left = timeout - (clock.now - startedAt)
            if left > .zero {
                await pause(milliseconds: Int(min(timing.readinessInterval, left).milliseconds))
            }
        }

        let readyAt = clock.now
        let target = ReplicaTarget(port: port)
        await supervisor.workerReady(self, pid: process.pid, target: target, after: readyAt - startedAt)

        var lastRotation = clock.now
        while true {
            if isStopRequested {
                let drain = control.withLock { $0.drain }
                let (termination, killed) = await stop(process, drain: drain)
                return .stopped(termination, killed: killed)
            }
            if let termination = process.pollExit() {
                let readyFor = clock.now - readyAt
                return .failed("`\(commandText)` \(termination) after \(Duration.text(milliseconds: readyFor.milliseconds)) ready\(lastOutput)",
                               readyFor: readyFor)
            }
            if clock.now - lastRotation >= .seconds(2) {
                ServerLogs.rotateIfNeeded(logPath, limit: timing.logLimitBytes)
                lastRotation = clock.now
            }
            await pause(milliseconds: 100)
        }
    }

    /// The last line of the server's log, for a failure message (secret values replaced).
    private var lastOutput: String {
        guard let line = ServerLogs.lastLine(logPath) else { return " (log: \(logPath))" }
        let scrubber = SecretScrubber(secrets: spec.secretEnv.keys.compactMap { environment[$0] })
        return "; last output: \(PrintableText.escaped(scrubber.scrub(line))) (log: \(logPath))"
    }

    private func stop(_ process: ModelServerProcess, drain: ReplicaTarget?) async -> (ProcessTermination?, Bool) {
        if let drain {
            let clock = ContinuousClock()
            let until = clock.now + timing.drainTimeout
            while drain.inFlight.load(ordering: .relaxed) > 0, clock.now < until {
                if process.pollExit() != nil { break }
                await pause(milliseconds: 20)
            }
        }
        let (termination, killed) = await process.terminate(grace: timing.stopGrace)
        return (termination, killed)
    }

    /// True when GET `url` answers 200.
    private func probe(_ url: String, timeout: Duration) async -> Bool {
        let request = HTTPClientRequest(url: url)
        do {
            let response = try await client.execute(request, timeout: .milliseconds(max(1, timeout.milliseconds)))
            // Read the body so that the connection goes back to the pool.
            _ = try await response.body.collect(upTo: 1 << 20)
            return response.status == .ok
        } catch {
            return false
        }
    }
}
