import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Testing
@testable import CapstanServing
@testable import CapstanTestSupport

/// The gateway, against real model servers started by a real agent on 127.0.0.1.
@Suite struct GatewayTests {
    @Test func routesToAReadyReplicaWithPathQueryHeadersAndEnvironment() async throws {
        let f = try ServingFixture()
        let spec = EndpointSpec(deployment: "churn-prod", model: "churn", backends: [
            f.backend(1, weight: 100, replicas: 2, env: ["GREETING": "hello"], secretEnv: ["API_TOKEN": "CAPSTAN_TEST_SECRET"]),
        ])
        try await f.withAgent(environment: ["CAPSTAN_TEST_SECRET": "s3cret", "CAPSTAN_TEST_NOT_PASSED": "x"]) { agent, client in
            let applied = try await client.put(spec)
            #expect(applied.backends.map(\.spec) == spec.backends)
            #expect(applied.bootID == (try await client.list()).bootID)
            try await waitReady(client, "churn-prod")

            let predicted = try await HTTP.post(agent.gatewayURL + "/churn-prod/predict", #"{"x": 1}"#)
            #expect(predicted.status == 200)
            #expect(predicted.json?["version"] as? Int == 1)
            #expect(predicted.json?["echo"] as? String == #"{"x": 1}"#)
            #expect(predicted.headers["X-Capstan-Version"] == ["1"])

            let echoed = try await HTTP.get(agent.gatewayURL + "/churn-prod/echo/a%20b?q=1&r=two",
                                            headers: [("X-Request-Tag", "abc"), ("Connection", "keep-alive, X-Drop-Me"), ("X-Drop-Me", "1")])
            #expect(echoed.status == 200)
            #expect(echoed.json?["path"] as? String == "/echo/a%20b?q=1&r=two")
            let headers = echoed.json?["headers"] as? [String: String] ?? [:]
            #expect(headers["x-request-tag"] == "abc")
            #expect(headers["x-drop-me"] == nil, "a header named in Connection is hop-by-hop")
            #expect(headers["host"]?.hasPrefix("127.0.0.1:") == true)

            let env = try await HTTP.get(agent.gatewayURL + "/churn-prod/env").json ?? [:]
            #expect(env["GREETING"] as? String == "hello")
            #expect(env["API_TOKEN"] as? String == "s3cret")
            #expect(env["CAPSTAN_MODEL_DIR"] as? String == f.modelDir)
            #expect(env["CAPSTAN_DEPLOYMENT"] as? String == "churn-prod")
            #expect(env["CAPSTAN_VERSION"] as? String == "1")
            #expect((env["PORT"] as? String).flatMap(Int.init) != nil)
            #expect(env["PATH"] != nil)
            #expect(env["CAPSTAN_TEST_NOT_PASSED"] == nil, "only PATH/HOME/LANG/LC_ALL/TMPDIR/USER come from the agent")
            #expect(env["CAPSTAN_TEST_SECRET"] == nil)

            // Both replicas serve (round robin), on different ports.
            var ports: Set<String> = []
            for _ in 0..<6 {
                if let port = (try await HTTP.get(agent.gatewayURL + "/churn-prod/env").json?["PORT"] as? String) { ports.insert(port) }
            }
            #expect(ports.count == 2)

            let status = try #require(try await client.endpoint("churn-prod"))
            let stats = try #require(status.backend(version: 1)?.stats)
            #expect(stats.requests == 9)
            #expect(stats.errors5xx == 0)
            #expect(stats.connectionErrors == 0)
            #expect(stats.latency.total == 9, "one latency per request")
            #expect(stats.latency.quantile(0.5) != nil)
            #expect(FileManager.default.fileExists(atPath: f.stateDir + "/serving/logs/churn-prod-v1-r0.log"))
            #expect(FileManager.default.fileExists(atPath: f.stateDir + "/serving/logs/churn-prod-v1-r1.log"))
        }
    }

    @Test func weightedSplitFollowsTheWeightsAndTheirChanges() async throws {
        let f = try ServingFixture()
        var spec = EndpointSpec(deployment: "split", model: "m", backends: [f.backend(1, weight: 90), f.backend(2, weight: 10)])
        try await f.withAgent { agent, client in
            try await client.apply(spec)
            try await waitReady(client, "split")
            let url = agent.gatewayURL + "/split/predict"

            func versions(_ n: Int) async throws -> [Int: Int] {
                try await withThrowingTaskGroup(of: [Int: Int].self) { group in
                    for worker in 0..<8 {
                        group.addTask {
                            var counts: [Int: Int] = [:]
                            for _ in stride(from: worker, to: n, by: 8) {
                                let answer = try await HTTP.post(url)
                                counts[Int(answer.headers["X-Capstan-Version"].first ?? "") ?? -1, default: 0] += 1
                            }
                            return counts
                        }
                    }
                    return try await group.reduce(into: [:]) { total, part in total.merge(part, uniquingKeysWith: +) }
                }
            }

            let first = try await versions(1000)
            #expect(first.values.reduce(0, +) == 1000)
            #expect((50...150).contains(first[2] ?? 0), "canary share \(first[2] ?? 0)/1000 at 90/10")

            spec.backends[0].weight = 50
            spec.backends[1].weight = 50
            try await client.apply(spec)
            let second = try await versions(200)
            #expect((80...120).contains(second[2] ?? 0), "canary share \(second[2] ?? 0)/200 at 50/50")

            spec.backends[0].weight = 100
            spec.backends[1].weight = 0
            try await client.apply(spec)
            let third = try await versions(50)
            #expect(third[2] == nil, "a backend with weight 0 gets no traffic: \(third)")

            let status = try #require(try await client.endpoint("split"))
            #expect(status.backend(version: 1)?.stats.requests == Int64(first[1, default: 0] + second[1, default: 0] + 50))
            #expect(status.backend(version: 2)?.stats.requests == Int64(first[2, default: 0] + second[2, default: 0]))
            #expect(status.backend(version: 2)?.readyReplicas == 1, "weight 0 keeps the processes")
        }
    }

    @Test func serverErrorsAndConnectionErrorsAreCountedPerBackend() async throws {
        let f = try ServingFixture()
        let spec = EndpointSpec(deployment: "faulty", model: "m", backends: [
            f.backend(1, weight: 50, mode: "erroring"), f.backend(2, weight: 50, mode: "hangup"),
        ])
        try await f.withAgent { agent, client in
            try await client.apply(spec)
            try await waitReady(client, "faulty")
            var statuses: [Int: [Int]] = [:]
            for _ in 0..<20 {
                let answer = try await HTTP.post(agent.gatewayURL + "/faulty/predict")
                statuses[Int(answer.headers["X-Capstan-Version"].first ?? "") ?? -1, default: []].append(answer.status)
                if answer.status == 502 {
                    #expect(answer.error?.contains("the model server of faulty v2") == true, "\(answer.body)")
                }
            }
            #expect(Set(statuses[1] ?? []) == [500])
            #expect(Set(statuses[2] ?? []) == [502])
            let status = try #require(try await client.endpoint("faulty"))
            let erroring = try #require(status.backend(version: 1)?.stats)
            let hangup = try #require(status.backend(version: 2)?.stats)
            #expect(erroring.requests == Int64(statuses[1]?.count ?? 0))
            #expect(erroring.errors5xx == erroring.requests)
            #expect(erroring.connectionErrors == 0)
            #expect(erroring.latency.total == erroring.requests)
            #expect(hangup.requests == Int64(statuses[2]?.count ?? 0))
            #expect(hangup.connectionErrors == hangup.requests)
            #expect(hangup.errors5xx == 0)
            #expect(hangup.failures == hangup.requests)
        }
    }

    @Test func unknownDeploymentIs404AndNothingReadyIs503() async throws {
        let f = try ServingFixture()
        try await f.withAgent { agent, client in
            let unknown = try await HTTP.post(agent.gatewayURL + "/nope/predict")
            #expect(unknown.status == 404)
            #expect(unknown.error == "unknown deployment nope")
            let root = try await HTTP.get(agent.gatewayURL + "/")
            #expect(root.status == 404)

            // All weights 0: the endpoint exists but nothing may serve.
            try await client.apply(EndpointSpec(deployment: "paused", model: "m", backends: [f.backend(1, weight: 0)]))
            try await waitReady(client, "paused")
            let paused = try await HTTP.post(agent.gatewayURL + "/paused/predict")
            #expect(paused.status == 503)
            #expect(paused.error == "no ready backend for deployment paused")
            #expect(paused.headers["Content-Type"] == ["application/json"])

            // Weight without a ready replica.
            try await client.apply(EndpointSpec(deployment: "stuck", model: "m", backends: [f.backend(1, weight: 100, mode: "never-ready")]))
            let stuck = try await HTTP.post(agent.gatewayURL + "/stuck/predict")
            #expect(stuck.status == 503)
            #expect(stuck.error == "no ready backend for deployment stuck")
        }
    }

    @Test func slowRequestsFillTheHistogramAndADrainedBackendFinishesThem() async throws {
        let f = try ServingFixture()
        try await f.withAgent { agent, client in
            try await client.apply(EndpointSpec(deployment: "slow", model: "m", backends: [f.backend(1, weight: 0), f.backend(2, weight: 100, mode: "slow")]))
            try await waitReady(client, "slow")
            let v2 = try #require(f.events.pids(version: 2).first)
            // A request in flight to v2 while v2 is removed: it is answered before v2 stops.
            async let inFlight = HTTP.post(agent.gatewayURL + "/slow/predict")
            let log = f.stateDir + "/serving/logs/slow-v2-r0.log"
            await eventually("the request reached v2") {
                ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("slow prediction started")
            }
            try await client.apply(EndpointSpec(deployment: "slow", model: "m", backends: [f.backend(1, weight: 100)]))
            let answer = try await inFlight
            #expect(answer.status == 200)
            #expect(answer.json?["version"] as? Int == 2)
            await eventually("v2's process is stopped") { isGone(v2) }
            let after = try await HTTP.post(agent.gatewayURL + "/slow/predict")
            #expect(after.headers["X-Capstan-Version"] == ["1"])
            await eventually("v2's stop is reported") { f.events.of(.stopped, version: 2).count == 1 }
        }
    }

    @Test func bodiesOfAnySizeStreamBothWays() async throws {
        let f = try ServingFixture()
        try await f.withAgent { agent, client in
            try await client.apply(EndpointSpec(deployment: "bodies", model: "m", backends: [f.backend(1, weight: 100)]))
            try await waitReady(client, "bodies")
            let url = agent.gatewayURL + "/bodies"
            func checksum(_ bytes: [UInt8]) -> Int { bytes.reduce(0) { ($0 + Int($1)) % 1_000_003 } }

            // Small, large (streamed), and chunked uploads, several at once.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<24 {
                    group.addTask {
                        let size = [10, 70_000, 300_000][i % 3]
                        let bytes = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ i) }
                        var request = HTTPClientRequest(url: url + "/size")
                        request.method = .POST
                        if i % 4 == 3 {
                            request.body = .stream(AsyncStreamOfChunks(bytes: bytes), length: .unknown)
                        } else {
                            request.body = .bytes(ByteBuffer(bytes: bytes))
                        }
                        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
                        let answer = try await response.body.collect(upTo: 1 << 20)
                        let json = try JSONSerialization.jsonObject(with: Data(buffer: answer)) as? [String: Any] ?? [:]
                        #expect(response.status == .ok)
                        #expect(json["size"] as? Int == size)
                        #expect(json["sum"] as? Int == checksum(bytes))
                        #expect(json["chunked"] as? Bool == (i % 4 == 3))
                    }
                }
                try await group.waitForAll()
            }

            let big = try await HTTP.get(url + "/big?n=500000")
            #expect(big.status == 200)
            #expect(big.body.utf8.count == 500_000)
            #expect(big.headers["Content-Length"] == ["500000"])
            #expect(big.body.hasPrefix("AAAA") && big.body.hasSuffix("HHHH"))

            let chunked = try await HTTP.get(url + "/chunked")
            #expect(chunked.status == 200)
            #expect(chunked.body == "first,second,third")
            #expect(chunked.headers["X-Capstan-Version"] == ["1"])

            let stats = try #require(try await client.endpoint("bodies")?.backend(version: 1)?.stats)
            #expect(stats.requests == 26)
            #expect(stats.failures == 0)
        }
    }

    @Test func latencyHistogramRecordsTheModelServersTime() async throws {
        let f = try ServingFixture()
        try await f.withAgent { agent, client in
            try await client.apply(EndpointSpec(deployment: "slow", model: "m", backends: [f.backend(1, weight: 100, mode: "slow")]))
            try await waitReady(client, "slow")
            for _ in 0..<3 { _ = try await HTTP.post(agent.gatewayURL + "/slow/predict") }
            let stats = try #require(try await client.endpoint("slow")?.backend(version: 1)?.stats)
            #expect(stats.latency.total == 3)
            let p50 = try #require(stats.latency.quantile(0.5))
            #expect(p50 >= 300, "the server sleeps 300 ms; p50 bucket bound \(p50)")
        }
    }
}

/// Bytes handed out in 8 KiB pieces, for an upload of unknown length (chunked).
struct AsyncStreamOfChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let bytes: [UInt8]

    struct AsyncIterator: AsyncIteratorProtocol {
        let bytes: [UInt8]
        var offset = 0

        mutating func next() async throws -> ByteBuffer? {
            guard offset < bytes.count else { return nil }
            let end = Swift.min(offset + 8192, bytes.count)
            defer { offset = end }
            return ByteBuffer(bytes: bytes[offset..<end])
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(bytes: bytes) }
}
