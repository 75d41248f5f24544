import Synchronization

/// Traffic counters of one backend (deployment, version), shared by every routing snapshot and
/// kept for the life of the agent process (monotonic while its boot id holds).
final class BackendCounters: Sendable {
    private let stats = Mutex(BackendStats())

    /// One request answered by the model server: its status and the time to the response head.
    func recordResponse(status: Int, milliseconds: Double) {
        stats.withLock { stats in
            stats.requests += 1
            if status >= 500 { stats.errors5xx += 1 }
            stats.latency.record(milliseconds: milliseconds)
        }
    }

    /// One answer cut short after its head (already counted by `recordResponse`): the model server
    /// closed the connection, or paused too long, in the middle of the body.
    func recordBrokenResponse() {
        stats.withLock { $0.connectionErrors += 1 }
    }

    /// One request that never got a response from the model server.
    func recordConnectionError() {
        stats.withLock { stats in
            stats.requests += 1
            stats.connectionErrors += 1
        }
    }

    var snapshot: BackendStats { stats.withLock { $0 } }
}

/// One ready model-server process as the gateway sees it.
final class ReplicaTarget: Sendable {
    let port: Int
    /// `127.0.0.1:PORT`, the `Host` of requests sent to it.
    let authority: String
    /// Requests being proxied to it right now; a stopping replica waits for zero (bounded).
    let inFlight = Atomic<Int>(0)

    init(port: Int) {
        self.port = port
        self.authority = "127.0.0.1:\(port)"
    }
}

/// A backend that may receive traffic: weight > 0 and at least one ready replica.
final class RouteBackend: Sendable {
    let version: Int
    let versionHeader: String
    let weight: Int
    let counters: BackendCounters
    let replicas: [ReplicaTarget]
    private let next = Atomic<UInt64>(0)

    init(version: Int, weight: Int, counters: BackendCounters, replicas: [ReplicaTarget]) {
        self.version = version
        self.versionHeader = String(version)
        self.weight = weight
        self.counters = counters
        self.replicas = replicas
    }

    /// Round robin over the ready replicas.
    func pickReplica() -> ReplicaTarget {
        let n = next.wrappingAdd(1, ordering: .relaxed).oldValue
        return replicas[Int(n % UInt64(replicas.count))]
    }
}

/// An immutable routing snapshot of one endpoint, replaced whenever weights or readiness change.
final class EndpointRoute: Sendable {
    let deployment: String
    let backends: [RouteBackend]
    /// Running sums of the weights of `backends`: the weights renormalized over ready backends.
    private let cumulative: [UInt64]
    private let total: UInt64
    private let sequence = Atomic<UInt64>(0)

    init(deployment: String, backends: [RouteBackend]) {
        self.deployment = deployment
        self.backends = backends
        var sum: UInt64 = 0
        var cumulative: [UInt64] = []
        for b in backends {
            sum += UInt64(b.weight)
            cumulative.append(sum)
        }
        self.cumulative = cumulative
        self.total = sum
    }

    /// A backend chosen by weight; nil when none may serve.
    ///
    /// The n-th request lands at the fractional part of n·φ (φ the golden ratio) scaled to the
    /// total weight: a low-discrepancy sequence, so any window of requests is split very close to
    /// the weights, without locks or a random number per request.
    func pickBackend() -> RouteBackend? {
        switch backends.count {
        case 0: return nil
        case 1: return backends[0]
        default:
            let n = sequence.wrappingAdd(1, ordering: .relaxed).oldValue
            let fraction = (n &* 0x9E37_79B9_7F4A_7C15) >> 32  // 32 bits of frac(n·φ)
            let point = (fraction &* total) >> 32  // 0..<total
            for (i, upper) in cumulative.enumerated() where point < upper {
                return backends[i]
            }
            return backends[backends.count - 1]
        }
    }
}

/// What the gateway routes by: deployment → current snapshot.
final class RoutingTable: Sendable {
    private let routes = Mutex<[String: EndpointRoute]>([:])

    func route(for deployment: Substring) -> EndpointRoute? {
        routes.withLock { $0[String(deployment)] }
    }

    func set(_ route: EndpointRoute) {
        routes.withLock { $0[route.deployment] = route }
    }

    func remove(_ deployment: String) {
        routes.withLock { _ = $0.removeValue(forKey: deployment) }
    }
}
