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

    init(_ arguments: [String], log: String, workdir: String) throws {
        self.log = log
        var environment = ProcessInfo.processInfo.environment
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
}
