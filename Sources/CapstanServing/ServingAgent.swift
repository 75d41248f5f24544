import AsyncHTTPClient
import CapstanCore
import CapstanSystem
import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// `host:port` to listen on.
public struct ListenAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    /// 0 lets the system pick a free port (tests).
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `127.0.0.1:8080`, `[::1]:8080` or `:8080` (127.0.0.1).
    public init(parsing text: String, option: String) throws(ServingAgentError) {
        let bad = ServingAgentError(message: "\(option) '\(text)' is not HOST:PORT (for example 127.0.0.1:8080)")
        guard let colon = text.lastIndex(of: ":") else { throw bad }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        if host.isEmpty { host = "127.0.0.1" }
        guard let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { throw bad }
        self.init(host: host, port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// `localhost`, 127.0.0.0/8 or `::1`: reachable only from this machine. Any other name
    /// counts as not loopback, even one that resolves to 127.0.0.1.
    public var isLoopback: Bool { Loopback.isLoopbackHost(host) }

    /// `http://0.0.0.0:8080`: the address as bound.
    public var url: String { "http://\(self)" }

    /// A URL that reaches this address from this machine: the wildcard addresses (`0.0.0.0`,
    /// `::`) are reached over loopback.
    public var localURL: String {
        let reachable = host == "0.0.0.0" ? "127.0.0.1" : host == "::" ? "::1" : host
        return ListenAddress(host: reachable, port: port).url
    }

    /// The address a listening channel is bound to, as the system reports it.
    init(boundTo address: SocketAddress?, otherwise: ListenAddress) {
        if let address, let ip = address.ipAddress, let port = address.port {
            self.init(host: ip, port: port)
        } else {
            self = otherwise
        }
    }
}

/// The admin API can start, change and stop model servers (commands the machine runs): without
/// a token it listens only on loopback (docs/serving.md, "Admin API binding").
public enum AdminBinding {
    /// Why the admin API may not listen on `address`, or nil. `flag` and `tokenFlag` name the
    /// options that set the address and the token.
    public static func problem(_ address: ListenAddress, hasToken: Bool, flag: String = "--admin",
                               tokenFlag: String = "--admin-token-env") -> String? {
        guard !hasToken, !address.isLoopback else { return nil }
        return "\(flag) \(address) is not a loopback address, and the admin API starts, changes and stops model servers: "
            + "anyone who can reach it could run them. Pass \(tokenFlag) NAME (NAME holding a secret bearer token) to require "
            + "that token, or listen on 127.0.0.1 or [::1]"
    }
}

/// How to run a serving agent.
public struct ServingAgentConfiguration: Sendable {
    public var gateway = ListenAddress(host: "127.0.0.1", port: 8080)
    public var admin = ListenAddress(host: "127.0.0.1", port: 7070)
    /// Capstan's state directory; the agent keeps its files in `<stateDirectory>/serving/`.
    public var stateDirectory: String
    /// When set, every admin call but `/healthz` needs `Authorization: Bearer <adminToken>`.
    public var adminToken: String?
    /// The agent's environment: where the servers' PATH/HOME/LANG/LC_ALL/TMPDIR/USER and the
    /// values of `secretEnv` come from.
    public var environment: [String: String] = ProcessInfo.processInfo.environment
    public var timing = SupervisorTiming()
    /// How long a model server may take to send the response head of a proxied request.
    public var upstreamTimeout: Duration = .seconds(300)
    /// How long the admin API and the gateway get to finish the requests in flight when the
    /// agent stops; then they are cancelled. The model servers are stopped after that.
    public var gracefulShutdownTimeout: Duration = .seconds(10)
    /// Event-loop threads of the gateway. The agent shares its machine with the model servers it
    /// runs, so by default the gateway takes half the cores (at least one): on two cores one
    /// thread proxies eight connections faster than two threads competing with the servers
    /// (docs/benchmarks.md).
    public var gatewayThreads = max(1, System.coreCount / 2)
    /// Supervisor events (started, ready, crashed, restarting, stopped, refused).
    public var onEvent: @Sendable (ServingEvent) -> Void = { _ in }

    public init(stateDirectory: String) {
        self.stateDirectory = stateDirectory
    }
}

/// Where a running agent listens.
public struct RunningAgent: Sendable {
    /// The gateway's address as bound (`127.0.0.1:8080`, `0.0.0.0:8080`, `[::]:8080`).
    public var gateway: ListenAddress
    /// The admin API's address as bound.
    public var admin: ListenAddress
    public var bootID: String

    public var gatewayPort: Int { gateway.port }
    public var adminPort: Int { admin.port }
    /// A URL that reaches the gateway from this machine (`http://127.0.0.1:8080`).
    public var gatewayURL: String { gateway.localURL }
    /// A URL that reaches the admin API from this machine (`http://127.0.0.1:7070`).
    public var adminURL: String { admin.localURL }
}

/// The local serving agent: the supervisor of model servers, the gateway and the admin API,
/// run as one `ServiceGroup`.
///
/// `init` reads the saved endpoints (a damaged file is an error: nothing starts); `run` listens,
/// then starts the saved endpoints' processes, and returns after a graceful shutdown (or
/// cancellation) once every model server has been stopped. An agent runs once.
public final class ServingAgent: Sendable {
    public let configuration: ServingAgentConfiguration
    /// A random id of this agent; status counters start from zero with it.
    public let bootID: String
    /// When this agent was created, RFC 3339 UTC.
    public let startedAt: String
    /// `<state>/serving/endpoints.json`.
    public let endpointsFile: String
    /// The endpoints read from `endpointsFile`, brought back by `run()`.
    public let savedEndpoints: [EndpointSpec]
    /// What people should know about the state folder (other users can read it), to report.
    public let warnings: [String]
    private let store: EndpointStore
    private let logDirectory: String

    private struct RunState {
        var started = false
        var shutdownRequested = false
        var group: ServiceGroup?
    }

    private let state = Mutex(RunState())

    public init(configuration: ServingAgentConfiguration) throws(ServingAgentError) {
        if let problem = AdminBinding.problem(configuration.admin, hasToken: configuration.adminToken != nil) {
            throw ServingAgentError(message: problem)
        }
        self.configuration = configuration
        let serving = configuration.stateDirectory + "/serving"
        logDirectory = serving + "/logs"
        do {
            // The state folder and what the agent keeps in it are private (0700), like the rest
            // of Capstan's state.
            warnings = try PrivateFiles.prepareStateFolder(configuration.stateDirectory)
            try PrivateFiles.makeFolder(logDirectory, parentsMode: PrivateFiles.folderMode, what: "create the serving log folder")
        } catch {
            throw ServingAgentError(message: "\(error); check the state directory (--state-dir)")
        }
        store = EndpointStore(servingDirectory: serving)
        endpointsFile = store.path
        savedEndpoints = try store.load()
        var generator = SystemRandomNumberGenerator()
        bootID = (0..<2).map { _ in String(generator.next() as UInt64, radix: 16) }.map { String(repeating: "0", count: 16 - $0.count) + $0 }.joined()
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        startedAt = formatter.string(from: Date())
    }

    /// Listens, serves and supervises until a graceful shutdown (`shutdown()`, a parent service
    /// group, or SIGTERM/SIGINT with `handleSignals`) or cancellation; every model server is
    /// stopped before it returns. `onListening` is called once both listeners are up.
    public func run(handleSignals: Bool = false, onListening: @escaping @Sendable (RunningAgent) -> Void = { _ in }) async throws {
        let alreadyStarted = state.withLock { state -> Bool in
            defer { state.started = true }
            return state.started
        }
        guard !alreadyStarted else { throw ServingAgentError(message: "this serving agent has already run; create a new one") }

        let configuration = self.configuration
        // Servers an agent killed on this state folder left running are stopped before any starts.
        let servingDirectory = configuration.stateDirectory + "/serving"
        let leftovers = LeftoverServers.takeOver(servingDirectory: servingDirectory, bootID: bootID)
        for server in leftovers.stopped {
            configuration.onEvent(ServingEvent(
                kind: .stopped, deployment: server.deployment, version: server.version, pid: server.pid,
                message: "pid \(server.pid) was left running by an agent that is gone (pid \(leftovers.previousAgent ?? 0)); stopped it"))
        }
        defer { LeftoverServers.release(servingDirectory: servingDirectory, bootID: bootID) }
        var logger = Logger(label: "capstan.serve") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = .warning
        let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: Self.clientConfiguration, backgroundActivityLogger: logger)
        let routes = RoutingTable()
        let supervisor = Supervisor(bootID: bootID, routes: routes, client: client, timing: configuration.timing,
                                    environment: configuration.environment, logDirectory: logDirectory, store: store,
                                    onEvent: configuration.onEvent)
        let gate = ListeningGate(bootID: bootID, onListening: onListening)
        let gatewayLoops = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.gatewayThreads))
        let gateway = Gateway(routes: routes, upstreamTimeout: .milliseconds(configuration.upstreamTimeout.milliseconds), group: gatewayLoops)
        let admin = Application(
            responder: AdminAPI(supervisor: supervisor, token: configuration.adminToken.map { Array($0.utf8) }, bootID: bootID, startedAt: startedAt),
            server: HTTPBoundary.http1(server: "the admin API", allow: "GET, HEAD, PUT, DELETE"),
            configuration: ApplicationConfiguration(address: .hostname(configuration.admin.host, port: configuration.admin.port)),
            onServerRunning: { channel in gate.listening(.admin, ListenAddress(boundTo: channel.localAddress, otherwise: configuration.admin)) },
            logger: logger)
        // Graceful shutdown goes in reverse order: the admin API, the gateway, then the processes.
        // Past the timeout the group is cancelled, which stops the processes too.
        var groupConfiguration = ServiceGroupConfiguration(
            services: [
                .init(service: SupervisorService(supervisor: supervisor, gate: gate)),
                .init(service: GatewayService(gateway: gateway, address: configuration.gateway,
                                              onListening: { address in gate.listening(.gateway, address) })),
                .init(service: Listener(role: "admin API", address: configuration.admin, flag: "--admin", application: admin)),
            ],
            gracefulShutdownSignals: handleSignals ? [.sigterm, .sigint] : [],
            logger: logger)
        groupConfiguration.maximumGracefulShutdownDuration = configuration.gracefulShutdownTimeout
        let group = ServiceGroup(configuration: groupConfiguration)
        // The saved endpoints come back before anything listens (so that no PUT can be
        // overtaken by them); their processes start once both listeners are up.
        for spec in savedEndpoints {
            _ = try? await supervisor.apply(spec, persist: false)
        }
        let shutdownEarly = state.withLock { state -> Bool in
            state.group = group
            return state.shutdownRequested
        }
        if shutdownEarly { await group.triggerGracefulShutdown() }
        var failure: (any Error)?
        do {
            try await group.run()
        } catch {
            failure = error
        }
        state.withLock { $0.group = nil }
        try? await client.shutdown()
        try? await gatewayLoops.shutdownGracefully()
        if let failure { throw failure }
    }

    /// Starts a graceful shutdown of `run()` (also when it has not reached its listeners yet).
    public func shutdown() async {
        let group = state.withLock { state -> ServiceGroup? in
            state.shutdownRequested = true
            return state.group
        }
        await group?.triggerGracefulShutdown()
    }

    /// Runs an agent for the duration of `body` (tests, tools): returns once it has shut down
    /// and stopped every model server. Listen on port 0 to get free ports.
    public static func withRunning<T>(
        _ configuration: ServingAgentConfiguration, _ body: (RunningAgent) async throws -> T
    ) async throws -> T {
        let agent = try ServingAgent(configuration: configuration)
        return try await withThrowingTaskGroup(of: Void.self, returning: T.self) { group in
            let (listening, continuation) = AsyncThrowingStream.makeStream(of: RunningAgent.self)
            group.addTask {
                do {
                    try await agent.run { continuation.yield($0) }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                    throw error
                }
            }
            var iterator = listening.makeAsyncIterator()
            guard let running = try await iterator.next() else {
                throw ServingAgentError(message: "the serving agent stopped before it listened")
            }
            let result: Result<T, any Error>
            do {
                result = .success(try await body(running))
            } catch {
                result = .failure(error)
            }
            await agent.shutdown()
            try await group.waitForAll()
            return try result.get()
        }
    }

    /// The HTTP client of readiness probes: HTTP/1.1 to 127.0.0.1, pooled, no redirects, no
    /// retries of a failed connect (a dead replica must fail fast), at most 5 minutes without a
    /// byte from a model server.
    static var clientConfiguration: HTTPClient.Configuration {
        var pool = HTTPClient.Configuration.ConnectionPool(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: 256)
        pool.retryConnectionEstablishment = false
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .disallow, timeout: .init(connect: .seconds(2), read: .seconds(300)), connectionPool: pool,
            decompression: .disabled)
        configuration.httpVersion = .http1Only
        return configuration
    }
}

