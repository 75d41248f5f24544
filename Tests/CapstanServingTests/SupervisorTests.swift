import Foundation
import Testing
@testable import CapstanServing
@testable import CapstanTestSupport

/// Model-server processes: readiness, restarts with backoff, refusals, stopping.
@Suite struct SupervisorTests {
    @Test func aServerThatCrashesAtStartIsRestartedWithDoublingBackoff() async throws {
        let f = try ServingFixture()
        try await f.withAgent(environment: ["CAPSTAN_TEST_TOKEN": "hunter2-value"]) { _, client in
            try await client.apply(EndpointSpec(deployment: "crashy", model: "m", backends: [
                f.backend(1, weight: 100, mode: "crash-at-start", secretEnv: ["API_TOKEN": "CAPSTAN_TEST_TOKEN"]),
            ]))
            await eventually("three restarts") { f.events.of(.restarting).count >= 4 }
            let delays = f.events.of(.restarting).prefix(4).compactMap(\.delayMilliseconds)
            #expect(delays == [200, 400, 800, 800], "1st delay, doubling, capped at the maximum")
            let backend = try #require(try await client.endpoint("crashy")?.backend(version: 1))
            #expect(backend.health == .failing)
            #expect(backend.readyReplicas == 0)
            #expect(backend.restarts >= 4)
            let lastError = try #require(backend.lastError)
            #expect(lastError.contains("exited with status 3 before it was ready"), "\(lastError)")
            #expect(lastError.contains("boom: crashing at start; token [secret]"), "the last line of its output: \(lastError)")
            #expect(!lastError.contains("hunter2"), "a secret value never reaches a message")
            #expect(!f.events.all.contains { $0.message.contains("hunter2") })
            #expect(f.events.of(.crashed).count >= 4)
            #expect(f.events.pids().count >= 4, "a new process per attempt")
        }
    }

    @Test func aReadyServerThatCrashesIsRestartedAndServesAgain() async throws {
        let f = try ServingFixture()
        try await f.withAgent { agent, client in
            try await client.apply(EndpointSpec(deployment: "fragile", model: "m", backends: [
                f.backend(1, weight: 100, mode: "crash-after", env: ["CRASH_AFTER": "1"]),
            ]))
            try await waitReady(client, "fragile")
            let first = try await HTTP.post(agent.gatewayURL + "/fragile/predict")
            #expect(first.status == 200)
            await eventually("the crash is seen") { f.events.of(.crashed).count == 1 }
            let crash = try #require(f.events.of(.crashed).first)
            #expect(crash.message.contains("exited with status 1 after"), "\(crash.message)")
            await eventually("a second process is ready") { f.events.of(.ready).count == 2 }
            let status = try #require(try await waitReady(client, "fragile"))
            #expect(status.backends[0].restarts == 1)
            #expect(status.backends[0].health == .ready)
            #expect(status.backends[0].lastError?.contains("crashing after 1 predictions") == true)
            let second = try await HTTP.post(agent.gatewayURL + "/fragile/predict")
            #expect(second.status == 200)
            let pids = f.events.pids()
            #expect(pids.count >= 2)
            #expect(isGone(pids[0]))
        }
    }

    @Test func aServerThatNeverGetsReadyIsKilledAndFailing() async throws {
        let f = try ServingFixture()
        try await f.withAgent { _, client in
            try await client.apply(EndpointSpec(deployment: "stuck", model: "m", backends: [
                f.backend(1, weight: 100, mode: "never-ready", readinessTimeout: 400),
            ]))
            let starting = try #require(try await client.endpoint("stuck")?.backend(version: 1))
            #expect(starting.health == .starting)
            await eventually("the readiness timeout") { f.events.of(.crashed).count >= 1 }
            let backend = try #require(try await client.endpoint("stuck")?.backend(version: 1))
            #expect(backend.health == .failing)
            #expect(backend.restarts >= 1)
            #expect(backend.lastError?.contains("was not ready within 400ms") == true, "\(backend.lastError ?? "nil")")
            let firstPID = try #require(f.events.pids().first)
            await eventually("the never-ready process is killed") { isGone(firstPID) }
        }
    }

