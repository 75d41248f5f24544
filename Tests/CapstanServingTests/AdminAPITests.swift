import Foundation
import NIOHTTP1
import Testing
@testable import CapstanServing
@testable import CapstanTestSupport

/// A spec body that passes validation (its paths need not exist: nothing here waits for a process).
private func body(_ deployment: String = "d", _ backends: String? = nil) -> String {
    let digest = "sha256:" + String(repeating: "a", count: 64)
    let backends = backends ?? #"[{"version":1,"weight":100,"replicas":1,"command":["python3","serve.py"],"workdir":"/srv/w","modelDir":"/srv/m","artifactDigest":"\#(digest)"}]"#
    return #"{"deployment":"\#(deployment)","model":"m","backends":\#(backends)}"#
}

private func backend(version: Int = 1, weight: Int = 100, replicas: Int = 1, command: String = #"["python3","serve.py"]"#,
                     workdir: String = "/srv/w", modelDir: String = "/srv/m", digest: String = "sha256:" + String(repeating: "a", count: 64),
                     extra: String = "") -> String {
    #"{"version":\#(version),"weight":\#(weight),"replicas":\#(replicas),"command":\#(command),"workdir":"\#(workdir)","modelDir":"\#(modelDir)","artifactDigest":"\#(digest)"\#(extra)}"#
}

struct InvalidSpecCase: Sendable, CustomStringConvertible {
    var name: String
    var path: String = "d"
    var body: String
    var expected: String
    var description: String { name }
}

let invalidSpecCases: [InvalidSpecCase] = [
    .init(name: "path mismatch", path: "other", body: body(), expected: "deployment is 'd' but the path names 'other'"),
    .init(name: "not a DNS label", path: "Churn_Prod", body: body("Churn_Prod"), expected: "deployment 'Churn_Prod' is not a DNS label: it contains uppercase letters"),
    .init(name: "duplicate versions", body: body("d", "[\(backend(weight: 50)),\(backend(weight: 50))]"), expected: "version 1 appears more than once in backends"),
    .init(name: "weight above 100", body: body("d", "[\(backend(weight: 120))]"), expected: "backends[0] (version 1): weight is 120; it must be between 0 and 100"),
    .init(name: "weights not 100", body: body("d", "[\(backend(weight: 60)),\(backend(version: 2, weight: 30))]"), expected: "the weights add up to 90; they must add up to 100 (or all be 0)"),
    .init(name: "negative replicas", body: body("d", "[\(backend(replicas: -1))]"), expected: "replicas is -1; it must be 0 or more"),
    .init(name: "relative workdir", body: body("d", "[\(backend(workdir: "models/churn"))]"), expected: "workdir 'models/churn' is not an absolute path"),
    .init(name: "relative modelDir", body: body("d", "[\(backend(modelDir: "model"))]"), expected: "modelDir 'model' is not an absolute path"),
    .init(name: "empty command", body: body("d", "[\(backend(command: "[]"))]"), expected: "command is empty"),
    .init(name: "bad digest", body: body("d", "[\(backend(digest: "md5:abc"))]"), expected: "artifactDigest 'md5:abc' is not sha256: followed by 64 hex digits"),
    .init(name: "reserved variable", body: body("d", "[\(backend(extra: #","env":{"PORT":"1"}"#))]"), expected: "env may not set PORT; the agent sets it"),
    .init(name: "not JSON", body: "{deployment", expected: "the body is not an endpoint spec: it is not valid JSON"),
    .init(name: "missing field", body: #"{"deployment":"d","model":"m","backends":[{"version":1,"weight":100,"replicas":1,"command":["x"],"modelDir":"/m","artifactDigest":"x"}]}"#,
          expected: "the body is not an endpoint spec: backends[0].workdir is missing"),
    .init(name: "wrong type", body: #"{"deployment":"d","model":"m","backends":[{"version":1,"weight":"all","replicas":1}]}"#,
          expected: "the body is not an endpoint spec: backends[0].weight must be an integer"),
]

@Suite struct AdminAPITests {
    @Test(arguments: invalidSpecCases)
    func invalidSpecsAreRefusedWith400AndAMessage(_ c: InvalidSpecCase) async throws {
        let f = try ServingFixture()
        try await f.withAgent { agent, client in
            let answer = try await HTTP.send(.PUT, agent.adminURL + "/v1/endpoints/" + c.path, body: c.body)
            #expect(answer.status == 400)
            let message = try #require(answer.error, "JSON error body: \(answer.body)")
            #expect(message.contains(c.expected), "\(message)")
            #expect(try await client.endpoints().isEmpty, "nothing applied")
            #expect(!FileManager.default.fileExists(atPath: f.stateDir + "/serving/endpoints.json"))
        }
    }

