import Crypto
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Synchronization
import Testing
@testable import CapstanTestSupport

/// `capstan run` started as a process against real repositories, as a user runs it: polling,
/// signed and forged webhooks, the API, metrics, SIGTERM during a long training step.
@Suite(.serialized) struct ControllerTests {
    /// A running `capstan run` with JSON logs in a file; SIGKILLed when the test ends if still running.
    final class RunningController {
        let process = Process()
        let http: UInt16
        let log: URL

        init(repo: String, state: String, log: URL, arguments: [String] = [], environment: [String: String] = [:]) throws {
            http = try Ports.free()
            self.log = log
            process.executableURL = CLI.binary
            process.arguments = ["run", "--repo", repo, "--state-dir", state, "--http", "127.0.0.1:\(http)", "--log-format", "json"] + arguments
            var env = ProcessInfo.processInfo.environment
            env["NO_COLOR"] = "1"
            for (k, v) in environment { env[k] = v }
            process.environment = env
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            let handle = try FileHandle(forWritingTo: log)
            process.standardOutput = handle
            process.standardError = handle
            try process.run()
            var polls = 0
            while !Ports.accepts(http) && polls < 600 && process.isRunning { usleep(50_000); polls += 1 }
        }

        deinit {
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }

        /// The JSON log lines so far.
        var logLines: [[String: Any]] {
            let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        }

        var logText: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

        /// Whether a log line has this (constant) message and these metadata values.
        func logged(_ message: String, _ fields: [String: String] = [:]) -> Bool {
            logLines.contains { line in
                line["msg"] as? String == message && fields.allSatisfy { line[$0.key] as? String == $0.value }
            }
        }

        func request(_ method: String, _ path: String, body: Data? = nil, headers: [String: String] = [:]) -> (Int, String) {
            var request = URLRequest(url: URL(string: "http://127.0.0.1:\(http)\(path)")!)
            request.httpMethod = method
            request.httpBody = body
            request.timeoutInterval = 30
            for (k, v) in headers { request.setValue(v, forHTTPHeaderField: k) }
            let result = Mutex<(Int, String)>((0, ""))
            let done = DispatchSemaphore(value: 0)
            URLSession.shared.dataTask(with: request) { data, response, _ in
                let status = (response as? HTTPURLResponse)?.statusCode ?? 0
                result.withLock { $0 = (status, data.map { String(decoding: $0, as: UTF8.self) } ?? "") }
                done.signal()
            }.resume()
            _ = done.wait(timeout: .now() + 35)
            return result.withLock { $0 }
        }

        /// The status document from /api/v1/status.
        func status() -> [String: Any] {
            let (code, body) = request("GET", "/api/v1/status")
            guard code == 200 else { return [:] }
            return (try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]) ?? [:]
        }

        /// The version numbers of `model` in the registry.
        func versions(_ model: String = "churn") -> [Int] {
            let models = status()["models"] as? [[String: Any]] ?? []
            let versions = models.first { $0["name"] as? String == model }?["versions"] as? [[String: Any]] ?? []
            return versions.compactMap { $0["version"] as? Int }.sorted()
        }

        /// Sends `signal` and waits for the exit; nil when it did not exit within `seconds`.
        func stop(_ signal: Int32 = SIGTERM, within seconds: Double = 30) -> Int32? {
            kill(process.processIdentifier, signal)
            return waitForExit(within: seconds)
        }

