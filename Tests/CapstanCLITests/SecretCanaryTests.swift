import Crypto
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Synchronization
import Testing
@testable import CapstanTestSupport

/// The secret canary of issue 13: a different canary value in every secret input at once — a
/// training's `secretEnv`, `CAPSTAN_GIT_TOKEN`, the webhook secret, the API and admin tokens,
/// the notification URLs — then validate, plan, apply (a training that returns its secret every
/// way a step can), status, history and `run --serve` (status API and page, metrics, signed and
/// forged webhooks, the reconcile API, the admin API, notifications, SIGTERM). No output
/// stream, HTTP answer, notification body or byte under the state folder (database included)
/// may hold any canary, nor the start of one.
@Suite(.serialized) struct SecretCanaryTests {
    /// One canary per input, each unique to this run.
    static func canaries() -> [(input: String, variable: String, value: String)] {
        let run = UUID().uuidString.prefix(8)
        return [
            ("secretEnv", "CAPSTAN_TEST_TOKEN", "ZqJx-step-\(run)-\(UUID().uuidString)"),
            ("CAPSTAN_GIT_TOKEN", "CAPSTAN_GIT_TOKEN", "ZqJy-git-\(run)-\(UUID().uuidString)"),
            ("webhook secret", "HOOK_SECRET", "ZqJz-hook-\(run)-\(UUID().uuidString)"),
            ("API token", "API_TOKEN", "ZqKa-api-\(run)-\(UUID().uuidString)"),
            ("admin token", "ADMIN_TOKEN", "ZqKb-admin-\(run)-\(UUID().uuidString)"),
            ("notification URL", "HOOK_URL", "ZqKc-notify-\(run)-\(UUID().uuidString)"),
            ("Slack URL", "SLACK_URL", "ZqKd-slack-\(run)-\(UUID().uuidString)"),
        ]
    }