    @Test func aChangedArtifactRefusesTheBackendAndStartsNothing() async throws {
        let f = try ServingFixture()
        try await f.withAgent { agent, client in
            try await client.apply(EndpointSpec(deployment: "tampered", model: "m", backends: [
                f.backend(1, weight: 100, digest: "sha256:" + String(repeating: "a", count: 64)),
            ]))
            await eventually("the backend is refused") { f.events.of(.refused).count == 1 }
            let backend = try #require(try await client.endpoint("tampered")?.backend(version: 1))
            #expect(backend.health == .failing)
            #expect(backend.lastError?.contains("does not match sha256:aaaa") == true, "\(backend.lastError ?? "nil")")
            #expect(backend.lastError?.contains(f.digest) == true, "names what the folder hashes to")
            #expect(f.events.of(.started).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: f.stateDir + "/serving/logs/tampered-v1-r0.log"))
            #expect(try await HTTP.post(agent.gatewayURL + "/tampered/predict").status == 503)

            // A missing artifact folder.
            var gone = f.backend(2, weight: 0)
            gone.modelDir = f.dir.path + "/no-such-model"
            try await client.apply(EndpointSpec(deployment: "tampered", model: "m", backends: [f.backend(1, weight: 100, digest: "sha256:" + String(repeating: "a", count: 64)), gone]))
            await eventually("the second backend is refused") { f.events.of(.refused, version: 2).count == 1 }
            let missing = try #require(try await client.endpoint("tampered")?.backend(version: 2))
            #expect(missing.health == .failing)
            #expect(missing.lastError?.contains("no-such-model") == true, "\(missing.lastError ?? "nil")")
            #expect(f.events.of(.started).isEmpty)
        }
    }

    @Test func aMissingSecretVariableRefusesTheBackend() async throws {
        let f = try ServingFixture()
        try await f.withAgent { _, client in
            let status = try await client.put(EndpointSpec(deployment: "secretive", model: "m", backends: [
                f.backend(1, weight: 100, secretEnv: ["API_TOKEN": "CAPSTAN_TEST_SECRET_THAT_IS_NOT_SET"]),
            ]))
            let backend = try #require(status.backend(version: 1))
            #expect(backend.health == .failing)
            let message = try #require(backend.lastError)
            #expect(message.contains("API_TOKEN"))
            #expect(message.contains("CAPSTAN_TEST_SECRET_THAT_IS_NOT_SET"))
            #expect(message.contains("not set in the agent's environment"))
            #expect(f.events.of(.refused).count == 1)
            #expect(f.events.of(.started).isEmpty, "nothing was started")
            #expect(try await client.endpoint("secretive")?.backend(version: 1)?.health == .failing)
        }
    }

    @Test func aSecretTooShortToScrubRefusesTheBackend() async throws {
        let f = try ServingFixture()
        try await f.withAgent(environment: ["CAPSTAN_TEST_SHORT_SECRET": "abc"]) { _, client in
            let status = try await client.put(EndpointSpec(deployment: "shorty", model: "m", backends: [
                f.backend(1, weight: 100, secretEnv: ["API_TOKEN": "CAPSTAN_TEST_SHORT_SECRET"]),
            ]))
            let backend = try #require(status.backend(version: 1))
            #expect(backend.health == .failing)
            let message = try #require(backend.lastError)
            #expect(message.contains("API_TOKEN") && message.contains("CAPSTAN_TEST_SHORT_SECRET"), "\(message)")
            #expect(message.contains("shorter than 4 characters"), "\(message)")
            #expect(!message.contains("abc"), "the value itself is never shown")
            #expect(f.events.of(.started).isEmpty, "nothing was started")
        }
    }

