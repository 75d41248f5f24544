import Dispatch
import Subprocess
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs steps as local subprocesses (swift-subprocess).
///
/// - argv is executed directly, never through a shell, with exactly the request's environment.
/// - The child leads a new process group (its pid is the group id), so the whole tree it starts
///   can be signalled at once; when the child exits, anything left in its group is SIGKILLed.
/// - stdout and stderr share one pipe and are read as lines, in the order they were written.
/// - At the timeout, on cancellation of the calling task, or when the log cannot be written, the
///   group gets SIGTERM, then after `killGrace` SIGKILL.
public struct LocalStepRunner: StepRunner {
    public var limits: OutputLimits

    public init(limits: OutputLimits = .standard) {
        self.limits = limits
    }

    public func run(
        _ request: StepRequest, started: @escaping @Sendable (Int32) async -> Void,
        line: @escaping @Sendable (String) -> Void
    ) async throws -> StepResult {
        try Task.checkCancellation()
        let command = try Self.validate(request)
        try Self.checkWorkdir(request.workdir, command: command)
        let executable = try Self.resolveExecutable(request, command: command)
        let log: LogFile?
        if let logPath = request.logPath {
            do {
                log = try LogFile(path: logPath)
            } catch {
                throw StepRunnerError(
                    .logUnwritable,
                    "cannot run `\(command)`: cannot open its log file '\(logPath)' for appending (\(error)); "
                        + "check that the directory exists and is writable",
                    command: command, path: logPath, cause: error)
            }
        } else {
            log = nil
        }

        var options = PlatformOptions()
        // posix_spawn's POSIX_SPAWN_SETPGROUP with 0: the child leads a new group from the start.
        options.processGroupID = 0
        // Used by swift-subprocess when the calling task is cancelled: SIGTERM to the group, then
        // (unless the child exits first) SIGKILL to the group after the grace period. Leftovers
        // of a child that exited in time are killed by `watch`.
        options.teardownSequence = [
            .send(signal: .terminate, toProcessGroup: true, allowedDurationToNextStep: .milliseconds(request.killGrace.milliseconds)),
        ]
        var environment: [Environment.Key: String] = [:]
        for (name, value) in request.environment {
            if let key = Environment.Key(rawValue: name) { environment[key] = value }
        }
        let limits = self.limits
        let clock = ContinuousClock()
        let startedAt = clock.now
        let execution: ExecutionResult<RunOutcome, SequenceOutput, CombinedErrorOutput>
        do {
            execution = try await Subprocess.run(
                .path(.init(executable)),
                arguments: Arguments(executablePathOverride: request.argv[0], remainingValues: Array(request.argv.dropFirst())),
                environment: .custom(environment),
                workingDirectory: .init(request.workdir),
                platformOptions: options,
                input: .none,
                output: .sequence,
                error: .combinedWithOutput
            ) { execution in
                await Self.supervise(execution, request: request, limits: limits, log: log, started: started, line: line)
            }
        } catch let error as SubprocessError {
            throw Self.describe(error, request: request, executable: executable, command: command)
        }
        let elapsed = clock.now - startedAt
        try Task.checkCancellation()

        let outcome = execution.closureResult
        if let failure = outcome.output.logFailure, let logPath = request.logPath {
            throw StepRunnerError(
                .logUnwritable,
                "`\(command)` was stopped: writing its log file '\(logPath)' failed (\(failure)); "
                    + "free space or fix the log directory, then run the step again",
                command: command, path: logPath, cause: failure)
        }
        if let failure = outcome.readFailure {
            throw StepRunnerError(
                .outputUnreadable, "`\(command)` was stopped: reading its output failed (\(failure))",
                command: command, cause: failure)
        }
        let termination: StepResult.Termination
        if outcome.timedOut {
            termination = .timedOut
        } else {
            switch execution.terminationStatus {
            case .exited(let code): termination = .exited(code)
            case .signaled(let signal): termination = .signalled(signal)
            }
        }
        let milliseconds = elapsed.components.seconds * 1000 + elapsed.components.attoseconds / 1_000_000_000_000_000
        return StepResult(
            termination: termination, outputTail: outcome.output.tail, durationMilliseconds: milliseconds,
            outputTruncated: outcome.output.truncated)
    }
}

