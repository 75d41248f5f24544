// The ports through which the engine reaches the outside world. Adapters implement them in their
// own modules (CapstanGit, CapstanStore, CapstanMLflow, CapstanRunner, CapstanServing); the core
// and the planner depend only on these protocols. The serving port is in Serving.swift.

/// The time source. Tests use a manual clock; everything else uses the system clock.
public protocol Clock: Sendable {
    /// Milliseconds since the Unix epoch.
    func nowMilliseconds() -> Int64
}

/// A step to run: a training or validation command, exactly as it is to be executed.
public struct StepRequest: Hashable, Sendable {
    /// The command and its arguments, executed directly (never through a shell). `argv[0]` is
    /// looked up in `environment["PATH"]` when it contains no `/`; a relative path with a `/`
    /// is taken relative to `workdir`.
    public var argv: [String]
    /// The absolute working directory of the child.
    public var workdir: String
    /// The complete environment of the child; nothing is inherited from Capstan.
    public var environment: [String: String]
    /// How long the step may run before its process group is terminated.
    public var timeout: ManifestDuration
    /// Every output line (stdout and stderr interleaved as they arrive) is appended here.
    public var logPath: String?
    /// Put before each line handed to the live echo, e.g. `"[churn v3] "`. Not written to the log.
    public var outputPrefix: String?
    /// After SIGTERM, how long the process group gets before SIGKILL.
    public var killGrace: ManifestDuration
    /// Secret values: replaced by `[secret]` in every output line before it is logged, echoed or
    /// kept in the tail.
    public var redact: [String]

    public static let defaultKillGrace = ManifestDuration(milliseconds: 10_000, text: "10s")

    public init(
        argv: [String], workdir: String, environment: [String: String], timeout: ManifestDuration,
        logPath: String? = nil, outputPrefix: String? = nil, killGrace: ManifestDuration = StepRequest.defaultKillGrace,
        redact: [String] = []
    ) {
        self.redact = redact
        self.argv = argv
        self.workdir = workdir
        self.environment = environment
        self.timeout = timeout
        self.logPath = logPath
        self.outputPrefix = outputPrefix
        self.killGrace = killGrace
    }
}

/// How a step ended. A non-zero exit, a signal or a timeout is a result to inspect, not an error.
public struct StepResult: Hashable, Sendable {
    public enum Termination: Hashable, Sendable {
        /// The command exited with this status.
        case exited(Int32)
        /// The command was killed by this signal (not by Capstan's timeout).
        case signalled(Int32)
        /// The timeout elapsed and Capstan terminated the process group.
        case timedOut
    }

    public var termination: Termination
    /// The last lines of combined output (at most 40 lines and 8 KiB), for error messages.
    public var outputTail: String
    public var durationMilliseconds: Int64
    /// The output limit was reached: the rest of the output was neither logged nor echoed.
    public var outputTruncated: Bool

    public var succeeded: Bool { termination == .exited(0) }

    public init(termination: Termination, outputTail: String, durationMilliseconds: Int64 = 0, outputTruncated: Bool = false) {
        self.termination = termination
        self.outputTail = outputTail
        self.durationMilliseconds = durationMilliseconds
        self.outputTruncated = outputTruncated
    }
}

/// Runs training and validation steps (local subprocesses; Ray jobs).
public protocol StepRunner: Sendable {
    /// Runs `request` to its end and reports how it ended.
    ///
    /// `started` is called once with the child's pid (== its process group id) right after
    /// spawn, and awaited, so the caller can journal it before the runner waits. `line` receives each output line
    /// (without newline, prefix already applied) for live echo; it may be called from any thread.
    /// Throws when the step cannot be started at all (no such executable or working directory,
    /// an unwritable log) and `CancellationError` when the calling task is cancelled (after the
    /// process group has been terminated).
    func run(
        _ request: StepRequest, started: @escaping @Sendable (Int32) async -> Void,
        line: @escaping @Sendable (String) -> Void
    ) async throws -> StepResult

    /// Stops what is left of a step a killed pass started: the process group `processGroup`, but
    /// only when its processes carry `marker` in their environment (a recycled process group of
    /// someone else's never does). Returns whether anything was stopped.
    func stopLeftovers(processGroup: Int32, marker: (name: String, value: String)) -> Bool
}
