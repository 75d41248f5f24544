/// Something the supervisor did or saw, one line each in `capstan serve`'s log (stderr).
public struct ServingEvent: Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        /// A model-server process was started.
        case started
        /// A process answered its readiness path: it now takes traffic.
        case ready
        /// A process exited (or was killed for not becoming ready) while it should run.
        case crashed
        /// A replica will be started again after a backoff.
        case restarting
        /// A process was stopped by the agent (spec change, removal, shutdown).
        case stopped
        /// A backend was refused before anything started (artifact, secret, spec).
        case refused
    }

    public var kind: Kind
    public var deployment: String
    public var version: Int
    public var replica: Int?
    public var pid: Int32?
    public var port: Int?
    /// For `restarting`: the backoff before the next start.
    public var delayMilliseconds: Int?
    public var message: String

    public init(kind: Kind, deployment: String, version: Int, replica: Int? = nil, pid: Int32? = nil, port: Int? = nil,
                delayMilliseconds: Int? = nil, message: String) {
        self.kind = kind
        self.deployment = deployment
        self.version = version
        self.replica = replica
        self.pid = pid
        self.port = port
        self.delayMilliseconds = delayMilliseconds
        self.message = message
    }

    /// `churn-prod v2 r0 ready: pid 1234 on port 41235 after 0.4s`.
    public var description: String {
        "\(deployment) v\(version)\(replica.map { " r\($0)" } ?? "") \(kind.rawValue): \(message)"
    }
}

/// Timings of the supervisor. The defaults are the documented behaviour; tests shorten them.
public struct SupervisorTiming: Sendable {
    /// First restart delay after a failure; doubles up to `maximumBackoff`.
    public var initialBackoff: Duration = .seconds(1)
    public var maximumBackoff: Duration = .seconds(30)
    /// A replica ready this long before it fails restarts after `initialBackoff` again.
    public var healthyReset: Duration = .seconds(60)
    /// How often readiness is polled while a process starts.
    public var readinessInterval: Duration = .milliseconds(150)
    /// After SIGTERM to a process group, how long before SIGKILL.
    public var stopGrace: Duration = .seconds(5)
    /// How long a replica taken out of the routes may finish the requests it is serving before
    /// it gets SIGTERM.
    public var drainTimeout: Duration = .seconds(5)
    /// Log files are rotated to `.1` at this size.
    public var logLimitBytes: Int64 = ServerLogs.defaultLimit

    public init() {}
}

extension Duration {
    var milliseconds: Int64 {
        components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }

    /// `30s`, `1.5s`, `250ms`.
    static func text(milliseconds ms: Int64) -> String {
        if ms % 1000 == 0 { return "\(ms / 1000)s" }
        if ms >= 1000 {
            var s = String(Double(ms) / 1000)
            while s.hasSuffix("0") { s.removeLast() }
            return s + "s"
        }
        return "\(ms)ms"
    }

    var text: String { Self.text(milliseconds: milliseconds) }
}