    @Test func theRoutesAnswerAsDocumented() async throws {
        let f = try ServingFixture()
        try await f.withAgent { agent, client in
            let health = try await HTTP.get(agent.adminURL + "/healthz")
            #expect(health.status == 200)
            #expect(health.body == "ok\n")

            let empty = try await HTTP.get(agent.adminURL + "/v1/endpoints")
            #expect(empty.status == 200)
            let list = try JSONDecoder().decode(AgentEndpointList.self, from: Data(empty.body.utf8))
            #expect(list.endpoints.isEmpty)
            #expect(list.bootID.count == 32)
            #expect(ISO8601DateFormatter().date(from: list.startedAt) != nil, "RFC 3339: \(list.startedAt)")
            #expect(list.bootID == agent.bootID)

            // Optional fields take their defaults; the keys are sorted.
            let put = try await HTTP.send(.PUT, agent.adminURL + "/v1/endpoints/d", body: body())
            #expect(put.status == 200)
            let status = try JSONDecoder().decode(EndpointStatus.self, from: Data(put.body.utf8))
            #expect(status.backends[0].spec.readinessPath == "/healthz")
            #expect(status.backends[0].spec.readinessTimeoutMilliseconds == 60_000)
            #expect(status.backends[0].spec.env.isEmpty)
            #expect(put.body.range(of: "\"backends\"")!.lowerBound < put.body.range(of: "\"bootID\"")!.lowerBound)
            let one = try await HTTP.get(agent.adminURL + "/v1/endpoints/d")
            #expect(one.status == 200)
            #expect(try JSONDecoder().decode(EndpointStatus.self, from: Data(one.body.utf8)).spec == status.spec)
            #expect(try await client.endpoints().map(\.deployment) == ["d"])

            #expect(try await HTTP.get(agent.adminURL + "/v1/endpoints/other").status == 404)
            #expect(try await HTTP.get(agent.adminURL + "/v1/endpoints/other").error == "unknown deployment other")
            #expect(try await HTTP.get(agent.adminURL + "/v2/things").status == 404)
            let post = try await HTTP.send(.POST, agent.adminURL + "/v1/endpoints", body: body())
            #expect(post.status == 405)
            #expect(post.headers["Allow"] == ["GET"])

            let huge = String(repeating: " ", count: (1 << 20) + 10)
            let tooLarge = try await HTTP.send(.PUT, agent.adminURL + "/v1/endpoints/d", body: huge)
            #expect(tooLarge.status == 413)
            #expect(tooLarge.error?.contains("1 MiB") == true)

            let deleted = try await HTTP.send(.DELETE, agent.adminURL + "/v1/endpoints/d")
            #expect(deleted.status == 204)
            #expect(deleted.body.isEmpty)
            #expect(try await client.endpoints().isEmpty)
        }
    }

    @Test func aBearerTokenGuardsEveryRouteButHealthz() async throws {
        let f = try ServingFixture()
        try await f.withAgent(token: "t0ken-value") { agent, client in
            #expect(try await HTTP.get(agent.adminURL + "/healthz").status == 200)
            let without = try await HTTP.get(agent.adminURL + "/v1/endpoints")
            #expect(without.status == 401)
            #expect(without.headers["WWW-Authenticate"] == ["Bearer"])
            #expect(without.error?.contains("needs a bearer token") == true)
            let wrong = try await HTTP.get(agent.adminURL + "/v1/endpoints", headers: [("Authorization", "Bearer t0ken-valuf")])
            #expect(wrong.status == 401)
            let short = try await HTTP.get(agent.adminURL + "/v1/endpoints", headers: [("Authorization", "Bearer t0ken")])
            #expect(short.status == 401)
            let put = try await HTTP.send(.PUT, agent.adminURL + "/v1/endpoints/d", body: body())
            #expect(put.status == 401)
            let right = try await HTTP.get(agent.adminURL + "/v1/endpoints", headers: [("Authorization", "Bearer t0ken-value")])
            #expect(right.status == 200)
            #expect(try await client.endpoints().isEmpty, "AgentClient sends the token")

            try await AgentClient.with(adminURL: agent.adminURL) { anonymous in
                let error = await #expect(throws: ServingError.self) { try await anonymous.endpoints() }
                #expect(error?.kind == .rejected)
                #expect(error?.message.contains("needs a bearer token") == true)
            }
        }
    }

