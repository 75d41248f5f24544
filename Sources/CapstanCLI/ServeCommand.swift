import ArgumentParser
import CapstanCore
import CapstanServing
import Foundation

/// `capstan serve`: the local serving agent (docs/serving.md).
struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the local serving agent: model servers, a weighted gateway and an admin API.",
        discussion: """
            Keeps the model servers of every endpoint running (restarting them with backoff), \
            routes /<deployment>/… on the gateway to their ready replicas by weight, and serves \
            the admin API the reconciler uses (GET/PUT/DELETE /v1/endpoints/<deployment>). \
            Endpoints are saved in <state-dir>/serving/endpoints.json and come back when the agent \
            starts again. SIGTERM or SIGINT stops the model servers and exits 0.
            """)

    @Option(name: .customLong("gateway"), help: ArgumentHelp("Where the gateway listens.", valueName: "host:port"))
    var gateway = "127.0.0.1:8080"

    @Option(name: .customLong("admin"), help: ArgumentHelp(
        "Where the admin API listens; an address other than loopback needs --admin-token-env.", valueName: "host:port"))
    var admin = "127.0.0.1:7070"

    @Option(name: .customLong("gateway-threads"), help: ArgumentHelp(
        "Event-loop threads of the gateway (default: half the cores, at least 1).", valueName: "n"))
    var gatewayThreads: Int?

    @OptionGroup var state: StateDirectoryOption

    @Option(name: .customLong("admin-token-env"), help: ArgumentHelp(
        "Require 'Authorization: Bearer <token>' on the admin API (except /healthz), the token being the value of this environment variable.",
        valueName: "name"))
    var adminTokenEnv: String?

    func validate() throws {
        let adminAddress: ListenAddress
        do {
            _ = try ListenAddress(parsing: gateway, option: "--gateway")
            adminAddress = try ListenAddress(parsing: admin, option: "--admin")
        } catch {
            throw ValidationError(error.message)
        }
        if let problem = AdminBinding.problem(adminAddress, hasToken: adminTokenEnv != nil) {
            throw ValidationError(problem)
        }
        if let gatewayThreads, !(1...256).contains(gatewayThreads) {
            throw ValidationError("--gateway-threads \(gatewayThreads) is not between 1 and 256")
        }
        if let adminTokenEnv, !Names.isEnvName(adminTokenEnv) {
            throw ValidationError("--admin-token-env '\(adminTokenEnv)' is not an environment variable name")
        }
    }

    func run() async throws {
        // A parent may have left SIGTERM/SIGINT blocked (test runners, some supervisors); the
        // agent must still stop on them.
        Signals.unblockStopSignals()
        do {
            try await serve()
        } catch let failure as CommandFailure {
            throw Self.fail(failure)
        } catch let error as ServingAgentError {
            throw Self.fail(CommandFailure(message: error.message))
        } catch {
            throw Self.fail(CommandFailure(message: "the serving agent stopped: \(error)"))
        }
    }

    private func serve() async throws {
        let environment = ProcessInfo.processInfo.environment
        var configuration = ServingAgentConfiguration(stateDirectory: state.path)
        configuration.gateway = try ListenAddress(parsing: gateway, option: "--gateway")
        configuration.admin = try ListenAddress(parsing: admin, option: "--admin")
        configuration.environment = environment
        if let gatewayThreads { configuration.gatewayThreads = gatewayThreads }
        if let adminTokenEnv {
            guard let token = environment[adminTokenEnv], !token.isEmpty else {
                throw CommandFailure(message: "--admin-token-env names \(adminTokenEnv), which is not set (or empty) in this environment; "
                    + "export the token in it, or leave the option out to run the admin API without a token")
            }
            configuration.adminToken = token
        }
        configuration.onEvent = { event in Terminal.err("capstan serve: \(event)\n") }
        let agent = try ServingAgent(configuration: configuration)
        for warning in agent.warnings { Terminal.err("capstan serve: warning: \(warning)\n") }
        if !agent.savedEndpoints.isEmpty {
            Terminal.err("capstan serve: \(agent.savedEndpoints.count) endpoint(s) restored from \(agent.endpointsFile)\n")
        }
        try await agent.run(handleSignals: true) { running in
            Terminal.out("capstan serve: gateway on \(running.gateway.url), admin API on \(running.admin.url)\n")
        }
        Terminal.err("capstan serve: stopped\n")
    }
}
