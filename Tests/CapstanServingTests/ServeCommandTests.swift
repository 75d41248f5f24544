import Foundation
import Testing
@testable import CapstanServing
@testable import CapstanTestSupport
#if canImport(Glibc)
import Glibc
#endif

/// The built `capstan` binary, when this build has it.
enum CapstanBinary {
    static let path: String? = {
        // Another build's binary, e.g. to try this test before `serve` is registered here.
        if let override = ProcessInfo.processInfo.environment["CAPSTAN_TEST_BINARY"], !override.isEmpty { return override }
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        while dir.path != "/" {
            let candidate = dir.appendingPathComponent("capstan").path
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: candidate, isDirectory: &isDirectory), !isDirectory.boolValue { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        return nil
    }()

    /// `capstan serve` exists in this build (the command is registered in CapstanMain).
    static let hasServe: Bool = {
        guard let path else { return false }
        guard let r = try? Shell.run(path, ["serve", "--help"]) else { return false }
        return r.status == 0 && r.stdout.contains("USAGE: capstan serve")
    }()
}

/// `capstan serve` as a real process: its stdout and stderr go to one log file.
final class ServeProcess {
    let process: ModelServerProcess
    let log: String
    private(set) var exit: ProcessTermination?

    init(_ arguments: [String], log: String, workdir: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws {
        self.log = log
        var environment = environment
        environment["NO_COLOR"] = "1"
        process = try ModelServerProcess.spawn(executable: CapstanBinary.path!, argv: ["capstan", "serve"] + arguments,
                                               environment: environment, workdir: workdir, logPath: log)
    }

    var output: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    /// `(gateway, admin)` URLs from the line printed once both listen.
    var listening: (String, String)? {
        for line in output.split(separator: "\n") where line.hasPrefix("capstan serve: gateway on ") {
            let parts = line.dropFirst("capstan serve: gateway on ".count).components(separatedBy: ", admin API on ")
            if parts.count == 2 { return (parts[0], parts[1]) }
        }
        return nil
    }

    /// Pids of the model servers it reported starting.
    var modelServerPIDs: [Int32] {
        output.split(separator: "\n").compactMap { line in
            guard line.contains(" started: pid "), let r = line.range(of: " started: pid ") else { return nil }
            return Int32(line[r.upperBound...].prefix { $0.isNumber })
        }
    }

    func poll() -> ProcessTermination? {
        if exit == nil { exit = process.pollExit() }
        return exit
    }

    /// SIGKILL to it and every model server it reported; for cleanup after a failure.
    func kill() {
        if poll() == nil {
            _ = Glibc.kill(process.pid, SIGKILL)
            while poll() == nil { usleep(10_000) }
        }
        for pid in modelServerPIDs where !isGone(pid) { _ = Glibc.kill(pid, SIGKILL) }
    }
}

@Suite(.serialized) struct ServeCommandTests {
    @Test(.enabled(if: CapstanBinary.hasServe, "needs `capstan serve` registered in CapstanMain"))
    func serveRunsStopsOnSIGTERMAndComesBackWithItsEndpoints() async throws {
        let f = try ServingFixture()
        let spec = EndpointSpec(deployment: "churn-prod", model: "churn", backends: [f.backend(1, weight: 80), f.backend(2, weight: 20)])
        let arguments = ["--gateway", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--state-dir", f.stateDir]

        // First run: apply through AgentClient, route a request, SIGTERM.
        let first = try ServeProcess(arguments, log: f.dir.path + "/serve-1.log", workdir: f.dir.path)
        defer { first.kill() }
        await eventually("the first agent listens: \(first.output)") { first.listening != nil || first.poll() != nil }
        let (gateway, admin) = try #require(first.listening)
        try await AgentClient.with(adminURL: admin) { client in
            try await client.apply(spec)
            try await waitReady(client, "churn-prod")
        }
        let answer = try await HTTP.post(gateway + "/churn-prod/predict")
        #expect(answer.status == 200)
        let pids = first.modelServerPIDs
        #expect(pids.count == 2)
        _ = Glibc.kill(first.process.pid, SIGTERM)
        await eventually("the first agent exits") { first.poll() != nil }
        #expect(first.poll() == .exited(0), "\(first.output)")
        for pid in pids { #expect(isGone(pid), "model server \(pid) outlived the agent") }
        #expect(first.output.contains("churn-prod v1 r0 stopped"))
        #expect(first.output.contains("capstan serve: stopped"))

        // Second run: the same endpoint and weights come back.
        let second = try ServeProcess(arguments, log: f.dir.path + "/serve-2.log", workdir: f.dir.path)
        defer { second.kill() }
        await eventually("the second agent listens: \(second.output)") { second.listening != nil || second.poll() != nil }
        let (gateway2, admin2) = try #require(second.listening)
        #expect(second.output.contains("1 endpoint(s) restored from \(f.stateDir)/serving/endpoints.json"))
        try await AgentClient.with(adminURL: admin2) { client in
            let status = try #require(try await waitReady(client, "churn-prod"))
            #expect(status.spec == spec)
            #expect(status.spec.weights == [1: 80, 2: 20])
        }
        #expect(try await HTTP.post(gateway2 + "/churn-prod/predict").status == 200)

        // A third agent on the second one's gateway port: a clear error, exit 1, nothing started.
        let port = try #require(URL(string: gateway2)?.port)
        let third = try ServeProcess(["--gateway", "127.0.0.1:\(port)", "--admin", "127.0.0.1:0", "--state-dir", f.stateDir],
                                     log: f.dir.path + "/serve-3.log", workdir: f.dir.path)
        defer { third.kill() }
        await eventually("the third agent exits") { third.poll() != nil }
        #expect(third.poll() == .exited(1))
        #expect(third.output.contains("capstan: error: cannot listen on 127.0.0.1:\(port) for the gateway: the address is already in use"),
                "\(third.output)")
        #expect(third.modelServerPIDs.isEmpty)

        let secondPIDs = second.modelServerPIDs
        _ = Glibc.kill(second.process.pid, SIGINT)
        await eventually("the second agent exits") { second.poll() != nil }
        #expect(second.poll() == .exited(0), "\(second.output)")
        for pid in secondPIDs { #expect(isGone(pid)) }
    }

    @Test(.enabled(if: CapstanBinary.hasServe, "needs `capstan serve` registered in CapstanMain"),
          arguments: ["0.0.0.0:0", "[::]:0", "192.0.2.1:7070", "agent.example.com:7070"])
    func anAdminAPIOffLoopbackNeedsAToken(_ admin: String) throws {
        let f = try ServingFixture()
        // Under `timeout`: an agent that starts anyway is stopped (exit 124 or 0), not waited for.
        let r = try Shell.run("timeout", ["30", CapstanBinary.path!, "serve", "--admin", admin, "--gateway", "127.0.0.1:0", "--state-dir", f.stateDir])
        #expect(r.status == 64, "\(r.stderr)")
        #expect(r.stderr.contains("--admin \(admin) is not a loopback address"), "\(r.stderr)")
        #expect(r.stderr.contains("Pass --admin-token-env NAME"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: f.stateDir + "/serving"), "nothing was started")
    }

    @Test(.enabled(if: CapstanBinary.hasServe, "needs `capstan serve` registered in CapstanMain"),
          arguments: [("--admin", "admin API"), ("--gateway", "gateway")])
    func aHostNameThatDoesNotResolveSaysSo(_ flag: String, _ role: String) throws {
        let f = try ServingFixture()
        var arguments = ["serve", "--admin", "127.0.0.1:0", "--gateway", "127.0.0.1:0", "--admin-token-env", "AGENT_TOKEN", "--state-dir", f.stateDir]
        arguments[arguments.firstIndex(of: flag)! + 1] = "no-such-host.invalid:0"
        let r = try Shell.run("timeout", ["30", CapstanBinary.path!] + arguments, environment: ["AGENT_TOKEN": "t"])
        #expect(r.status == 1, "\(r.stderr)")
        #expect(r.stderr.contains("cannot listen on no-such-host.invalid:0 for the \(role): the host name cannot be resolved; choose another address with \(flag)"),
                "\(r.stderr)")
    }

    @Test(.enabled(if: CapstanBinary.hasServe, "needs `capstan serve` registered in CapstanMain"),
          arguments: [("0.0.0.0", "127.0.0.1"), ("::", "::1")])
    func theAddressesPrintedAreTheOnesBound(_ wildcard: String, _ loopback: String) async throws {
        let f = try ServingFixture()
        let bracketed = wildcard.contains(":") ? "[\(wildcard)]" : wildcard
        var environment = ProcessInfo.processInfo.environment
        environment["AGENT_TOKEN"] = "agent-token-5c1d"
        let agent = try ServeProcess(["--gateway", "\(bracketed):0", "--admin", "\(bracketed):0", "--admin-token-env", "AGENT_TOKEN",
                                      "--state-dir", f.stateDir], log: f.dir.path + "/serve.log", workdir: f.dir.path, environment: environment)
        defer { agent.kill() }
        await eventually("the agent listens: \(agent.output)") { agent.listening != nil || agent.poll() != nil }
        let (gateway, admin) = try #require(agent.listening, "\(agent.output)")
        #expect(gateway.hasPrefix("http://\(bracketed):") && admin.hasPrefix("http://\(bracketed):"), "\(agent.output)")
        let adminPort = try #require(Int(admin.split(separator: ":").last ?? ""))
        let reachable = ListenAddress(host: loopback, port: adminPort).url
        #expect(try await HTTP.get(reachable + "/v1/endpoints").status == 401)
        #expect(try await HTTP.get(reachable + "/v1/endpoints", headers: [("Authorization", "Bearer agent-token-5c1d")]).status == 200)
        if wildcard == "0.0.0.0", let address = NonLoopbackAddress.ipv4 {
            // Bound to every interface, as it says.
            #expect(try await HTTP.get("http://\(address):\(adminPort)/v1/endpoints", headers: [("Authorization", "Bearer agent-token-5c1d")]).status == 200)
        }
        _ = Glibc.kill(agent.process.pid, SIGTERM)
        await eventually("the agent exits") { agent.poll() != nil }
        #expect(agent.poll() == .exited(0), "\(agent.output)")
    }

    @Test(.enabled(if: CapstanBinary.hasServe, "needs `capstan serve` registered in CapstanMain"))
    func aTokenlessAdminAPIAnswersLoopbackNamesOnly() async throws {
        let f = try ServingFixture()
        let agent = try ServeProcess(["--gateway", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--state-dir", f.stateDir],
                                     log: f.dir.path + "/serve.log", workdir: f.dir.path)
        defer { agent.kill() }
        await eventually("the agent listens: \(agent.output)") { agent.listening != nil || agent.poll() != nil }
        let (_, admin) = try #require(agent.listening, "\(agent.output)")
        let port = try #require(Int(admin.split(separator: ":").last ?? ""))
        // A page on rebound.example, its name now pointing at 127.0.0.1, sends its own Host.
        let rebound = await RawSocket.exchange(port: port, "GET /v1/endpoints HTTP/1.1\r\nHost: rebound.example:\(port)\r\nConnection: close\r\n\r\n")
        #expect(rebound.status == 403, "\(rebound.text)")
        #expect(rebound.body.contains("is not a loopback name"), "\(rebound.text)")
        // capstan apply's client (Host: 127.0.0.1:PORT) still gets through.
        let endpoints = try await AgentClient.with(adminURL: admin) { client in try await client.endpoints() }
        #expect(endpoints.isEmpty)
        _ = Glibc.kill(agent.process.pid, SIGTERM)
        await eventually("the agent exits") { agent.poll() != nil }
    }
}