    @Test func withoutATokenOnlyLoopbackHostsAreAnswered() async throws {
        let f = try ServingFixture()
        try await f.withAgent { (agent: RunningAgent, client: AgentClient) async throws in
            let port = agent.adminPort
            func get(_ path: String, _ hostLines: String, version: String = "HTTP/1.1") async -> RawSocket.Exchange {
                await RawSocket.exchange(port: port, "GET \(path) \(version)\r\n\(hostLines)Connection: close\r\n\r\n")
            }
            for host in ["127.0.0.1:\(port)", "127.0.0.1", "localhost:\(port)", "LOCALHOST", "[::1]:\(port)", "[::1]", "127.8.9.10:\(port)"] {
                let answer = await get("/v1/endpoints", "Host: \(host)\r\n")
                #expect(answer.status == 200, "Host \(host): \(answer.text)")
            }
            for host in ["rebound.example:\(port)", "rebound.example", "127.0.0.1.nip.io:\(port)", "localhost.example.com", "0.0.0.0:\(port)",
                         "192.0.2.1", "[::ffff:192.0.2.1]", "127.0.0.1:http", "", String(repeating: "h", count: 4000)] {
                let answer = await get("/v1/endpoints", "Host: \(host)\r\n")
                #expect(answer.status == 403, "Host \(host.prefix(40)): \(answer.text.prefix(300))")
                #expect(answer.headers["content-type"] == ["application/json"])
                let message = (try? JSONSerialization.jsonObject(with: Data(answer.body.utf8)) as? [String: String])?["error"] ?? ""
                #expect(message.contains("Use http://127.0.0.1:<port>, or start the agent with --admin-token-env"), "\(answer.body.prefix(300))")
                #expect(answer.body.utf8.count < 1000, "the Host is not echoed whole")
            }
            // The write routes too, and a second Host or none.
            let put = await RawSocket.exchange(port: port, "PUT /v1/endpoints/d HTTP/1.1\r\nHost: rebound.example\r\nContent-Length: \(body().utf8.count)\r\nConnection: close\r\n\r\n\(body())")
            #expect(put.status == 403, "\(put.text)")
            let twice = await get("/v1/endpoints", "Host: 127.0.0.1\r\nHost: rebound.example\r\n")
            #expect(twice.status == 403 || twice.status == 400, "\(twice.text)")
            let none = await get("/v1/endpoints", "", version: "HTTP/1.0")
            #expect(none.status == 403, "\(none.text)")
            // /healthz says nothing worth protecting.
            #expect(await get("/healthz", "Host: rebound.example\r\n").status == 200)
            #expect(try await client.endpoints().isEmpty, "AgentClient sends Host: 127.0.0.1:PORT")
        }
        // With a token, the token decides, whatever the Host.
        try await f.withAgent(token: "t0ken-value") { agent, _ in
            let answer = await RawSocket.exchange(port: agent.adminPort,
                "GET /v1/endpoints HTTP/1.1\r\nHost: agent.example:7070\r\nAuthorization: Bearer t0ken-value\r\nConnection: close\r\n\r\n")
            #expect(answer.status == 200, "\(answer.text)")
        }
    }

