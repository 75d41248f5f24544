// The serving port: what the reconciler asks of a serving layer, and what it observes there.
// The local serving agent (`capstan serve`, CapstanServing) implements it over its admin API;
// KServe and others plug in here later. The types below are also the admin API's JSON (Codable,
// field names as written here), documented in docs/serving.md.

/// One version of a model behind an endpoint: how to run it and how much traffic it gets.
public struct BackendSpec: Hashable, Sendable, Codable {
    public var version: Int
    /// Share of the endpoint's traffic, 0…100. The weights of an endpoint add up to 100 (or all
    /// are 0 while nothing may serve).
    public var weight: Int
    /// Processes to run for this version.
    public var replicas: Int
    /// `serve.command`, run as argv (never through a shell) with `PORT` and `CAPSTAN_MODEL_DIR`.
    public var command: [String]
    /// Absolute working folder (a materialized commit tree on the agent's machine).
    public var workdir: String
    /// Absolute folder of the version's artifact.
    public var modelDir: String
    /// `sha256:…` of `modelDir`: the agent verifies it before starting anything.
    public var artifactDigest: String
    public var env: [String: String]
    /// Variable the server sees → variable in the agent's environment (names only, never values).
    public var secretEnv: [String: String]
    /// HTTP path answering 200 once the server is ready.
    public var readinessPath: String
    public var readinessTimeoutMilliseconds: Int64

    public init(version: Int, weight: Int, replicas: Int, command: [String], workdir: String, modelDir: String,
                artifactDigest: String, env: [String: String] = [:], secretEnv: [String: String] = [:],
                readinessPath: String = "/healthz", readinessTimeoutMilliseconds: Int64 = 60_000) {
        self.version = version
        self.weight = weight
        self.replicas = replicas
        self.command = command
        self.workdir = workdir
        self.modelDir = modelDir
        self.artifactDigest = artifactDigest
        self.env = env
        self.secretEnv = secretEnv
        self.readinessPath = readinessPath
        self.readinessTimeoutMilliseconds = readinessTimeoutMilliseconds
    }
}

/// What an endpoint should serve: the desired state the reconciler sets.
public struct EndpointSpec: Hashable, Sendable, Codable {
    /// The Deployment's name; the gateway serves it under `/<deployment>/…`.
    public var deployment: String
    public var model: String
    /// One backend per version.
    public var backends: [BackendSpec]

    public init(deployment: String, model: String, backends: [BackendSpec]) {
        self.deployment = deployment
        self.model = model
        self.backends = backends
    }

    /// The weights by version, the part of a spec that drift is judged on.
    public var weights: [Int: Int] {
        Dictionary(backends.map { ($0.version, $0.weight) }, uniquingKeysWith: { a, _ in a })
    }
}

/// Latency histogram with fixed bucket bounds (milliseconds): `counts[i]` requests took at most
/// `bounds[i]` and more than `bounds[i-1]`; the last count is everything above the last bound.
public struct LatencyHistogram: Hashable, Sendable, Codable {
    /// 0.5 ms growing by 25 % per bucket up to about 60 s.
    public static let standardBounds: [Double] = {
        var out: [Double] = []
        var b = 0.5
        while b < 60_000 {
            out.append((b * 1000).rounded() / 1000)
            b *= 1.25
        }
        return out
    }()

    public var bounds: [Double]
    /// `bounds.count + 1` counts.
    public var counts: [Int64]

    public init(bounds: [Double] = LatencyHistogram.standardBounds, counts: [Int64]? = nil) {
        self.bounds = bounds
        self.counts = counts ?? Array(repeating: 0, count: bounds.count + 1)
    }

    public var total: Int64 { counts.reduce(0, +) }

    public mutating func record(milliseconds: Double) {
        var lo = 0, hi = bounds.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if milliseconds <= bounds[mid] { hi = mid } else { lo = mid + 1 }
        }
        counts[lo] += 1
    }

    /// The counts recorded since `earlier` (same bounds), for a window's percentiles.
    public func since(_ earlier: LatencyHistogram) -> LatencyHistogram {
        guard earlier.bounds == bounds, earlier.counts.count == counts.count else { return self }
        return LatencyHistogram(bounds: bounds, counts: zip(counts, earlier.counts).map { max(0, $0 - $1) })
    }

    /// The upper bound of the bucket holding the `q` quantile (0…1), in milliseconds; nil without
    /// data; `.infinity` when it falls above the last bound.
    public func quantile(_ q: Double) -> Double? {
        let total = self.total
        guard total > 0 else { return nil }
        let rank = Int64((Double(total) * q).rounded(.up))
        var seen: Int64 = 0
        for (i, c) in counts.enumerated() {
            seen += c
            if seen >= max(rank, 1) { return i < bounds.count ? bounds[i] : .infinity }
        }
        return .infinity
    }
}

