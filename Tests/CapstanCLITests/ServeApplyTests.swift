import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Synchronization
import Testing
@testable import CapstanTestSupport

/// `capstan serve` and `capstan apply` together, as a user runs them: a real agent on
/// 127.0.0.1, real model servers, requests through the gateway, a canary promoted and a broken
/// version rolled back.
@Suite(.serialized) struct ServeApplyTests {
    /// A running `capstan serve`, stopped with SIGTERM when the test ends.
    final class Agent {
        let process = Process()
        let gateway: UInt16
        let admin: UInt16
        let log: URL

        init(state: String, log: URL, gateway: UInt16? = nil, admin: UInt16? = nil, environment: [String: String] = [:]) throws {
            self.gateway = try gateway ?? Ports.free()
            self.admin = try admin ?? Ports.free()
            self.log = log
            process.executableURL = CLI.binary
            process.arguments = ["serve", "--gateway", "127.0.0.1:\(self.gateway)", "--admin", "127.0.0.1:\(self.admin)", "--state-dir", state]
            if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new } }
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            let handle = try FileHandle(forWritingTo: log)
            process.standardOutput = handle
            process.standardError = handle
            try process.run()
            var polls = 0
            while !Ports.accepts(self.admin) && polls < 600 { usleep(50_000); polls += 1 }
        }

        func stop() {
            guard process.isRunning else { return }
            kill(process.processIdentifier, SIGTERM)
            var polls = 0
            while process.isRunning && polls < 400 { usleep(50_000); polls += 1 }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        }

        deinit { stop() }

        /// POSTs a prediction through the gateway; returns the status and the version that answered.
        func predict(_ deployment: String = "churn-prod") -> (Int, String?) {
            var request = URLRequest(url: URL(string: "http://127.0.0.1:\(gateway)/\(deployment)/predict")!)
            request.httpMethod = "POST"
            request.httpBody = Data(#"{"tenure_months": 3, "monthly_charges": 99.5, "support_calls": 4}"#.utf8)
            let result = Mutex<(Int, String?)>((0, nil))
            let done = DispatchSemaphore(value: 0)
            URLSession.shared.dataTask(with: request) { _, response, _ in
                let http = response as? HTTPURLResponse
                result.withLock { $0 = (http?.statusCode ?? 0, http?.value(forHTTPHeaderField: "X-Capstan-Version")) }
                done.signal()
            }.resume()
            _ = done.wait(timeout: .now() + 10)
            return result.withLock { $0 }
        }
    }

    /// The quick-start repository with fast canary steps, pointed at `agent`.
    static func repository(_ temp: TempDir, agent: Agent) throws -> GitRepo {
        let repo = try GitRepo(at: temp.sub("repo"))
        let example = CLI.packageRoot.appendingPathComponent("examples/quickstart")
        try repo.copy(example: example) { original in
            var text = original
            text = text.replacingOccurrences(of: "http://127.0.0.1:7070", with: "http://127.0.0.1:\(agent.admin)")
            text = text.replacingOccurrences(of: "pause: 5s", with: "pause: 1s")
                .replacingOccurrences(of: "minRequests: 20", with: "minRequests: 5")
            return text
        }
        try repo.commit("quick start")
        return repo
    }

    /// Sends requests and runs `apply` until `done` says so (or 60 passes).
    static func applyUntil(_ repo: GitRepo, state: String, agent: Agent, _ done: (CLI.Result) -> Bool) throws -> [CLI.Result] {
        var results: [CLI.Result] = []
        for _ in 0..<60 {
            for _ in 0..<8 { _ = agent.predict() }
            let r = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
            results.append(r)
            if done(r) { break }
            usleep(300_000)
        }
        return results
    }

    @Test func aCanaryIsPromotedAndABrokenVersionRolledBack() throws {
        let temp = try TempDir()
        let state = temp.sub("state").path
        let agent = try Agent(state: temp.sub("agent").path, log: temp.sub("agent.log"))
        defer { agent.stop() }
        let repo = try Self.repository(temp, agent: agent)

        // First apply: train v1 and create the endpoint.
        let first = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(first.status == 0, "\(first.stdout)\n\(first.stderr)")
        #expect(first.stdout.contains("churn-prod: create-endpoint done"), "\(first.stdout)")
        var polls = 0
        while agent.predict().0 != 200 && polls < 200 { usleep(100_000); polls += 1 }
        #expect(agent.predict() == (200, "1"))

        // A better v2 rolls out by canary while requests flow, then takes all traffic.
        try repo.write("models/churn/model.yaml",
                       try String(contentsOf: repo.url.appendingPathComponent("models/churn/model.yaml"), encoding: .utf8)
                           .replacingOccurrences(of: "epochs: 20,", with: "epochs: 200,"))
        try repo.commit("more epochs")
        let rollout = try Self.applyUntil(repo, state: state, agent: agent) { $0.stdout.contains("churn-prod: promote done") }
        let text = rollout.map(\.stdout).joined()
        #expect(text.contains("start-rollout done"), "\(text)")
        #expect(text.contains("advance-rollout done: step 1/2"), "\(text)")
        #expect(text.contains("churn-prod: promote done"), "\(text)")
        #expect(agent.predict() == (200, "2"))

        // v3 answers 500: its canary fails the analysis, traffic returns to v2, and the next
        // apply does not try it again.
        let serve = repo.url.appendingPathComponent("models/churn/serve.py")
        try repo.write("models/churn/serve.py", try String(contentsOf: serve, encoding: .utf8).replacingOccurrences(
            of: #"self._send(200, {"churn_probability": round(predict(row), 4)})"#, with: #"self._send(500, {"error": "broken"})"#))
        try repo.commit("broken server")
        let broken = try Self.applyUntil(repo, state: state, agent: agent) { $0.stdout.contains("churn-prod: rollback") }
        let brokenText = broken.map(\.stdout).joined()
        #expect(brokenText.contains("v3 rolled back and quarantined; traffic back on v2"), "\(brokenText)")
        #expect(broken.last?.status == 1)
        #expect(agent.predict() == (200, "2"))
        let again = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(again.status == 0)
        #expect(!again.stdout.contains("start-rollout"), "\(again.stdout)")
        #expect(again.stdout.contains("v3 was rolled back from churn-prod"), "\(again.stdout)")

        let status = try CLI.run(["status", "--state-dir", state, "--format", "json"])
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        let deployment = try #require((doc["deployments"] as? [[String: Any]])?.first)
        #expect(deployment["name"] as? String == "churn-prod")
        #expect((deployment["conditions"] as? [[String: Any]])?.first?["reason"] as? String == "RolledBack")
        #expect((deployment["quarantined"] as? [[String: Any]])?.first?["version"] as? Int == 3)
        #expect((deployment["backends"] as? [[String: Any]])?.map { $0["version"] as? Int } == [2])
        let history = try CLI.run(["history", "--state-dir", state, "--deployment", "churn-prod"])
        for action in ["create-endpoint", "start-rollout", "advance-rollout", "promote", "rollback"] {
            #expect(history.stdout.contains(action), "\(action) missing from \(history.stdout)")
        }

        // SIGTERM stops the agent and its model servers.
        agent.stop()
        #expect(agent.process.terminationStatus == 0)
        polls = 0
        while !Self.serverPIDs(version: 2, under: temp.url.path).isEmpty && polls < 100 { usleep(50_000); polls += 1 }
        #expect(Self.serverPIDs(version: 2, under: temp.url.path).isEmpty)
    }

    @Test func anUnreachableAgentLeavesTheRegistryPassRunning() throws {
        let temp = try TempDir()
        let state = temp.sub("state").path
        let agent = try Agent(state: temp.sub("agent").path, log: temp.sub("agent.log"))
        let repo = try Self.repository(temp, agent: agent)
        agent.stop()
        let r = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("churn: train done"), "\(r.stdout)")
        #expect(r.stdout.contains("cannot be reached"), "\(r.stdout)")
        let status = try CLI.run(["status", "--state-dir", state])
        #expect(status.stdout.contains("Degraded (ServingUnavailable)"), "\(status.stdout)")
    }

    /// Brings up an agent and a repository already serving v1.
    static func serving(_ temp: TempDir, state: String) throws -> (Agent, GitRepo) {
        let agent = try Agent(state: temp.sub("agent").path, log: temp.sub("agent.log"))
        let repo = try Self.repository(temp, agent: agent)
        let first = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(first.status == 0, "\(first.stdout)\n\(first.stderr)")
        var polls = 0
        while agent.predict().0 != 200 && polls < 200 { usleep(100_000); polls += 1 }
        return (agent, repo)
    }

    static func edit(_ repo: GitRepo, _ path: String, _ change: (String) -> String) throws {
        try repo.write(path, change(try String(contentsOf: repo.url.appendingPathComponent(path), encoding: .utf8)))
    }

    /// Weights changed by hand through the admin API are drift: reverted by default.
    @Test func driftChangedByHandIsReverted() throws {
        let temp = try TempDir()
        let state = temp.sub("state").path
        let (agent, repo) = try Self.serving(temp, state: state)
        defer { agent.stop() }
        // Someone sets replicas to 2 behind Capstan's back.
        let get = try Shell.run("curl", ["-sf", "http://127.0.0.1:\(agent.admin)/v1/endpoints/churn-prod"])
        let current = try #require(try JSONSerialization.jsonObject(with: Data(get.stdout.utf8)) as? [String: Any])
        var backends = try #require(current["backends"] as? [[String: Any]]).compactMap { $0["spec"] as? [String: Any] }
        backends[0]["replicas"] = 2
        let body = try JSONSerialization.data(withJSONObject: ["deployment": "churn-prod", "model": "churn", "backends": backends])
        let put = try Shell.run("curl", ["-sf", "-X", "PUT", "-H", "Content-Type: application/json", "--data-binary", "@-",
                                         "http://127.0.0.1:\(agent.admin)/v1/endpoints/churn-prod"], input: body)
        #expect(put.status == 0, "\(put.stderr)")
        let plan = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state])
        #expect(plan.stdout.contains("revert drift churn-prod"), "\(plan.stdout)")
        #expect(plan.stdout.contains("changed outside Capstan (now v1 100% ×2; Capstan set v1 100% ×1)"), "\(plan.stdout)")
        let apply = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(apply.stdout.contains("churn-prod: revert-drift done"), "\(apply.stdout)")
        let after = try Shell.run("curl", ["-sf", "http://127.0.0.1:\(agent.admin)/v1/endpoints/churn-prod"])
        #expect(after.stdout.replacingOccurrences(of: " ", with: "").contains("\"replicas\":1"), "\(after.stdout)")
    }

    /// A Deployment removed from Git keeps serving (orphaned) until policy.prune is true.
    @Test func aRemovedDeploymentIsRetiredOnlyWithPrune() throws {
        let temp = try TempDir()
        let state = temp.sub("state").path
        let (agent, repo) = try Self.serving(temp, state: state)
        defer { agent.stop() }
        try repo.remove("deployments/churn-prod.yaml")
        try repo.write("deployments/README.md", "No deployments for now.\n")
        try repo.commit("drop the deployment")
        let kept = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(kept.status == 0, "\(kept.stdout)")
        #expect(agent.predict().0 == 200)
        let plan = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state])
        #expect(plan.stdout.contains("keeps serving because policy.prune is false"), "\(plan.stdout)")
        try Self.edit(repo, "capstan.yaml") { $0.replacingOccurrences(of: "prune: false", with: "prune: true") }
        try repo.commit("prune")
        let retired = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(retired.stdout.contains("churn-prod: retire-endpoint done"), "\(retired.stdout)")
        #expect(agent.predict().0 == 404)
    }

    /// The agent restarts in the middle of a canary: it comes back with the same endpoint and
    /// weights, the analysis starts again from its new counters, and the rollout completes.
    @Test func anAgentRestartMidCanaryResumesTheRollout() throws {
        let temp = try TempDir()
        let state = temp.sub("state").path
        let (agent, repo) = try Self.serving(temp, state: state)
        try Self.edit(repo, "models/churn/model.yaml") { $0.replacingOccurrences(of: "epochs: 20,", with: "epochs: 200,") }
        try repo.commit("more epochs")
        _ = try Self.applyUntil(repo, state: state, agent: agent) { $0.stdout.contains("advance-rollout done: step 1/2") }
        agent.stop()
        let restarted = try Agent(state: temp.sub("agent").path, log: temp.sub("agent2.log"), gateway: agent.gateway, admin: agent.admin)
        defer { restarted.stop() }
        let list = try Shell.run("curl", ["-sf", "http://127.0.0.1:\(restarted.admin)/v1/endpoints/churn-prod"])
        #expect(list.stdout.replacingOccurrences(of: " ", with: "").contains("\"weight\":10"), "\(list.stdout)")
        let rest = try Self.applyUntil(repo, state: state, agent: restarted) { $0.stdout.contains("churn-prod: promote done") }
        let text = rest.map(\.stdout).joined()
        #expect(text.contains("the serving agent restarted: the analysis of step 1/2 starts again"), "\(text)")
        #expect(text.contains("churn-prod: promote done"), "\(text)")
        #expect(restarted.predict() == (200, "2"))
    }

    /// A pass killed after the agent took a rollout step but before Capstan recorded it: the next
    /// pass finds the endpoint as that step left it and records the step then (once), instead of
    /// taking Capstan's own change for drift and reverting it. Found by the kill-anywhere suite.
    @Test func aStepTheAgentTookBeforeTheKillIsRecordedNotRevertedAsDrift() throws {
        let temp = try TempDir()
        let state = temp.sub("state").path
        let (agent, repo) = try Self.serving(temp, state: state)
        defer { agent.stop() }
        try Self.edit(repo, "models/churn/model.yaml") { $0.replacingOccurrences(of: "epochs: 20,", with: "epochs: 200,") }
        try repo.commit("more epochs")
        let killed = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state], environment: ["CAPSTAN_FAILPOINT": "deployment.after-serving"])
        #expect(killed.status != 0 && killed.status != 1, "\(killed.stdout)")
        #expect(killed.stdout.contains("churn-prod: start-rollout"), "\(killed.stdout)")

        let next = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(next.status == 0, "\(next.stdout)\n\(next.stderr)")
        #expect(next.stderr.contains("recovered an interrupted start-rollout of deployment/churn-prod"), "\(next.stderr)")
        #expect(next.stderr.contains("the serving layer had taken it"), "\(next.stderr)")
        #expect(!next.stdout.contains("changed outside Capstan"), "\(next.stdout)")
        let rest = try Self.applyUntil(repo, state: state, agent: agent) { $0.stdout.contains("churn-prod: promote done") }
        let text = rest.map(\.stdout).joined()
        #expect(!text.contains("changed outside Capstan"), "\(text)")
        #expect(agent.predict() == (200, "2"))
        let history = try CLI.run(["history", "--state-dir", state, "--format", "json"])
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(history.stdout.utf8)) as? [String: Any])
        let actions = (doc["events"] as? [[String: Any]] ?? []).filter { $0["object"] as? String == "deployment/churn-prod" }
            .compactMap { $0["action"] as? String }
        #expect(actions.count { $0 == "start-rollout" } == 1, "\(actions)")
        #expect(!actions.contains("revert-drift"), "\(actions)")
    }

    /// An agent killed with SIGKILL cannot stop its model servers; the next agent on the same
    /// state folder finds them (by the id the killed agent gave them) and stops them before it
    /// starts its own, so they do not hold ports and memory for ever. (Found by the kill-anywhere
    /// suite under `run --serve`.)
    @Test func modelServersOfAKilledAgentAreStoppedByTheNextAgent() throws {
        let temp = try TempDir()
        let state = temp.sub("state").path
        let (agent, _) = try Self.serving(temp, state: state)
        let servers = ControllerTests.processes(withEnvironment: "CAPSTAN_MODEL_DIR=\(state)")
        #expect(!servers.isEmpty)
        defer { for pid in servers where ApplyCommandTests.isRunning(pid) { kill(pid, SIGKILL) } }
        kill(agent.process.processIdentifier, SIGKILL)
        agent.process.waitUntilExit()
        #expect(servers.allSatisfy { ApplyCommandTests.isRunning($0) }, "the servers of a killed agent keep running until someone stops them")

        let next = try Agent(state: temp.sub("agent").path, log: temp.sub("agent2.log"), gateway: agent.gateway, admin: agent.admin)
        defer { next.stop() }
        #expect(ControllerTests.eventually(within: 10) { servers.allSatisfy { !ApplyCommandTests.isRunning($0) } },
                "left running: \(servers.filter { ApplyCommandTests.isRunning($0) })")
        let log = try String(contentsOf: next.log, encoding: .utf8)
        #expect(log.contains("was left running by an agent that is gone (pid \(agent.process.processIdentifier)); stopped it"), "\(log)")
        // The endpoint the killed agent saved is served again, by new servers.
        #expect(ControllerTests.eventually(within: 30) { next.predict() == (200, "1") })
        let now = ControllerTests.processes(withEnvironment: "CAPSTAN_MODEL_DIR=\(state)")
        #expect(!now.isEmpty && Set(now).isDisjoint(with: servers), "\(now) \(servers)")
        // A clean stop forgets the record: the agent after it has nothing to stop.
        next.stop()
        #expect(!FileManager.default.fileExists(atPath: temp.sub("agent/serving/agent.json").path))
    }

    /// A version whose server never answers its readiness path is rolled back once the agent
    /// gives up on it; traffic never left the old version.
    @Test func aVersionThatNeverBecomesReadyIsRolledBack() throws {
        let temp = try TempDir()
        let state = temp.sub("state").path
        let (agent, repo) = try Self.serving(temp, state: state)
        defer { agent.stop() }
        try Self.edit(repo, "models/churn/serve.py") {
            $0.replacingOccurrences(of: #"self._send(200, {"status": "ok"})"#, with: #"self._send(503, {"status": "warming up forever"})"#)
        }
        try Self.edit(repo, "models/churn/model.yaml") {
            $0.replacingOccurrences(of: "epochs: 20,", with: "epochs: 200,").replacingOccurrences(of: "timeout: 30s}", with: "timeout: 2s}")
        }
        try repo.commit("never ready")
        let results = try Self.applyUntil(repo, state: state, agent: agent) { $0.stdout.contains("churn-prod: rollback") }
        let text = results.map(\.stdout).joined()
        #expect(text.contains("v2 is failing"), "\(text)")
        #expect(agent.predict() == (200, "1"))
    }

    /// The pids of the model servers of one version, found by the environment the agent gives them.
    /// Only live processes (not zombies) whose model folder is under `root` (this test's state).
    static func serverPIDs(version: Int, deployment: String = "churn-prod", under root: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter { pid in
            guard ApplyCommandTests.isRunning(pid),
                  let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return false }
            let vars = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return vars.contains("CAPSTAN_VERSION=\(version)") && vars.contains("CAPSTAN_DEPLOYMENT=\(deployment)")
                && vars.contains { $0.hasPrefix("CAPSTAN_MODEL_DIR=\(root)") }
        }
    }

    /// The canary's server is killed during its analysis: the agent restarts it, the requests
    /// that failed count against it, and the rollout ends one way or the other with traffic served.
    @Test func aBackendKilledDuringAnalysisIsRestartedAndJudged() throws {
        let temp = try TempDir()
        let state = temp.sub("state").path
        let (agent, repo) = try Self.serving(temp, state: state)
        defer { agent.stop() }
        try Self.edit(repo, "models/churn/model.yaml") { $0.replacingOccurrences(of: "epochs: 20,", with: "epochs: 200,") }
        try repo.commit("more epochs")
        _ = try Self.applyUntil(repo, state: state, agent: agent) { $0.stdout.contains("advance-rollout done: step 1/2") }
        let victims = Self.serverPIDs(version: 2, under: temp.url.path)
        #expect(!victims.isEmpty)
        for pid in victims { kill(pid, SIGKILL) }
        let rest = try Self.applyUntil(repo, state: state, agent: agent) {
            $0.stdout.contains("churn-prod: promote done") || $0.stdout.contains("churn-prod: rollback")
        }
        let text = rest.map(\.stdout).joined()
        #expect(text.contains("churn-prod: promote done") || text.contains("churn-prod: rollback"), "\(text)")
        let endpoint = try Shell.run("curl", ["-sf", "http://127.0.0.1:\(agent.admin)/v1/endpoints/churn-prod"])
        #expect(agent.predict().0 == 200)
        #expect(!Self.serverPIDs(version: text.contains("promote done") ? 2 : 1, under: temp.url.path).isEmpty, "\(endpoint.stdout)")
        let agentLog = try String(contentsOf: agent.log, encoding: .utf8)
        #expect(agentLog.contains("churn-prod v2 r0 crashed") || agentLog.contains("churn-prod v2 crashed"), "\(agentLog)")
    }
}