// MARK: - Services

/// Opens when both listeners are up; processes start only then (a port in use starts nothing).
final class ListeningGate: Sendable {
    enum Role { case gateway, admin }

    private struct State {
        var gateway: ListenAddress?
        var admin: ListenAddress?
        var open: Bool?
        var waiters: [CheckedContinuation<Bool, Never>] = []
    }

    private let state = Mutex(State())
    private let bootID: String
    private let onListening: @Sendable (RunningAgent) -> Void

    init(bootID: String, onListening: @escaping @Sendable (RunningAgent) -> Void) {
        self.bootID = bootID
        self.onListening = onListening
    }

    /// `role` listens on `address` (as bound).
    func listening(_ role: Role, _ address: ListenAddress) {
        let opened = state.withLock { state -> (RunningAgent, [CheckedContinuation<Bool, Never>])? in
            switch role {
            case .gateway: state.gateway = address
            case .admin: state.admin = address
            }
            guard state.open == nil, let g = state.gateway, let a = state.admin else { return nil }
            state.open = true
            defer { state.waiters = [] }
            return (RunningAgent(gateway: g, admin: a, bootID: bootID), state.waiters)
        }
        guard let (running, waiters) = opened else { return }
        onListening(running)
        for waiter in waiters { waiter.resume(returning: true) }
    }