        func waitForExit(within seconds: Double) -> Int32? {
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            return process.isRunning ? nil : process.terminationStatus
        }
    }

    /// Live processes (zombies count as dead) whose environment has a variable starting with
    /// `prefix` (CAPSTAN_MODEL_DIR or CAPSTAN_OUTPUT_DIR under the test's folder).
    static func processes(withEnvironment prefix: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap(Int32.init).filter { pid in
            guard ApplyCommandTests.isRunning(pid), let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return false }
            return data.split(separator: 0).contains { String(decoding: $0, as: UTF8.self).hasPrefix(prefix) }
        }
    }

    static func eventually(within seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(100_000)
        }
        return condition()
    }

    /// A repository with one model whose training takes `trainSeconds`.
    static func repository(_ temp: TempDir, trainSeconds: Int = 0) throws -> GitRepo {
        let repo = try GitRepo(at: temp.sub("repo"))
        try repo.write("capstan.yaml", """
            apiVersion: capstan/v1
            kind: Config
            metadata: {name: default}
            spec:
              manifests: [models]

            """)
        try repo.write("models/churn/model.yaml", Manifests.model(inputs: "[models/churn]"))
        try repo.write("models/churn/train.py", """
            import os, time
            print('training', flush=True)
            time.sleep(\(trainSeconds))
            with open(os.path.join(os.environ['CAPSTAN_OUTPUT_DIR'], 'model.txt'), 'w') as f:
                f.write('weights')
            with open(os.environ['CAPSTAN_METRICS_FILE'], 'w') as f:
                f.write('{"accuracy": 0.9}')
            print('trained', flush=True)

            """)
        try repo.commit("one model")
        return repo
    }

    @Test func aCommitIsPickedUpByPollingAndTheControllerStopsCleanly() throws {
        let temp = try TempDir()
        let repo = try Self.repository(temp)
        let controller = try RunningController(repo: repo.path, state: temp.sub("state").path, log: temp.sub("run.log"),
                                               arguments: ["--interval", "1s"])
        #expect(controller.request("GET", "/healthz").0 == 200)
        #expect(Self.eventually(within: 60) { controller.request("GET", "/readyz").0 == 200 }, "never ready: \(controller.logText)")
        #expect(controller.versions() == [1])
        let (_, ready) = controller.request("GET", "/readyz")
        #expect(ready.contains("converged"))

        try repo.write("models/churn/model.yaml", Manifests.model(learningRate: "0.2", inputs: "[models/churn]"))
        let commit = try repo.commit("learning rate 0.2")
        #expect(Self.eventually(within: 60) { controller.versions() == [1, 2] }, "the new commit was not reconciled: \(controller.logText)")
        let passes = controller.logLines.filter { $0["msg"] as? String == "pass started" }
        #expect(passes.contains { ($0["trigger"] as? String)?.hasPrefix("new commit \(commit.prefix(7))") == true })
        #expect(passes.allSatisfy { $0["commit"] != nil && $0["ts"] != nil && $0["level"] as? String == "info" })
        #expect(Self.eventually(within: 10) {
            controller.request("GET", "/metrics").1.contains("capstan_last_applied_commit_info{commit=\"\(commit)\"} 1")
        })

        #expect(controller.stop(SIGTERM) == 0)
        #expect(controller.logLines.contains { $0["msg"] as? String == "controller stopped" })
        let status = try CLI.run(["status", "--state-dir", temp.sub("state").path, "--format", "json"])
        #expect(!status.stdout.contains("\"holder\""), "the lock was not released: \(status.stdout)")
    }

    /// A failed training is retried when its backoff ends, not at the next resync (10 minutes
    /// here) nor the next poll (a minute): the controller wakes for it.
    @Test func aFailedTrainingIsRetriedWhenItsBackoffEnds() throws {
        let temp = try TempDir()
        let repo = try GitRepo(at: temp.sub("repo"))
        let fixed = temp.sub("fixed")
        try repo.write("capstan.yaml", """
            apiVersion: capstan/v1
            kind: Config
            metadata: {name: default}
            spec:
              manifests: [models]
              policy: {retry: {initial: 3s, max: 3s}}

            """)
        try repo.write("models/churn/model.yaml", Manifests.model(inputs: "[models/churn]"))
        // Fails until the test creates `fixed` (a flaky dependency that comes back).
        try repo.write("models/churn/train.py", """
            import os, sys
            if not os.path.exists(\(String(reflecting: fixed.path))):
                print('the feature store is down', flush=True)
                sys.exit(3)
            with open(os.path.join(os.environ['CAPSTAN_OUTPUT_DIR'], 'model.txt'), 'w') as f:
                f.write('weights')
            with open(os.environ['CAPSTAN_METRICS_FILE'], 'w') as f:
                f.write('{"accuracy": 0.9}')

            """)
        try repo.commit("a model whose training fails at first")
        let controller = try RunningController(repo: repo.path, state: temp.sub("state").path, log: temp.sub("run.log"),
                                               arguments: ["--interval", "1m", "--resync", "10m"])
        func statusOfV1() -> String? {
            let models = controller.status()["models"] as? [[String: Any]] ?? []
            let versions = models.first { $0["name"] as? String == "churn" }?["versions"] as? [[String: Any]] ?? []
            return versions.first { $0["version"] as? Int == 1 }?["status"] as? String
        }
        #expect(Self.eventually(within: 60) { statusOfV1() == "failed" }, "the first training did not fail: \(controller.logText)")
        // The backoff (3 s) ends: the controller retries on its own, and fails again.
        #expect(Self.eventually(within: 20) {
            controller.logLines.filter { $0["msg"] as? String == "pass started" && $0["trigger"] as? String == "a training backoff ended" }.count >= 1
        }, "no pass when the backoff ended: \(controller.logText)")
        try Data().write(to: fixed)
        let started = Date()
        #expect(Self.eventually(within: 30) { statusOfV1() == "validated" }, "the training was not retried: \(controller.logText)")
        #expect(Date().timeIntervalSince(started) < 30)
        #expect(!controller.logLines.contains { $0["trigger"] as? String == "resync" })
        // Converged: nothing left to wake for.
        let passes = controller.logLines.filter { $0["msg"] as? String == "pass started" }.count
        usleep(5_000_000)
        #expect(controller.logLines.filter { $0["msg"] as? String == "pass started" }.count == passes)
        #expect(controller.stop() == 0)
    }

    /// A remote over git://: a push is fetched by the next poll; when the remote goes away,
    /// /readyz says so, the fetch errors are counted, and nothing else changes.
    @Test func aPushToARemoteIsFetchedAndAnUnreachableRemoteMakesItUnready() throws {
        let temp = try TempDir()
        let work = try Self.repository(temp)
        let served = temp.sub("served/models.git")
        _ = try GitRepo(at: served, bare: true)
        try work.push(to: served.path)
        let daemon = try GitDaemon(base: temp.sub("served"))
        let controller = try RunningController(repo: daemon.url("models.git"), state: temp.sub("state").path, log: temp.sub("run.log"),
                                               arguments: ["--ref", "main", "--interval", "1s", "--fetch-timeout", "5s"])
        #expect(Self.eventually(within: 60) { controller.request("GET", "/readyz").0 == 200 }, "never ready: \(controller.logText)")
        try work.write("models/churn/model.yaml", Manifests.model(learningRate: "0.4", inputs: "[models/churn]"))
        let pushed = try work.commit("learning rate 0.4")
        try work.push(to: served.path)
        #expect(Self.eventually(within: 60) { controller.versions() == [1, 2] }, "the push was not reconciled: \(controller.logText)")
        #expect(controller.logLines.contains { ($0["trigger"] as? String) == "new commit \(pushed.prefix(7))" })

        daemon.stop()
        #expect(Self.eventually(within: 30) { controller.request("GET", "/readyz").0 == 503 }, "still ready without its source")
        let (_, reason) = controller.request("GET", "/readyz")
        #expect(reason.contains("the source is unreachable"), "\(reason)")
        let errors = controller.request("GET", "/metrics").1.split(separator: "\n").first { $0.hasPrefix("capstan_source_fetch_errors_total ") }
        #expect(errors.flatMap { Double($0.split(separator: " ").last ?? "") }.map { $0 >= 1 } == true, "\(String(describing: errors))")
        // Logged once, not once per poll.
        #expect(controller.logLines.filter { ($0["msg"] as? String)?.hasPrefix("cannot read the source") == true && $0["level"] as? String == "error" }.count == 1)
        #expect(controller.versions() == [1, 2])
        #expect(controller.stop() == 0)
    }

    @Test(.enabled(if: NonLoopbackAddress.ipv4 != nil, "this machine has no non-loopback IPv4 address"))
    func aTokenSentOverPlainHTTPIsLoggedOnceNotOnEveryPoll() throws {
        let address = try #require(NonLoopbackAddress.ipv4)
        let temp = try TempDir()
        let work = try Self.repository(temp)
        let served = temp.sub("served/models.git")
        _ = try GitRepo(at: served, bare: true)
        try work.push(to: served.path)
        let requests = temp.sub("requests.log").path
        let token = "controller-plain-http-token-1f2e"
        let server = try PythonServer.gitHTTP(root: temp.sub("served").path, user: "x-access-token", password: token,
                                              options: ["bind": address, "log": requests])
        let url = "http://\(address):\(server.port)/models.git"
        let controller = try RunningController(repo: url, state: temp.sub("state").path, log: temp.sub("run.log"),
                                               arguments: ["--ref", "main", "--interval", "1s"], environment: ["CAPSTAN_GIT_TOKEN": token])
        #expect(Self.eventually(within: 60) { controller.request("GET", "/readyz").0 == 200 }, "never ready: \(controller.logText)")
        // At least three fetches that sent the token (one or two requests with it each).
        #expect(Self.eventually(within: 60) {
            PythonServer.loggedAuthorizations(requests).filter { $0 != nil }.count >= 6
        }, "\(PythonServer.loggedAuthorizations(requests))")
        let warnings = controller.logLines.filter { $0["level"] as? String == "warning" && ($0["msg"] as? String)?.contains("plain http://") == true }
        #expect(warnings.count == 1, "\(controller.logText)")
        #expect((warnings.first?["msg"] as? String)?.contains("the credentials from $CAPSTAN_GIT_TOKEN are sent to \(url.dropLast("/models.git".count))") == true,
                "\(warnings)")
        #expect(!controller.logText.contains(token))
        #expect(controller.stop() == 0)
    }

    @Test func theAgentsAdminAPIListensOnLoopbackOnlyWithoutAToken() throws {
        let temp = try TempDir()
        let repo = try Self.repository(temp)
        for admin in ["0.0.0.0:0", "[::]:0", "192.0.2.1:7070", "agent.example.com:7070"] {
            // Under `timeout`: a controller that starts anyway is stopped, not waited for.
            let r = try Shell.run("timeout", ["30", CLI.binary.path, "run", "--repo", repo.path, "--state-dir", temp.sub("s").path,
                                              "--serve", "--admin", admin, "--gateway", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            #expect(r.status == 64, "\(admin): \(r.stderr)")
            #expect(r.stderr.contains("--admin \(admin) is not a loopback address"), "\(r.stderr)")
            #expect(r.stderr.contains("--admin-token-env"), "\(r.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: temp.sub("s").path), "nothing was started")
    }

    @Test func aSignedWebhookTriggersAPassAndForgedOnesDoNot() throws {
        let temp = try TempDir()
        let repo = try Self.repository(temp)
        let secret = "s3cret-\(UUID().uuidString)"
        let controller = try RunningController(
            repo: repo.path, state: temp.sub("state").path, log: temp.sub("run.log"),
            arguments: ["--interval", "1h", "--resync", "1h", "--webhook-secret-env", "HOOK_SECRET"],
            environment: ["HOOK_SECRET": secret])
        #expect(Self.eventually(within: 60) { controller.request("GET", "/readyz").0 == 200 }, "never ready: \(controller.logText)")
        try repo.write("models/churn/model.yaml", Manifests.model(learningRate: "0.3", inputs: "[models/churn]"))
        try repo.commit("learning rate 0.3")
        let payload = Data(#"{"ref": "refs/heads/main", "after": "0000000000000000000000000000000000000000"}"#.utf8)
        let key = SymmetricKey(data: Data(secret.utf8))
        let good = "sha256=" + HMAC<SHA256>.authenticationCode(for: payload, using: key).map { String(format: "%02x", $0) }.joined()
        let forged = "sha256=" + HMAC<SHA256>.authenticationCode(for: payload, using: SymmetricKey(data: Data("guess".utf8)))
            .map { String(format: "%02x", $0) }.joined()

        // Forged, missing, or signed for another body: 401, and no pass.
        #expect(controller.request("POST", "/hooks/git", body: payload, headers: ["X-Hub-Signature-256": forged]).0 == 401)
        #expect(controller.request("POST", "/hooks/git", body: payload).0 == 401)
        #expect(controller.request("POST", "/hooks/git", body: Data("{}".utf8), headers: ["X-Hub-Signature-256": good]).0 == 401)
        #expect(controller.request("POST", "/hooks/git", body: payload, headers: ["X-Gitlab-Token": "guess"]).0 == 401)
        let (code, body) = controller.request("POST", "/hooks/git", body: payload, headers: ["X-Capstan-Signature": "sha256=zz"])
        #expect(code == 401 && body.contains("sha256=<64 hex digits>"))
        let tooBig = Data(repeating: UInt8(ascii: "x"), count: 2 << 20)
        #expect(controller.request("POST", "/hooks/git", body: tooBig, headers: ["X-Hub-Signature-256": good]).0 == 413)
        usleep(1_500_000)
        #expect(controller.versions() == [1], "a forged webhook started a pass")
        #expect(controller.logLines.filter { $0["msg"] as? String == "pass started" }.count == 1)
        #expect(!controller.logText.contains(secret), "the secret reached the log")

        // Signed: 202 and a pass within a second.
        let sent = Date()
        #expect(controller.request("POST", "/hooks/git", body: payload, headers: ["X-Hub-Signature-256": good, "X-GitHub-Event": "push"]).0 == 202)
        #expect(Self.eventually(within: 5) { controller.logLines.filter { $0["msg"] as? String == "pass started" }.count == 2 })
        let started = controller.logLines.filter { $0["msg"] as? String == "pass started" }.last
        #expect(started?["trigger"] as? String == "github webhook")
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let ts = started?["ts"] as? String, let at = formatter.date(from: ts) {
            #expect(at.timeIntervalSince(sent) < 1.0, "the pass started \(at.timeIntervalSince(sent)) s after the webhook")
        } else {
            Issue.record("no timestamp on the pass: \(String(describing: started))")
        }
        #expect(Self.eventually(within: 60) { controller.versions() == [1, 2] })
        // GitLab's token header works too.
        #expect(controller.request("POST", "/hooks/git", body: payload, headers: ["X-Gitlab-Token": secret]).0 == 202)
        let metrics = controller.request("GET", "/metrics").1
        #expect(metrics.contains("capstan_webhooks_total{result=\"rejected\"} 6"), "\(metrics)")
        #expect(metrics.contains("capstan_webhooks_total{result=\"accepted\"} 2"))
        #expect(controller.stop() == 0)
    }

    @Test func theReconcileAPINeedsItsToken() throws {
        let temp = try TempDir()
        let repo = try Self.repository(temp)
        let controller = try RunningController(
            repo: repo.path, state: temp.sub("state").path, log: temp.sub("run.log"),
            arguments: ["--interval", "1h", "--api-token-env", "API_TOKEN"], environment: ["API_TOKEN": "tok-123"])
        #expect(Self.eventually(within: 60) { controller.request("GET", "/readyz").0 == 200 }, "never ready: \(controller.logText)")
        #expect(controller.request("POST", "/api/v1/reconcile").0 == 401)
        #expect(controller.request("POST", "/api/v1/reconcile", headers: ["Authorization": "Bearer nope"]).0 == 401)
        #expect(controller.request("GET", "/api/v1/reconcile").0 == 405)
        #expect(controller.request("POST", "/api/v1/reconcile", headers: ["Authorization": "Bearer tok-123"]).0 == 202)
        #expect(Self.eventually(within: 10) {
            controller.logLines.contains { $0["msg"] as? String == "pass started" && $0["trigger"] as? String == "POST /api/v1/reconcile" }
        })
        #expect(controller.request("GET", "/nowhere").0 == 404)
        #expect(controller.stop() == 0)
    }

    @Test func connectAndHeldBackBodiesAreAnsweredCompletely() async throws {
        let temp = try TempDir()
        let repo = try Self.repository(temp)
        let controller = try RunningController(repo: repo.path, state: temp.sub("state").path, log: temp.sub("run.log"),
                                               arguments: ["--interval", "1h"])
        let port = Int(controller.http)
        let connect = await RawSocket.exchange(port: port, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        #expect(connect.closed, "the connection was left open: \(connect.text)")
        #expect(connect.status == 405, "\(connect.text)")
        #expect(connect.headers["allow"] == ["GET, HEAD, POST"])
        #expect(connect.headers["content-length"] == ["\(connect.body.utf8.count)"], "\(connect.text)")
        // A webhook refused before its body is read (webhooks are off) gets 100 Continue first.
        let webhook = await RawSocket.exchange(
            port: port, "POST /hooks/git HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            more: "{}" + "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        #expect(webhook.text.hasPrefix("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 401 "), "\(webhook.text)")
        #expect(webhook.text.contains("\r\n\r\nok\n") && webhook.closed, "\(webhook.text)")
        let old = await RawSocket.exchange(port: port, "GET /healthz HTTP/1.0\r\n\r\n")
        #expect(old.closed && old.status == 200, "\(old.text)")
        #expect(controller.stop() == 0)
    }

    @Test func metricsAreValidPrometheusText() throws {
        let temp = try TempDir()
        let repo = try Self.repository(temp)
        let controller = try RunningController(repo: repo.path, state: temp.sub("state").path, log: temp.sub("run.log"),
                                               arguments: ["--interval", "1h"])
        #expect(Self.eventually(within: 60) { controller.request("GET", "/readyz").0 == 200 }, "never ready: \(controller.logText)")
        let (code, text) = controller.request("GET", "/metrics")
        #expect(code == 200)
        try Data(text.utf8).write(to: temp.sub("metrics.txt"))
        // The reference parser (prometheus_client, pip) reads it; its families are listed.
        let parsed = try Shell.run("/usr/bin/env", ["python3", "-c", """
            import sys
            from prometheus_client.parser import text_string_to_metric_families
            for family in text_string_to_metric_families(open(sys.argv[1]).read()):
                for sample in family.samples:
                    print(family.type, sample.name, ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())), float(sample.value))
            """, temp.sub("metrics.txt").path])
        #expect(parsed.status == 0, "prometheus_client (a test peer: run the tests with scripts/test.sh, which installs it) could not parse /metrics: \(parsed.stderr)\n\(text)")
        let samples = parsed.stdout.split(separator: "\n").map(String.init)
        #expect(samples.contains("counter capstan_passes_total outcome=converged 1.0"), "\(parsed.stdout)")
        #expect(samples.contains { $0.hasPrefix("histogram capstan_pass_duration_seconds_count  1.0") })
        #expect(samples.contains { $0.hasPrefix("counter capstan_steps_total kind=train,result=done 1.0") })
        #expect(samples.contains { $0.hasPrefix("gauge capstan_last_applied_commit_info commit=") })
        #expect(samples.contains("counter capstan_source_fetch_errors_total  0.0"))
        #expect(controller.stop() == 0)
    }

    @Test func sigtermDuringALongTrainingStopsTheStepAndReleasesTheLock() throws {
        let temp = try TempDir()
        let repo = try Self.repository(temp, trainSeconds: 120)
        let state = temp.sub("state").path
        let controller = try RunningController(repo: repo.path, state: state, log: temp.sub("run.log"),
                                               arguments: ["--interval", "1h", "--shutdown-grace", "2s"])
        #expect(Self.eventually(within: 60) { controller.logged("step started", ["step": "train", "model": "churn"]) },
                "training never started: \(controller.logText)")
        #expect(Self.eventually(within: 10) { !Self.processes(withEnvironment: "CAPSTAN_OUTPUT_DIR=\(state)").isEmpty }, "no training process seen")
        #expect(controller.request("GET", "/readyz").0 == 503, "ready before the first pass finished")
        let stopped = Date()
        let status = controller.stop(SIGTERM, within: 30)
        #expect(status == 0, "exit status \(String(describing: status)): \(controller.logText)")
        #expect(Date().timeIntervalSince(stopped) < 15)
        #expect(controller.logText.contains("did not finish within the shutdown grace"))
        // No training process is left, and the next apply takes the lock and resumes the version.
        #expect(Self.eventually(within: 10) { Self.processes(withEnvironment: "CAPSTAN_OUTPUT_DIR=\(state)").isEmpty },
                "training processes left: \(Self.processes(withEnvironment: "CAPSTAN_OUTPUT_DIR=\(state)"))")
        try repo.write("models/churn/train.py", """
            import os
            open(os.path.join(os.environ['CAPSTAN_OUTPUT_DIR'], 'model.txt'), 'w').write('quick')

            """)
        try repo.commit("quick training")
        let apply = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(apply.status == 0, "\(apply.stdout)\(apply.stderr)")
    }

    @Test func aSecondSignalStopsAtOnce() throws {
        let temp = try TempDir()
        let repo = try Self.repository(temp, trainSeconds: 120)
        let controller = try RunningController(repo: repo.path, state: temp.sub("state").path, log: temp.sub("run.log"),
                                               arguments: ["--interval", "1h", "--shutdown-grace", "10m"])
        #expect(Self.eventually(within: 60) { controller.logged("step started", ["step": "train", "model": "churn"]) },
                "training never started: \(controller.logText)")
        #expect(Self.eventually(within: 10) { !Self.processes(withEnvironment: "CAPSTAN_OUTPUT_DIR=\(temp.sub("state").path)").isEmpty },
                "no training process seen")
        kill(controller.process.processIdentifier, SIGTERM)
        usleep(500_000)
        #expect(controller.process.isRunning, "the first SIGTERM must wait for the pass (grace 10m)")
        let status = controller.stop(SIGTERM, within: 20)
        #expect(status == 128 + SIGTERM, "exit status \(String(describing: status)): \(controller.logText)")
        let state = temp.sub("state").path
        #expect(Self.eventually(within: 10) { Self.processes(withEnvironment: "CAPSTAN_OUTPUT_DIR=\(state)").isEmpty },
                "training processes left: \(Self.processes(withEnvironment: "CAPSTAN_OUTPUT_DIR=\(state)"))")
        let locks = try CLI.run(["status", "--state-dir", temp.sub("state").path, "--format", "json"])
        #expect(!locks.stdout.contains("\"holder\""), "the lock was not released: \(locks.stdout)")
    }

    @Test func theStatusPageLoadsInHeadlessChromium() throws {
        let temp = try TempDir()
        let repo = try Self.repository(temp)
        let controller = try RunningController(repo: repo.path, state: temp.sub("state").path, log: temp.sub("run.log"),
                                               arguments: ["--interval", "1h"])
        #expect(Self.eventually(within: 60) { controller.request("GET", "/readyz").0 == 200 }, "never ready: \(controller.logText)")
        guard let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            Issue.record("Chromium is missing: apt-get install chromium (scripts/test.sh installs it)")
            return
        }
        let page = try Shell.run("/usr/bin/timeout", ["60", chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                                       "--user-data-dir=\(temp.sub("chromium").path)", "--dump-dom",
                                                       "http://127.0.0.1:\(controller.http)/"])
        #expect(page.status == 0, "chromium failed: \(page.stderr)")
        #expect(page.stdout.contains("id=\"model-churn\""), "\(page.stdout.prefix(2000))")
        #expect(page.stdout.contains("<svg") && page.stdout.contains("id=\"plot-churn\""), "no metric plot")
        #expect(page.stdout.contains("http-equiv=\"refresh\""))
        // The page links each model's card, which the controller serves from its last commit.
        #expect(page.stdout.contains("href=\"/models/churn/card\""), "no model card link")
        let card = try Shell.run("/usr/bin/timeout", ["60", chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                                       "--user-data-dir=\(temp.sub("chromium").path)", "--dump-dom",
                                                       "http://127.0.0.1:\(controller.http)/models/churn/card"])
        #expect(card.status == 0, "chromium failed: \(card.stderr)")
        #expect(card.stdout.contains("<h1>Model card: churn v1</h1>"), "\(card.stdout.prefix(2000))")
        #expect(card.stdout.contains("<tr class=\"metric\"><td>accuracy</td><td class=\"num\">0.9</td></tr>"), "\(card.stdout.suffix(3000))")
        #expect(controller.request("GET", "/models/nothing/card").0 == 404)
        #expect(controller.request("POST", "/models/churn/card").0 == 405)
        #expect(controller.stop() == 0)
    }

    @Test func notificationsReachWebhookAndSlackReceivers() throws {
        let temp = try TempDir()
        let repo = try Self.repository(temp)
        let received = temp.sub("received.jsonl")
        // A receiver that appends each POST (path and body) to a file, one JSON line each.
        let receiver = try PythonServer(script: """
            import json, sys
            from http.server import BaseHTTPRequestHandler, HTTPServer
            class H(BaseHTTPRequestHandler):
                def do_POST(self):
                    body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
                    with open(sys.argv[1], 'a') as f:
                        f.write(json.dumps({'path': self.path, 'body': json.loads(body)}) + '\\n')
                    self.send_response(200); self.end_headers()
                def log_message(self, *a): pass
            s = HTTPServer(('127.0.0.1', 0), H)
            print(s.server_address[1], flush=True)
            s.serve_forever()
            """, arguments: [received.path])
        defer { receiver.stop() }
        let token = "tok\(UUID().uuidString.prefix(8))"
        let controller = try RunningController(
            repo: repo.path, state: temp.sub("state").path, log: temp.sub("run.log"),
            arguments: ["--interval", "1h", "--notify-webhook-env", "HOOK_URL", "--notify-slack-env", "SLACK_URL"],
            environment: ["HOOK_URL": "http://127.0.0.1:\(receiver.port)/generic/\(token)",
                          "SLACK_URL": "http://127.0.0.1:\(receiver.port)/services/\(token)"])
        #expect(Self.eventually(within: 60) { controller.request("GET", "/readyz").0 == 200 }, "never ready: \(controller.logText)")
        func lines() -> [[String: Any]] {
            ((try? String(contentsOf: received, encoding: .utf8)) ?? "").split(separator: "\n")
                .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        }
        #expect(Self.eventually(within: 30) { lines().count >= 4 }, "notifications: \(lines())")
        let generic = lines().filter { ($0["path"] as? String)?.hasPrefix("/generic/") == true }.compactMap { $0["body"] as? [String: Any] }
        let kinds = generic.compactMap { ($0["event"] as? [String: Any])?["kind"] as? String }
        #expect(kinds.contains("version.validated"), "\(generic)")
        #expect(kinds.contains("alias.moved"), "\(generic)")
        #expect(generic.allSatisfy { $0["format_version"] as? Int == 1 })
        let validated = generic.compactMap { $0["event"] as? [String: Any] }.first { $0["kind"] as? String == "version.validated" }
        #expect(validated?["model"] as? String == "churn")
        #expect(validated?["version"] as? Int == 1)
        let slack = lines().filter { ($0["path"] as? String)?.hasPrefix("/services/") == true }.compactMap { $0["body"] as? [String: Any] }
        #expect(slack.count == generic.count)
        #expect(slack.allSatisfy { ($0["text"] as? String)?.isEmpty == false }, "\(slack)")
        #expect(slack.contains { ($0["text"] as? String)?.contains("churn v1") == true }, "\(slack)")
        #expect(!controller.logText.contains(token), "a notification URL reached the log")
        #expect(controller.stop() == 0)
    }

    /// `capstan run --serve` alone: the first pass creates the endpoint in the in-process agent; a
    /// commit is rolled out by canary on the tick while requests flow; a broken version is rolled
    /// back; SIGTERM stops the model servers too.
    @Test func theControllerRollsOutACanaryOnItsTick() throws {
        let temp = try TempDir()
        let gateway = try Ports.free(), admin = try Ports.free()
        let repo = try GitRepo(at: temp.sub("repo"))
        let example = CLI.packageRoot.appendingPathComponent("examples/quickstart")
        try repo.copy(example: example) { original in
            return original
                // Nothing listens there: with --serve, passes talk to the in-process agent.
                .replacingOccurrences(of: "http://127.0.0.1:7070", with: "http://127.0.0.1:1")
                .replacingOccurrences(of: "pause: 5s", with: "pause: 1s")
                .replacingOccurrences(of: "minRequests: 20", with: "minRequests: 5")
        }
        try repo.commit("quick start")
        let controller = try RunningController(
            repo: repo.path, state: temp.sub("state").path, log: temp.sub("run.log"),
            arguments: ["--interval", "1s", "--tick", "1s", "--serve", "--gateway", "127.0.0.1:\(gateway)", "--admin", "127.0.0.1:\(admin)"])
        func predict() -> (Int, String?) {
            var request = URLRequest(url: URL(string: "http://127.0.0.1:\(gateway)/churn-prod/predict")!)
            request.httpMethod = "POST"
            request.httpBody = Data(#"{"tenure_months": 3, "monthly_charges": 99.5, "support_calls": 4}"#.utf8)
            request.timeoutInterval = 10
            let result = Mutex<(Int, String?)>((0, nil))
            let done = DispatchSemaphore(value: 0)
            URLSession.shared.dataTask(with: request) { _, response, _ in
                let http = response as? HTTPURLResponse
                result.withLock { $0 = (http?.statusCode ?? 0, http?.value(forHTTPHeaderField: "X-Capstan-Version")) }
                done.signal()
            }.resume()
            _ = done.wait(timeout: .now() + 12)
            return result.withLock { $0 }
        }
        #expect(Self.eventually(within: 90) { predict() == (200, "1") }, "v1 never served: \(controller.logText)")
        #expect(!Self.processes(withEnvironment: "CAPSTAN_MODEL_DIR=\(temp.sub("state").path)").isEmpty, "no model server seen")
        #expect(!controller.logText.contains("serving-unavailable"), "a pass did not use the in-process agent: \(controller.logText)")

        let model = repo.url.appendingPathComponent("models/churn/model.yaml")
        try repo.write("models/churn/model.yaml", try String(contentsOf: model, encoding: .utf8).replacingOccurrences(of: "epochs: 20,", with: "epochs: 200,"))
        try repo.commit("more epochs")
        #expect(Self.eventually(within: 120) { predict() == (200, "2") && !controller.logText.contains("\"phase\":\"stepping\"") && controller.logged("step done", ["step": "promote"]) },
                "v2 was not promoted: \(controller.logText.suffix(4000))")
        let triggers = Set(controller.logLines.filter { $0["msg"] as? String == "pass started" }.compactMap { $0["trigger"] as? String })
        #expect(triggers.contains("rollout in progress"), "\(triggers)")
        #expect(controller.logged("step done", ["step": "advance-rollout"]))

        let serve = repo.url.appendingPathComponent("models/churn/serve.py")
        try repo.write("models/churn/serve.py", try String(contentsOf: serve, encoding: .utf8).replacingOccurrences(
            of: #"self._send(200, {"churn_probability": round(predict(row), 4)})"#, with: #"self._send(500, {"error": "broken"})"#))
        try repo.commit("broken server")
        #expect(Self.eventually(within: 120) { _ = predict(); return controller.logText.contains("v3 rolled back and quarantined") },
                "v3 was not rolled back: \(controller.logText.suffix(4000))")
        #expect(predict() == (200, "2"))
        let metrics = controller.request("GET", "/metrics").1
        #expect(metrics.contains("capstan_steps_total{kind=\"rollback\",result=\"failed\"} 1"), "\(metrics)")
        // The phase gauge is set when the pass ends, a moment after its rollback step is logged.
        #expect(Self.eventually(within: 30) {
            controller.request("GET", "/metrics").1.contains("capstan_rollout_phase{deployment=\"churn-prod\",phase=\"stable\"} 1")
        }, "\(controller.request("GET", "/metrics").1)")

        #expect(controller.stop() == 0)
        let modelDirs = "CAPSTAN_MODEL_DIR=\(temp.sub("state").path)"
        #expect(Self.eventually(within: 10) { Self.processes(withEnvironment: modelDirs).isEmpty },
                "model servers left after SIGTERM: \(Self.processes(withEnvironment: modelDirs))")
    }

    @Test func badFlagsAndMissingSecretsAreRefused() throws {
        let temp = try TempDir()
        let repo = try Self.repository(temp)
        let missing = try CLI.run(["run", "--repo", repo.path, "--state-dir", temp.sub("s").path, "--webhook-secret-env", "NOT_SET_ANYWHERE"])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("--webhook-secret-env names NOT_SET_ANYWHERE, which is not set"))
        let interval = try CLI.run(["run", "--repo", repo.path, "--interval", "soon"])
        #expect(interval.status == 64)
        #expect(interval.stderr.contains("--interval 'soon' is not a duration"))
        let noRepo = try CLI.run(["run"])
        #expect(noRepo.status == 64 && noRepo.stderr.contains("--repo is required"))
        let badAddress = try CLI.run(["run", "--repo", repo.path, "--http", "nowhere"])
        #expect(badAddress.status == 64)
        // The HTTP port taken: a message that names the address and the flag, exit 1.
        let taken = try PythonServer(script: """
            import socket, time
            s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()
            print(s.getsockname()[1], flush=True)
            time.sleep(120)
            """)
        defer { taken.stop() }
        let busy = try CLI.run(["run", "--repo", repo.path, "--state-dir", temp.sub("busy").path, "--http", "127.0.0.1:\(taken.port)"])
        #expect(busy.status == 1)
        #expect(busy.stderr.contains("cannot listen on 127.0.0.1:\(taken.port) for the controller's HTTP server: the address is already in use"),
                "\(busy.stderr)")
        #expect(busy.stderr.contains("choose another address with --http"))
        for command in ["run", "serve"] {
            let threads = try CLI.run([command, "--repo", repo.path, "--gateway-threads", "0"].filter { command == "run" || ($0 != "--repo" && $0 != repo.path) })
            #expect(threads.status == 64 && threads.stderr.contains("--gateway-threads 0 is not between 1 and 256"), "\(command): \(threads.stderr)")
        }
    }
}