// MARK: - While the child runs

extension LocalStepRunner {
    public func stopLeftovers(processGroup: Int32, marker: (name: String, value: String)) -> Bool {
        processGroup > 1 && ProcessGroups.kill(processGroup, environmentMarker: marker)
    }
}

extension LocalStepRunner {
    /// What the body of `Subprocess.run` hands back.
    struct RunOutcome: Sendable {
        var output: StepOutput.Summary
        var readFailure: SubprocessError?
        var timedOut: Bool
    }

    /// Set by the output reader when the step must be stopped (its log cannot be written, or its
    /// output cannot be read); acted on by the watcher.
    final class StopRequest: Sendable {
        private let flag = Atomic(false)
        func request() { flag.store(true, ordering: .relaxed) }
        var isRequested: Bool { flag.load(ordering: .relaxed) }
    }

    private enum Part: Sendable {
        case output(StepOutput.Summary, SubprocessError?)
        case watcher(timedOut: Bool)
    }

    /// Reads the output and watches the child until both are done. The child is not reaped before
    /// this returns (swift-subprocess reaps it afterwards), so its pid — and with it the group id —
    /// cannot be reused by another process while any signal here is sent.
    static func supervise(
        _ execution: Execution<NoInput, SequenceOutput, CombinedErrorOutput>, request: StepRequest,
        limits: OutputLimits, log: LogFile?, started: @escaping @Sendable (Int32) async -> Void,
        line: @escaping @Sendable (String) -> Void
    ) async -> RunOutcome {
        let pid = execution.processIdentifier.value
        await started(pid)
        let stop = StopRequest()
        let stream = execution.standardOutput
        let output = StepOutput(
            limits: limits, log: log, prefix: request.outputPrefix ?? "", secrets: request.redact, echo: line)
        let timeout = Duration.milliseconds(request.timeout.milliseconds)
        let grace = Duration.milliseconds(request.killGrace.milliseconds)
        return await withTaskGroup(of: Part.self) { group in
            group.addTask {
                var output = output
                do {
                    for try await buffer in stream {
                        buffer.withUnsafeBytes { output.consume($0) }
                        if output.logFailure != nil { stop.request() }
                    }
                } catch {
                    // Nothing drains the pipe any more: stop the child rather than let it block.
                    stop.request()
                    return .output(output.finish(), error as? SubprocessError)
                }
                return .output(output.finish(), nil)
            }
            group.addTask {
                .watcher(timedOut: await watch(pid: pid, timeout: timeout, grace: grace, stop: stop))
            }
            var outcome = RunOutcome(output: .init(tail: "", truncated: false, logFailure: nil), readFailure: nil, timedOut: false)
            for await part in group {
                switch part {
                case .output(let summary, let failure):
                    outcome.output = summary
                    outcome.readFailure = failure
                case .watcher(let timedOut):
                    outcome.timedOut = timedOut
                }
            }
            return outcome
        }
    }