    /// Never opens (shutdown before both listeners were up).
    func close() {
        let waiters = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            if state.open == nil { state.open = false }
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume(returning: false) }
    }

    /// True once both listen; false when closed first.
    func wait() async -> Bool {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let now = state.withLock { state -> Bool? in
                    if let open = state.open { return open }
                    state.waiters.append(continuation)
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            close()
        }
    }
}

/// Runs the supervisor's processes once both listeners are up; on graceful shutdown or
/// cancellation stops every model server before returning.
struct SupervisorService: Service {
    let supervisor: Supervisor
    let gate: ListeningGate

    func run() async throws {
        let open = await withGracefulShutdownHandler {
            await gate.wait()
        } onGracefulShutdown: {
            gate.close()
        }
        if !open { supervisor.beginShutdown() }
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await supervisor.run()
            } onGracefulShutdown: {
                supervisor.beginShutdown()
            }
        } onCancel: {
            supervisor.beginShutdown()
        }
    }
}

/// One Hummingbird listener (the agent's admin API, the controller's HTTP); a failure to listen
/// becomes a message that names the address and the flag that sets it.
public struct Listener<Responder: HTTPResponder>: Service where Responder.Context == BasicRequestContext {
    let role: String
    let address: ListenAddress
    let flag: String
    let application: Application<Responder>