    @Test func noCanaryLeavesThroughAnyCommandAnswerOrFile() throws {
        let canaries = Self.canaries()
        func value(_ input: String) -> String { canaries.first { $0.input == input }!.value }
        let t = try CanaryTraining(secret: value("secretEnv"))
        let temp = t.base.temp

        // The repository behind HTTP Basic auth: the Git token is the password.
        let served = temp.sub("served/models.git")
        _ = try GitRepo(at: served, bare: true)
        try t.repo.push(to: served.path)
        let git = try PythonServer(script: PythonServer.gitHTTP, arguments: [temp.sub("served").path, "x-access-token", value("CAPSTAN_GIT_TOKEN")])
        defer { git.stop() }
        let url = "http://127.0.0.1:\(git.port)/models.git"

        // Notifications: one receiver that records bodies; the Slack URL points at a closed port.
        let received = temp.sub("received.jsonl")
        let receiver = try PythonServer(script: Self.receiver, arguments: [received.path])
        defer { receiver.stop() }
        let closed = try Ports.free()
        var environment: [String: String] = [:]
        for canary in canaries {
            switch canary.variable {
            case "HOOK_URL": environment[canary.variable] = "http://127.0.0.1:\(receiver.port)/generic/\(canary.value)"
            case "SLACK_URL": environment[canary.variable] = "http://127.0.0.1:\(closed)/services/\(canary.value)"
            default: environment[canary.variable] = canary.value
            }
        }

        var seen: [(what: String, text: String)] = []
        func capstan(_ arguments: [String], remote: Bool = true) throws -> CLI.Result {
            let r = try CLI.run(arguments + (remote ? ["--repo", url, "--ref", "main"] : []) + ["--state-dir", t.state],
                                environment: environment)
            seen.append(("capstan \(arguments.joined(separator: " "))", "exit \(r.status)\n" + r.stdout + r.stderr))
            return r
        }

        // validate, plan, apply (every way a training returns its secret), status, history.
        let validate = try capstan(["validate"])
        #expect(validate.status == 0, "\(validate.stderr)")
        #expect(try capstan(["plan", "--detailed-exitcode"]).status == 2)
        #expect(try capstan(["plan", "--format", "json"]).status == 0)
        for (way, expected) in CanaryTraining.ways {
            try t.repo.write("models/churn/behavior.json", #"{"leak": "\#(way)"}"#)
            try t.repo.commit("leak by \(way)")
            try t.repo.push(to: served.path)
            let r = try capstan(["apply"])
            #expect(r.stdout.contains(expected), "\(way): \(r.stdout)\n\(r.stderr.suffix(3000))")
        }
        for command in [["status"], ["status", "--format", "json"], ["history"], ["history", "--format", "json"]] {
            #expect(try capstan(command, remote: false).status == 0)
        }

        // The controller with everything on.
        let gateway = try Ports.free(), admin = try Ports.free()
        let controller = try ControllerTests.RunningController(
            repo: url, state: t.state, log: temp.sub("run.log"),
            arguments: ["--ref", "main", "--interval", "1h", "--resync", "1h", "--log-level", "debug",
                        "--serve", "--gateway", "127.0.0.1:\(gateway)", "--admin", "127.0.0.1:\(admin)", "--admin-token-env", "ADMIN_TOKEN",
                        "--webhook-secret-env", "HOOK_SECRET", "--api-token-env", "API_TOKEN",
                        "--notify-webhook-env", "HOOK_URL", "--notify-slack-env", "SLACK_URL"],
            environment: environment)
        #expect(ControllerTests.eventually(within: 90) { controller.request("GET", "/readyz").0 == 200 }, "never ready: \(controller.logText)")
        func passes() -> Int {
            controller.logLines.filter { ($0["msg"] as? String).map { $0.hasPrefix("pass finished") || $0.hasPrefix("pass failed") } == true }.count
        }
        let before = passes()

        // A commit that leaks again (a string value and the long line), announced by a signed
        // webhook; forged ones are refused.
        try t.repo.write("models/churn/behavior.json", #"{"leak": "value", "again": true}"#)
        try t.repo.commit("leak again")
        try t.repo.push(to: served.path)
        let payload = Data(#"{"ref": "refs/heads/main"}"#.utf8)
        func signature(_ key: String) -> String {
            "sha256=" + HMAC<SHA256>.authenticationCode(for: payload, using: SymmetricKey(data: Data(key.utf8)))
                .map { String(format: "%02x", $0) }.joined()
        }
        var answers: [(String, Int, String)] = []
        func ask(_ method: String, _ path: String, body: Data? = nil, headers: [String: String] = [:]) -> Int {
            let (code, text) = controller.request(method, path, body: body, headers: headers)
            answers.append(("\(method) \(path)", code, text))
            return code
        }
        #expect(ask("POST", "/hooks/git", body: payload, headers: ["X-Hub-Signature-256": signature("guess")]) == 401)
        #expect(ask("POST", "/hooks/git", body: payload, headers: ["X-Gitlab-Token": "guess"]) == 401)
        #expect(ask("POST", "/hooks/git", body: payload, headers: ["X-Capstan-Signature": "sha256=zz"]) == 401)
        #expect(ask("POST", "/hooks/git", body: payload, headers: ["X-Hub-Signature-256": signature(value("webhook secret")),
                                                                 "X-GitHub-Event": "push"]) == 202)
        #expect(ControllerTests.eventually(within: 120) { passes() > before }, "no pass after the webhook: \(controller.logText.suffix(3000))")
        #expect(ask("POST", "/api/v1/reconcile", headers: ["Authorization": "Bearer guess"]) == 401)
        #expect(ask("POST", "/api/v1/reconcile", headers: ["Authorization": "Bearer \(value("API token"))"]) == 202)
        #expect(ControllerTests.eventually(within: 120) { passes() > before + 1 }, "no pass after the API call")
        for path in ["/api/v1/status", "/", "/metrics", "/healthz", "/readyz"] {
            #expect(ask("GET", path) == 200, "\(path)")
        }
        #expect(answers.first { $0.0 == "GET /" }?.2.contains("[secret]") == true, "the status page shows no scrubbed tail")

        // The admin API of the agent in the same process.
        func adminRequest(_ token: String?) -> (Int, String) {
            var request = URLRequest(url: URL(string: "http://127.0.0.1:\(admin)/v1/endpoints")!)
            request.timeoutInterval = 10
            if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
            let result = Mutex<(Int, String)>((0, ""))
            let done = DispatchSemaphore(value: 0)
            URLSession.shared.dataTask(with: request) { data, response, _ in
                result.withLock { $0 = ((response as? HTTPURLResponse)?.statusCode ?? 0, data.map { String(decoding: $0, as: UTF8.self) } ?? "") }
                done.signal()
            }.resume()
            _ = done.wait(timeout: .now() + 12)
            let answer = result.withLock { $0 }
            answers.append(("admin GET /v1/endpoints", answer.0, answer.1))
            return answer
        }
        #expect(adminRequest(nil).0 == 401)
        #expect(adminRequest("guess").0 == 401)
        #expect(adminRequest(value("admin token")).0 == 200)

        #expect(ControllerTests.eventually(within: 30) { Self.notifications(received).count >= 1 }, "no notification arrived")
        // The paths a canary could take were taken: a failed delivery to the Slack URL was
        // logged, and so were the training's output lines (scrubbed).
        #expect(ControllerTests.eventually(within: 30) {
            controller.logText.contains("notification attempt failed") || controller.logText.contains("notification not delivered")
        }, "no failed delivery logged: \(controller.logText.suffix(3000))")
        #expect(controller.logText.contains("token is [secret]"), "the step's output is not in the log")
        #expect(controller.stop() == 0, "\(controller.logText.suffix(3000))")

        seen.append(("capstan run log", controller.logText))
        for (what, code, text) in answers { seen.append(("HTTP \(what) → \(code)", text)) }
        for body in Self.notifications(received) { seen.append(("notification", body)) }
        for command in [["status"], ["history", "--format", "json"]] {
            _ = try capstan(command, remote: false)
        }

        // What must hold no canary, nor the first characters of one (a secret cut by a line or a
        // quote leaves its start behind).
        var texts = seen
        for file in temp.files(under: URL(fileURLWithPath: t.state)) {
            let data = (try? Data(contentsOf: URL(fileURLWithPath: t.state).appendingPathComponent(file))) ?? Data()
            texts.append(("state file \(file)", String(decoding: data, as: UTF8.self)))
            texts.append(("state file name", file))
        }
        #expect(texts.count > 20)
        for canary in canaries {
            let pieces = [canary.value, String(canary.value.prefix(4))]
            let leaks = texts.filter { entry in pieces.contains { entry.text.contains($0) } }.map(\.what)
            #expect(leaks.isEmpty, "the \(canary.input) canary leaked into: \(leaks)")
        }
    }

    /// The bodies the notification receiver got (its paths hold the canary by design: that is
    /// where notifications go).
    static func notifications(_ file: URL) -> [String] {
        ((try? String(contentsOf: file, encoding: .utf8)) ?? "").split(separator: "\n")
            .compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["body"] as? String }
    }

    static let receiver = """
        import json, sys
        from http.server import BaseHTTPRequestHandler, HTTPServer
        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get('Content-Length', 0)))
                with open(sys.argv[1], 'a') as f:
                    f.write(json.dumps({'path': self.path, 'body': body.decode('utf-8', 'replace')}) + '\\n')
                self.send_response(200); self.end_headers()
            def log_message(self, *a): pass
        s = HTTPServer(('127.0.0.1', 0), H)
        print(s.server_address[1], flush=True)
        s.serve_forever()
        """
}