/// Traffic counters of one backend since the agent started (monotonic while `bootID` holds).
public struct BackendStats: Hashable, Sendable, Codable {
    public var requests: Int64
    /// Responses with a status of 500 or more from the model server.
    public var errors5xx: Int64
    /// Requests that never got a response (connection refused or reset, timeout).
    public var connectionErrors: Int64
    public var latency: LatencyHistogram

    public init(requests: Int64 = 0, errors5xx: Int64 = 0, connectionErrors: Int64 = 0, latency: LatencyHistogram = LatencyHistogram()) {
        self.requests = requests
        self.errors5xx = errors5xx
        self.connectionErrors = connectionErrors
        self.latency = latency
    }

    /// Failed requests: 5xx answers and connection errors.
    public var failures: Int64 { errors5xx + connectionErrors }

    /// What happened between `earlier` and now.
    public func since(_ earlier: BackendStats) -> BackendStats {
        BackendStats(requests: max(0, requests - earlier.requests), errors5xx: max(0, errors5xx - earlier.errors5xx),
                     connectionErrors: max(0, connectionErrors - earlier.connectionErrors), latency: latency.since(earlier.latency))
    }
}

/// The health of one backend's processes.
public enum BackendHealth: String, Hashable, Sendable, Codable {
    /// Every replica answers its readiness path.
    case ready
    /// Some replicas are ready, others starting or restarting.
    case degraded
    /// No replica is ready yet (within the readiness timeout).
    case starting
    /// No replica is ready and the processes keep failing (crash loop, readiness timeout,
    /// artifact refused): see `lastError`.
    case failing
}

/// What the serving layer observes of one backend.
public struct BackendStatus: Hashable, Sendable, Codable {
    public var spec: BackendSpec
    public var readyReplicas: Int
    public var health: BackendHealth
    public var restarts: Int
    public var lastError: String?
    public var stats: BackendStats

    public init(spec: BackendSpec, readyReplicas: Int, health: BackendHealth, restarts: Int = 0, lastError: String? = nil,
                stats: BackendStats = BackendStats()) {
        self.spec = spec
        self.readyReplicas = readyReplicas
        self.health = health
        self.restarts = restarts
        self.lastError = lastError
        self.stats = stats
    }
}

/// What the serving layer observes of one endpoint.
public struct EndpointStatus: Hashable, Sendable, Codable {
    public var deployment: String
    public var model: String
    public var backends: [BackendStatus]
    /// Identifies the agent process: counters restart from zero when it changes.
    public var bootID: String

    public init(deployment: String, model: String, backends: [BackendStatus], bootID: String) {
        self.deployment = deployment
        self.model = model
        self.backends = backends
        self.bootID = bootID
    }

    public var spec: EndpointSpec {
        EndpointSpec(deployment: deployment, model: model, backends: backends.map(\.spec))
    }

    public func backend(version: Int) -> BackendStatus? {
        backends.first { $0.spec.version == version }
    }
}

/// Why the serving layer refused or failed a call.
public struct ServingError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        /// The agent cannot be reached (not running, wrong address, timeout).
        case unavailable
        /// The agent refused the request (bad spec, unauthorized).
        case rejected
    }

    public var kind: Kind
    public var message: String

    public init(kind: Kind, message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }
}

/// The serving layer.
public protocol ServingTarget: Sendable {
    /// Every endpoint and its live state. Throws `ServingError(.unavailable)` when unreachable.
    func endpoints() async throws -> [EndpointStatus]
    /// Makes the endpoint serve `spec` (creating it); processes start and stop asynchronously,
    /// weights apply at once to ready backends.
    func apply(_ spec: EndpointSpec) async throws
    func remove(deployment: String) async throws
}