    public init(role: String, address: ListenAddress, flag: String, application: Application<Responder>) {
        self.role = role
        self.address = address
        self.flag = flag
        self.application = application
    }

    public func run() async throws {
        do {
            try await application.run()
        } catch let error as IOError {
            throw ListenFailure.error(error, role: role, address: address, flag: flag)
        } catch let error as SocketAddressError.UnknownHost {
            throw ListenFailure.error(error, role: role, address: address, flag: flag)
        } catch {
            // Cut short by a stop that took too long: that is how stopping ends, not a failure.
            if Task.isCancelled || Task.isShuttingDownGracefully { return }
            throw error
        }
    }
}

/// Why a listener could not open its address, in words that say what to do.
public enum ListenFailure {
    public static func error(_ error: any Error, role: String, address: ListenAddress, flag: String) -> ServingAgentError {
        let reason: String
        switch (error as? IOError)?.errnoCode {
        case EADDRINUSE: reason = "the address is already in use (another `capstan serve` or `capstan run`?)"
        case EADDRNOTAVAIL: reason = "this machine has no such address"
        case EACCES: reason = "permission denied (ports below 1024 need privileges)"
        default:
            if error is SocketAddressError.UnknownHost {
                reason = "the host name cannot be resolved"
            } else {
                reason = (error as? IOError)?.description ?? "\(error)"
            }
        }
        return ServingAgentError(message: "cannot listen on \(address) for the \(role): \(reason); choose another address with \(flag)")
    }
}