    /// Polls the child until it has exited (without reaping it), enforcing the deadline and stop
    /// requests with SIGTERM to the group, then SIGKILL after `grace`; finally SIGKILLs whatever
    /// is left in the group. Returns whether the deadline was reached.
    ///
    /// It keeps polling when the calling task is cancelled (swift-subprocess then runs the same
    /// SIGTERM-then-SIGKILL teardown), so that leftovers are still killed once the child exits.
    static func watch(pid: Int32, timeout: Duration, grace: Duration, stop: StopRequest) async -> Bool {
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + timeout
        var killAt: ContinuousClock.Instant?
        var killed = false
        var timedOut = false
        while true {
            switch childState(pid) {
            case .running:
                break
            case .exited:
                // The leader is an unreaped zombie, so the group id is still ours: killing the
                // group cannot hit anybody else's processes.
                _ = sendToGroup(pid, SIGKILL)
                return timedOut
            case .gone:
                // Reaped by someone else: the pid may already be reused, so send nothing.
                return timedOut
            }
            let now = clock.now
            if killAt == nil, !Task.isCancelled, now >= deadline || stop.isRequested {
                timedOut = now >= deadline
                _ = sendToGroup(pid, SIGTERM)
                killAt = now + grace
            }
            if let killAt, !killed, now >= killAt {
                _ = sendToGroup(pid, SIGKILL)
                killed = true
            }
            // Poll quickly at first (short steps finish promptly), then every 50 ms.
            var interval = min(Duration.milliseconds(50), max(Duration.milliseconds(5), (now - start) / 20))
            let next = killed ? nil : (killAt ?? deadline)
            if let next, next > now { interval = min(interval, next - now) }
            await pause(interval)
        }
    }

    enum ChildState { case running, exited, gone }

    /// Whether the child has exited, leaving its zombie in place for swift-subprocess to reap.
    static func childState(_ pid: Int32) -> ChildState {
        while true {
            var info = siginfo_t()
            if waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 {
                return info.si_signo == 0 ? .running : .exited
            }
            if errno != EINTR { return .gone }
        }
    }

    /// Sleeps even when the task is cancelled (`Task.sleep` would return at once and the watcher
    /// would spin while the teardown runs).
    static func pause(_ duration: Duration) async {
        let nanoseconds = duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(nanoseconds))) {
                continuation.resume()
            }
        }
    }
}

// MARK: - Before the child runs

extension LocalStepRunner {
    /// Checks what the operating system would reject with a less helpful message; returns the
    /// command as shown in messages. Environment values are never quoted (they may be secrets).
    static func validate(_ request: StepRequest) throws(StepRunnerError) -> String {
        guard let first = request.argv.first, !first.isEmpty else {
            throw StepRunnerError(
                .invalidRequest, "cannot run a step with an empty command; give it as a list of words, e.g. [python3, train.py]",
                command: "")
        }
        let command = StepRunnerError.render(request.argv)
        if let index = request.argv.firstIndex(where: { $0.utf8.contains(0) }) {
            throw StepRunnerError(.invalidRequest, "cannot run `\(command)`: word \(index + 1) contains a NUL byte", command: command)
        }
        for (name, value) in request.environment.sorted(by: { $0.key < $1.key }) {
            if name.isEmpty || name.contains("=") || name.utf8.contains(0) {
                throw StepRunnerError(
                    .invalidRequest,
                    "cannot run `\(command)`: environment variable name '\(name)' is empty or contains '=' or a NUL byte",
                    command: command)
            }
            if value.utf8.contains(0) {
                throw StepRunnerError(
                    .invalidRequest, "cannot run `\(command)`: the value of environment variable '\(name)' contains a NUL byte",
                    command: command)
            }
        }
        guard request.workdir.hasPrefix("/") else {
            throw StepRunnerError(
                .invalidRequest, "cannot run `\(command)`: working directory '\(request.workdir)' is not an absolute path",
                command: command, path: request.workdir)
        }
        return command
    }

    static func checkWorkdir(_ workdir: String, command: String) throws(StepRunnerError) {
        var info = stat()
        guard stat(workdir, &info) == 0 else {
            let failure = OSError(errno)
            let why = failure.code == ENOENT ? "does not exist; create it or fix the step's workdir" : "cannot be used (\(failure))"
            throw StepRunnerError(
                .workdirMissing, "cannot run `\(command)`: working directory '\(workdir)' \(why)",
                command: command, path: workdir, cause: failure)
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            throw StepRunnerError(
                .workdirMissing, "cannot run `\(command)`: working directory '\(workdir)' is not a directory; fix the step's workdir",
                command: command, path: workdir)
        }
    }

