// The ports through which the engine reaches the outside world. Adapters implement them in their
// own modules (CapstanGit, CapstanStore, CapstanMLflow, CapstanRunner, CapstanServing); the core
// and the planner depend only on these protocols. Only `ManifestSource` is implemented so far;
// the others are the contracts later adapters are written against and are refined with them.

/// The time source. Tests use a manual clock; everything else uses the system clock.
public protocol Clock: Sendable {
    /// Milliseconds since the Unix epoch.
    func nowMilliseconds() -> Int64
}

/// What one endpoint of the serving layer serves.
public struct EndpointState: Hashable, Sendable, Codable {
    public struct Backend: Hashable, Sendable, Codable {
        public var version: Int
        public var weight: Int
        public var replicas: Int

        public init(version: Int, weight: Int, replicas: Int) {
            self.version = version
            self.weight = weight
            self.replicas = replicas
        }
    }

    public var deployment: String
    public var model: String
    public var backends: [Backend]

    public init(deployment: String, model: String, backends: [Backend]) {
        self.deployment = deployment
        self.model = model
        self.backends = backends
    }
}

/// The serving layer (Capstan's local serving agent; KServe and others later).
public protocol ServingTarget: Sendable {
    func endpoints() async throws -> [EndpointState]
    func setEndpoint(_ endpoint: EndpointState) async throws
    func removeEndpoint(_ deployment: String) async throws
}

/// A step to run: training or validation command with its environment.
public struct StepRequest: Hashable, Sendable {
    public var argv: [String]
    public var workdir: String
    public var environment: [String: String]
    public var timeout: ManifestDuration

    public init(argv: [String], workdir: String, environment: [String: String], timeout: ManifestDuration) {
        self.argv = argv
        self.workdir = workdir
        self.environment = environment
        self.timeout = timeout
    }
}

public struct StepResult: Hashable, Sendable {
    public enum Termination: Hashable, Sendable {
        case exited(Int32)
        case signalled(Int32)
        case timedOut
    }

    public var termination: Termination
    /// The last lines of combined output, for error messages.
    public var outputTail: String

    public init(termination: Termination, outputTail: String) {
        self.termination = termination
        self.outputTail = outputTail
    }
}

/// Runs training and validation steps (local subprocesses; Kubernetes Jobs later).
public protocol StepRunner: Sendable {
    func run(_ request: StepRequest) async throws -> StepResult
}

/// Capstan's own persistent state: journal, rollout state machines, locks, audit log.
public protocol StateStore: Sendable {
    func acquireLock(holder: String, command: String, ttlMilliseconds: Int64) async throws
    func releaseLock(holder: String) async throws
}