    @Test func backendsAndReplicasLeftOutOfTheSpecAreStopped() async throws {
        let f = try ServingFixture()
        try await f.withAgent { agent, client in
            try await client.apply(EndpointSpec(deployment: "shrink", model: "m", backends: [f.backend(1, weight: 50, replicas: 2), f.backend(2, weight: 50)]))
            try await waitReady(client, "shrink")
            // By replica number (the two start at the same time, in either order).
            let v1 = f.events.of(.started, version: 1).sorted { ($0.replica ?? 0) < ($1.replica ?? 0) }.compactMap(\.pid)
            let v2 = try #require(f.events.pids(version: 2).first)
            #expect(v1.count == 2)

            // v2 leaves; v1 goes down to one replica.
            try await client.apply(EndpointSpec(deployment: "shrink", model: "m", backends: [f.backend(1, weight: 100, replicas: 1)]))
            await eventually("v2 is stopped") { isGone(v2) }
            await eventually("v1's second replica is stopped") { f.events.of(.stopped, version: 1).count == 1 }
            #expect(f.events.of(.stopped, version: 1).first?.replica == 1)
            #expect(isGone(v1[1]))
            #expect(!isGone(v1[0]))
            let status = try #require(try await client.endpoint("shrink"))
            #expect(status.backends.map(\.spec.version) == [1])
            #expect(status.backends[0].readyReplicas == 1)
            for _ in 0..<5 {
                #expect(try await HTTP.post(agent.gatewayURL + "/shrink/predict").headers["X-Capstan-Version"] == ["1"])
            }

            // DELETE: the endpoint and its processes are gone.
            try await client.remove(deployment: "shrink")
            await eventually("v1 is stopped") { isGone(v1[0]) }
            #expect(try await client.endpoint("shrink") == nil)
            #expect(try await HTTP.post(agent.gatewayURL + "/shrink/predict").status == 404)
            let deleted = try await HTTP.send(.DELETE, agent.adminURL + "/v1/endpoints/shrink")
            #expect(deleted.status == 404)
            try await client.remove(deployment: "shrink")  // removing what is gone is not an error
        }
    }

    @Test func aChangedCommandReplacesTheProcessesWithoutAnOutage() async throws {
        let f = try ServingFixture()
        try await f.withAgent { agent, client in
            var spec = EndpointSpec(deployment: "swap", model: "m", backends: [f.backend(1, weight: 100)])
            try await client.apply(spec)
            try await waitReady(client, "swap")
            let old = try #require(f.events.pids().first)
            spec.backends[0].env = ["NEW": "1"]
            try await client.apply(spec)
            // The old process serves until the new one is ready.
            #expect(try await HTTP.post(agent.gatewayURL + "/swap/predict").status == 200)
            await eventually("the old process is stopped") { isGone(old) }
            let env = try await HTTP.get(agent.gatewayURL + "/swap/env").json ?? [:]
            #expect(env["NEW"] as? String == "1")
            #expect(f.events.pids().count == 2)
        }
    }

    @Test func aRequestStuckInAModelServerDoesNotHoldTheStopForever() async throws {
        let f = try ServingFixture()
        let clock = ContinuousClock()
        var stopping: ContinuousClock.Instant?
        let pids = try await f.withAgent { agent, client in
            try await client.apply(EndpointSpec(deployment: "hung", model: "m", backends: [f.backend(1, weight: 100, mode: "hang")]))
            try await waitReady(client, "hung")
            let log = f.stateDir + "/serving/logs/hung-v1-r0.log"
            let url = agent.gatewayURL + "/hung/predict"
            // Left running on purpose: it is still in the model server when the agent stops.
            Task { _ = try? await HTTP.post(url) }
            await eventually("the request is in the model server") {
                ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("hanging")
            }
            stopping = clock.now
            return f.events.pids()
        }
        let took = clock.now - stopping!
        #expect(took < .seconds(30), "stopped after \(took) (1 s for the gateway, then the processes), not after the 5-minute upstream timeout")
        for pid in pids { #expect(isGone(pid)) }
    }

    @Test func shuttingTheAgentDownStopsEveryModelServer() async throws {
        let f = try ServingFixture()
        let pids = try await f.withAgent { _, client in
            try await client.apply(EndpointSpec(deployment: "a", model: "m", backends: [f.backend(1, weight: 100, replicas: 2)]))
            try await client.apply(EndpointSpec(deployment: "b", model: "m", backends: [f.backend(3, weight: 100, mode: "never-ready")]))
            try await waitReady(client, "a")
            await eventually("b started") { !f.events.pids(version: 3).isEmpty }
            return f.events.pids()
        }
        #expect(pids.count >= 3)
        for pid in pids { #expect(isGone(pid), "pid \(pid) still runs after the agent stopped") }
        #expect(f.events.of(.stopped).count >= 3)
    }
}
