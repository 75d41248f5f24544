import ArgumentParser
import CapstanController
import CapstanCore
import CapstanEngine
import CapstanServer
import CapstanServing
import CapstanStore
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

extension LogFormat: ExpressibleByArgument {}

/// `capstan run`: the controller (docs/controller.md).
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the controller: reconcile on new commits, webhooks and resyncs; serve health, metrics and the status page.",
        discussion: """
            Polls the repository every --interval and runs a pass when the commit moves; a signed \
            webhook (POST /hooks/git) or POST /api/v1/reconcile runs one at once; a pass runs every \
            --resync even without commits (drift), and every --tick while a rollout is in progress or a deployment starts. \
            HTTP on --http: /healthz, /readyz, /metrics, /api/v1/status, the status page at /. \
            SIGTERM or SIGINT: no new pass; the running one gets --shutdown-grace to finish, then its \
            step is stopped (the next pass resumes it); the lock is released; exit 0. A second signal \
            stops the running step at once.
            """)

    @OptionGroup var repository: RepositoryOptions

    @Option(name: .customLong("http"), help: ArgumentHelp("Where the controller's HTTP server listens.", valueName: "host:port"))
    var http = "127.0.0.1:9090"

    @Option(name: .long, help: ArgumentHelp("Poll the repository this often (jittered by ±10%).", valueName: "duration"))
    var interval = "1m"

    @Option(name: .long, help: ArgumentHelp("Run a pass this often even without a new commit (drift).", valueName: "duration"))
    var resync = "10m"

    @Option(name: .long, help: ArgumentHelp("While a rollout is in progress, run a pass this often.", valueName: "duration"))
    var tick = "10s"

    @Option(name: .customLong("shutdown-grace"), help: ArgumentHelp(
        "On SIGTERM, how long the running pass may take to finish before its step is stopped.", valueName: "duration"))
    var shutdownGrace = "30s"

    @Option(name: .customLong("webhook-secret-env"), help: ArgumentHelp(
        "Accept POST /hooks/git signed with the secret in this environment variable (GitHub, GitLab or X-Capstan-Signature).",
        valueName: "name"))
    var webhookSecretEnv: String?

    @Option(name: .customLong("mlflow-webhook-secret-env"), help: ArgumentHelp(
        "Accept POST /hooks/mlflow from MLflow's registry webhooks (MLflow 3.3 or later) signed with the secret in this environment variable: an alias moved in MLflow starts a pass at once.",
        valueName: "name"))
    var mlflowWebhookSecretEnv: String?

    @Option(name: .customLong("api-token-env"), help: ArgumentHelp(
        "Accept POST /api/v1/reconcile with 'Authorization: Bearer <token>', the token in this environment variable.",
        valueName: "name"))
    var apiTokenEnv: String?

    @Flag(name: .customLong("serve"), help: "Run the serving agent (capstan serve) in this process too.")
    var serve = false

    @Option(name: .customLong("gateway"), help: ArgumentHelp("With --serve: where the gateway listens.", valueName: "host:port"))
    var gateway = "127.0.0.1:8080"

    @Option(name: .customLong("admin"), help: ArgumentHelp(
        "With --serve: where the agent's admin API listens; an address other than loopback needs --admin-token-env.", valueName: "host:port"))
    var admin = "127.0.0.1:7070"

    @Option(name: .customLong("gateway-threads"), help: ArgumentHelp(
        "With --serve: event-loop threads of the gateway (default: half the cores, at least 1).", valueName: "n"))
    var gatewayThreads: Int?

    @Option(name: .customLong("admin-token-env"), help: ArgumentHelp(
        "With --serve: the agent's admin API requires this environment variable's value as a bearer token.", valueName: "name"))
    var adminTokenEnv: String?

    @Option(name: .customLong("notify-webhook-env"), help: ArgumentHelp(
        "Post JSON notifications to the URL in this environment variable (repeatable).", valueName: "name"))
    var notifyWebhookEnv: [String] = []

    @Option(name: .customLong("notify-slack-env"), help: ArgumentHelp(
        "Post Slack notifications to the incoming-webhook URL in this environment variable (repeatable).", valueName: "name"))
    var notifySlackEnv: [String] = []

    @Option(name: .customLong("log-format"), help: "text (for people) or json (one object per line, for collectors).")
    var logFormat: LogFormat = .text

    @Option(name: .customLong("log-level"), help: ArgumentHelp("trace, debug, info, notice, warning or error.", valueName: "level"))
    var logLevel = "info"

    func validate() throws {
        _ = try Self.usage { () throws(ServingAgentError) in try ListenAddress(parsing: http, option: "--http") }
        for (text, name) in [(interval, "--interval"), (resync, "--resync"), (tick, "--tick"), (shutdownGrace, "--shutdown-grace")] {
            let d = try ManifestDuration.option(text, name)
            if name != "--shutdown-grace", d.milliseconds < 1000 { throw ValidationError("\(name) '\(text)' is shorter than 1s") }
        }
        if let gatewayThreads, !(1...256).contains(gatewayThreads) {
            throw ValidationError("--gateway-threads \(gatewayThreads) is not between 1 and 256")
        }
        if serve {
            _ = try Self.usage { () throws(ServingAgentError) in try ListenAddress(parsing: gateway, option: "--gateway") }
            let adminAddress = try Self.usage { () throws(ServingAgentError) in try ListenAddress(parsing: admin, option: "--admin") }
            if let problem = AdminBinding.problem(adminAddress, hasToken: adminTokenEnv != nil) {
                throw ValidationError(problem)
            }
        }
        for name in [webhookSecretEnv, apiTokenEnv, adminTokenEnv, mlflowWebhookSecretEnv].compactMap({ $0 }) + notifyWebhookEnv + notifySlackEnv where !Names.isEnvName(name) {
            throw ValidationError("'\(name)' is not an environment variable name")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level '\(logLevel)' is not one of trace, debug, info, notice, warning, error")
        }
        if repository.repo == nil { throw ValidationError("--repo is required: the repository the controller follows (a path or URL)") }
    }

    func run() async throws {
        Signals.unblockStopSignals()
        signal(SIGPIPE, SIG_IGN)
        do {
            try await controller()
        } catch let failure as CommandFailure {
            throw Self.fail(failure)
        } catch let error as ServingAgentError {
            throw Self.fail(CommandFailure(message: error.message))
        }
    }

    /// Reads a secret from the environment variable an option names; fails when it is not set.
    static func secret(_ name: String?, option: String) throws -> String? {
        guard let name else { return nil }
        guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
            throw CommandFailure(message: "\(option) names \(name), which is not set (or empty) in this environment; export it, or leave the option out")
        }
        return value
    }

    private func controller() async throws {
        let format = logFormat
        var logger = Logger(label: "capstan") { CapstanLogHandler(label: $0, format: format) }
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info

        let options = repository
        let store = try Wiring.store(options.stateDirectory)
        let host = ProcessInfo.processInfo.hostName
        // One reconciler for the controller's life: its source stays open and what it read is kept.
        let reconciler = Reconciler(ports: try await Wiring.ports(options, store: store, actor: "capstan run (\(host))"))
        var timing = ControllerTiming()
        timing.interval = .milliseconds(try ManifestDuration.option(interval, "--interval").milliseconds)
        timing.resync = .milliseconds(try ManifestDuration.option(resync, "--resync").milliseconds)
        timing.tick = .milliseconds(try ManifestDuration.option(tick, "--tick").milliseconds)
        timing.shutdownGrace = .milliseconds(try ManifestDuration.option(shutdownGrace, "--shutdown-grace").milliseconds)
        let httpConfiguration = ControllerHTTPConfiguration(
            webhookSecret: try Self.secret(webhookSecretEnv, option: "--webhook-secret-env"),
            apiToken: try Self.secret(apiTokenEnv, option: "--api-token-env"),
            mlflowWebhookSecret: try Self.secret(mlflowWebhookSecretEnv, option: "--mlflow-webhook-secret-env"))
        let adminToken = try Self.secret(adminTokenEnv, option: "--admin-token-env")
        let httpAddress = try Self.address(http, "--http")
        var targets: [NotificationTarget] = []
        for name in notifyWebhookEnv { targets.append(NotificationTarget(name: name, url: try Self.secret(name, option: "--notify-webhook-env")!, format: .json)) }
        for name in notifySlackEnv { targets.append(NotificationTarget(name: name, url: try Self.secret(name, option: "--notify-slack-env")!, format: .slack)) }
        for target in targets {
            do { try target.validate() } catch { throw CommandFailure(message: "\(error)") }
        }

        let metrics = ControllerMetrics()
        let notifier = targets.isEmpty ? nil : Notifier(targets: targets, logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []

        // The in-process serving agent (--serve); passes wait until it listens.
        let agentListening = AsyncGate<RunningAgent>()
        if serve {
            var configuration = ServingAgentConfiguration(stateDirectory: options.stateDirectory)
            configuration.gateway = try Self.address(gateway, "--gateway")
            configuration.admin = try Self.address(admin, "--admin")
            configuration.adminToken = adminToken
            if let gatewayThreads { configuration.gatewayThreads = gatewayThreads }
            let agentLogger = logger
            configuration.onEvent = { event in agentLogger.info("\(event)", metadata: ["component": "serve"]) }
            let created = try ServingAgent(configuration: configuration)
            services.append(.init(service: AgentService(agent: created, listening: agentListening, logger: logger),
                                  successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup))
        }
        if let notifier { services.append(.init(service: notifier)) }

        let controller = Controller(
            reconciler: reconciler, ref: options.ref, timing: timing, logger: logger,
            observer: RunObserver(metrics: metrics, notifier: notifier),
            startGate: { [serve] in
                // With --serve, passes wait for the in-process agent and talk to it.
                guard serve, let running = await agentListening.value() else { return nil }
                let client = AgentClient(adminURL: running.adminURL, token: adminToken, timeout: .seconds(10))
                return ServingConnection(target: client, close: { try? await client.shutdown() })
            })
        services.append(.init(service: ControllerLoopService(controller: controller),
                              successTerminationBehavior: .gracefullyShutdownGroup, failureTerminationBehavior: .gracefullyShutdownGroup))
        let backend = ControllerStatusBackend(controller: controller, reconciler: reconciler, store: store, registry: reconciler.ports.registry,
                                              stateDirectory: options.stateDirectory,
                                              repository: options.repo ?? ".", ref: options.ref, interval: interval)
        let httpLogger = logger
        let application = Listener(role: "controller's HTTP server", address: httpAddress, flag: "--http", application: Application(
            responder: ControllerHTTP(backend: backend, metrics: metrics, configuration: httpConfiguration, logger: logger),
            server: HTTPBoundary.http1(server: "the controller", allow: "GET, HEAD, POST"),
            configuration: ApplicationConfiguration(address: .hostname(httpAddress.host, port: httpAddress.port), serverName: "capstan"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? httpAddress.port
                httpLogger.info("controller HTTP on http://\(ListenAddress(host: httpAddress.host, port: port)) (status page /, /healthz, /readyz, /metrics)")
            },
            logger: Self.quiet(logger)))
        services.append(.init(service: application, successTerminationBehavior: .gracefullyShutdownGroup,
                              failureTerminationBehavior: .gracefullyShutdownGroup))

        var groupConfiguration = ServiceGroupConfiguration(services: services, logger: Self.quiet(logger))
        groupConfiguration.maximumGracefulShutdownDuration = timing.shutdownGrace + .seconds(20)
        let group = ServiceGroup(configuration: groupConfiguration)
        logger.info("controller started: following \(options.repo ?? ".")\(options.ref.map { " @ \($0)" } ?? ""), polling every \(interval), resync every \(resync)",
                    metadata: ["state_dir": "\(options.stateDirectory)"])

        let run = Task { try await group.run() }
        let signalLogger = logger
        // First SIGTERM/SIGINT: graceful shutdown. Second: the running step stops at once.
        let stopper = SignalStopper(
            onFirst: { signal in
                signalLogger.notice("\(signal == SIGINT ? "SIGINT" : "SIGTERM") received: shutting down")
                Task { await group.triggerGracefulShutdown() }
            },
            onSecond: { signal in
                signalLogger.warning("\(signal == SIGINT ? "SIGINT" : "SIGTERM") received again: stopping the running step now")
                controller.stopNow()
                run.cancel()
            })
        let result = await run.result
        stopper.stop()
        if case .failure(let error) = result, !(error is CancellationError) {
            let message = (error as? ServingAgentError)?.message ?? "\(error)"
            logger.error("the controller stopped: \(message)")
            throw CommandFailure(message: "the controller stopped: \(message)")
        }
        logger.info("controller stopped")
        if stopper.secondSignal { throw ExitCode(128 + (stopper.received ?? SIGTERM)) }
    }

    static func usage(_ body: () throws(ServingAgentError) -> ListenAddress) throws -> ListenAddress {
        do { return try body() } catch { throw ValidationError(error.message) }
    }

    static func address(_ text: String, _ option: String) throws -> ListenAddress {
        do { return try ListenAddress(parsing: text, option: option) } catch { throw CommandFailure(message: error.message, exitCode: ExitStatus.usage) }
    }

    /// Library loggers (Hummingbird, ServiceLifecycle) say only what goes wrong.
    static func quiet(_ logger: Logger) -> Logger {
        var copy = logger
        copy.logLevel = max(logger.logLevel, .warning)
        return copy
    }
}