    @Test func connectIsAComplete405AndTheConnectionCloses() async throws {
        let f = try ServingFixture()
        try await f.withAgent { agent, _ in
            let answer = await RawSocket.exchange(port: agent.adminPort, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                                                  more: "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            #expect(answer.closed, "the connection was left open: \(answer.text)")
            #expect(answer.status == 405, "\(answer.text)")
            #expect(answer.headers["allow"] == ["GET, HEAD, PUT, DELETE"])
            #expect(answer.headers["connection"] == ["close"])
            #expect(answer.headers["content-length"] == ["\(answer.body.utf8.count)"], "\(answer.text)")
            #expect(answer.body.contains("the admin API makes no tunnels"), "\(answer.text)")
        }
    }

    @Test func aBodyHeldBackFor100ContinueIsAskedForAtOnce() async throws {
        // Refused before its body is read (403: not a loopback Host), the request must not leave
        // its body to be taken for the next request: the client gets 100 Continue first, sends
        // it, and the next request on the connection is answered as itself.
        let f = try ServingFixture()
        try await f.withAgent { agent, _ in
            let answer = await RawSocket.exchange(
                port: agent.adminPort,
                "PUT /v1/endpoints/d HTTP/1.1\r\nHost: rebound.example\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
                more: "hello" + "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            #expect(answer.text.hasPrefix("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 "), "\(answer.text)")
            #expect(answer.text.contains("\r\n\r\nok\n"), "the next request was answered: \(answer.text)")
            #expect(!answer.text.contains("400 Bad Request"), "\(answer.text)")
            #expect(answer.closed)
        }
    }

    @Test func http10ConnectionsCloseUnlessKeptAlive() async throws {
        let f = try ServingFixture()
        try await f.withAgent { agent, _ in
            let closing = await RawSocket.exchange(port: agent.adminPort, "GET /healthz HTTP/1.0\r\n\r\n")
            #expect(closing.closed, "\(closing.text)")
            #expect(closing.status == 200 && closing.body == "ok\n", "\(closing.text)")
            let kept = await RawSocket.exchange(port: agent.adminPort, "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                                                more: "GET /healthz HTTP/1.0\r\n\r\n")
            #expect(kept.text.components(separatedBy: "ok\n").count == 3, "two answers on one connection: \(kept.text)")
            #expect(kept.closed)
        }
    }

    @Test func anAgentOffLoopbackWithoutATokenDoesNotStart() throws {
        var configuration = ServingAgentConfiguration(stateDirectory: try ServingFixture().stateDir)
        configuration.admin = ListenAddress(host: "0.0.0.0", port: 0)
        let error = #expect(throws: ServingAgentError.self) { try ServingAgent(configuration: configuration) }
        #expect(error?.message.contains("--admin 0.0.0.0:0 is not a loopback address") == true, "\(String(describing: error))")
        configuration.adminToken = "t"
        #expect(throws: Never.self) { try ServingAgent(configuration: configuration) }
    }

    @Test func agentClientReportsRefusalsWithTheAgentsMessage() async throws {
        let f = try ServingFixture()
        try await f.withAgent { _, client in
            var spec = EndpointSpec(deployment: "bad", model: "m", backends: [f.backend(1, weight: 100)])
            spec.backends[0].weight = 40
            let error = await #expect(throws: ServingError.self) { try await client.apply(spec) }
            #expect(error?.kind == .rejected)
            #expect(error?.message.contains("refused the request (HTTP 400)") == true)
            #expect(error?.message.contains("the weights add up to 40") == true, "\(error?.message ?? "")")
        }
    }
}

@Suite struct AgentClientTests {
    @Test func nothingListeningIsUnavailableWithAHint() async throws {
        let port = try Ports.free()
        try await AgentClient.with(adminURL: "http://127.0.0.1:\(port)") { client in
            let error = await #expect(throws: ServingError.self) { try await client.endpoints() }
            #expect(error?.kind == .unavailable)
            #expect(error?.message == "the serving agent at http://127.0.0.1:\(port) cannot be reached (connection refused); "
                + "start it with `capstan serve` or fix spec.serving.local.admin")
            let applyError = await #expect(throws: ServingError.self) {
                try await client.apply(EndpointSpec(deployment: "d", model: "m", backends: []))
            }
            #expect(applyError?.kind == .unavailable)
            let removeError = await #expect(throws: ServingError.self) { try await client.remove(deployment: "d") }
            #expect(removeError?.kind == .unavailable)
        }
    }

    @Test func anAgentThatNeverAnswersIsUnavailableAfterTheTimeout() async throws {
        let silent = try PythonServer(script: PythonServer.silent)
        defer { silent.stop() }
        let client = AgentClient(adminURL: "http://127.0.0.1:\(silent.port)/", timeout: .milliseconds(300))
        let error = await #expect(throws: ServingError.self) { try await client.endpoints() }
        #expect(error?.kind == .unavailable)
        #expect(error?.message.contains("cannot be reached (no answer within 300ms)") == true, "\(error?.message ?? "")")
        #expect(client.adminURL == "http://127.0.0.1:\(silent.port)")
        try await client.shutdown()
        try await client.shutdown()  // twice is harmless
    }

    @Test func aClientDroppedWithoutShutdownDoesNotCrash() async throws {
        let port = try Ports.free()
        var answered: [EndpointStatus]?
        do {
            let client = AgentClient(adminURL: "http://127.0.0.1:\(port)")
            answered = try? await client.endpoints()
        }
        // Getting here at all is most of the test: HTTPClient's deinit check did not fire.
        #expect(answered == nil)
    }
}