    /// The path to execute: `argv[0]` itself when it contains a `/` (relative to the working
    /// directory), otherwise the first executable file named `argv[0]` in the request's PATH.
    static func resolveExecutable(_ request: StepRequest, command: String) throws(StepRunnerError) -> String {
        let name = request.argv[0]
        let workdir = request.workdir.hasSuffix("/") ? String(request.workdir.dropLast()) : request.workdir
        if name.contains("/") {
            var relative = Substring(name)
            while relative.hasPrefix("./") { relative = relative.dropFirst(2) }
            let path = name.hasPrefix("/") ? name : workdir + "/" + relative
            var info = stat()
            guard stat(path, &info) == 0 else {
                let failure = OSError(errno)
                let hint = name.hasPrefix("/") ? "" : " (relative paths are taken from the working directory '\(workdir)')"
                let why = failure.code == ENOENT ? "does not exist\(hint)" : "cannot be used (\(failure))"
                throw StepRunnerError(
                    .executableNotFound, "cannot run `\(command)`: '\(path)' \(why); fix the command's path",
                    command: command, path: path, cause: failure)
            }
            guard info.st_mode & S_IFMT == S_IFREG, access(path, X_OK) == 0 else {
                let what = info.st_mode & S_IFMT == S_IFDIR ? "is a directory" : "is not an executable file"
                throw StepRunnerError(
                    .executableNotFound,
                    "cannot run `\(command)`: '\(path)' \(what); make it executable (chmod +x) "
                        + "or run it through its interpreter (e.g. python3 \(name))",
                    command: command, path: path)
            }
            return path
        }
        guard let searchPath = request.environment["PATH"], !searchPath.isEmpty else {
            throw StepRunnerError(
                .executableNotFound,
                "cannot run `\(command)`: the step's environment has no PATH to look '\(name)' up in; "
                    + "set PATH in the step's env or give an absolute path",
                command: command)
        }
        for entry in searchPath.split(separator: ":", omittingEmptySubsequences: false) {
            let directory = entry.isEmpty ? workdir : entry.hasPrefix("/") ? String(entry) : workdir + "/" + entry
            let candidate = directory + "/" + name
            var info = stat()
            if stat(candidate, &info) == 0, info.st_mode & S_IFMT == S_IFREG, access(candidate, X_OK) == 0 {
                return candidate
            }
        }
        throw StepRunnerError(
            .executableNotFound,
            "cannot run `\(command)`: '\(name)' was not found in the step's PATH (\(searchPath)); "
                + "install it, add its directory to PATH in the step's env, or give its absolute path",
            command: command)
    }

    /// A launch failure reported by swift-subprocess, in the runner's terms.
    static func describe(_ error: SubprocessError, request: StepRequest, executable: String, command: String) -> StepRunnerError {
        let reason = error.underlyingError.map { "\(OSError($0.rawValue))" } ?? "\(error)"
        switch error.code {
        case .executableNotFound:
            // Resolved above, so the file is there: the kernel refused it (a #! interpreter that
            // does not exist, a noexec mount).
            return StepRunnerError(
                .executableNotFound,
                "cannot run `\(command)`: '\(executable)' could not be executed (\(reason)); "
                    + "if it is a script, check that the interpreter on its #! line exists",
                command: command, path: executable, cause: error)
        case .failedToChangeWorkingDirectory:
            return StepRunnerError(
                .workdirMissing, "cannot run `\(command)`: cannot enter working directory '\(request.workdir)' (\(reason))",
                command: command, path: request.workdir, cause: error)
        default:
            let hint = error.underlyingError?.rawValue == ENOEXEC ? "; a script needs a #! line naming its interpreter" : ""
            return StepRunnerError(
                .spawnFailed, "cannot start `\(command)` ('\(executable)'): \(reason)\(hint)",
                command: command, path: executable, cause: error)
        }
    }
}
