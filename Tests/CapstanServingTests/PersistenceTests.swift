import Foundation
import Testing
@testable import CapstanServing
@testable import CapstanTestSupport

/// `<state>/serving/endpoints.json`: saved on every change, brought back at start, never reset.
@Suite struct PersistenceTests {
    @Test func anAgentRestartBringsBackTheSameEndpointsAndWeights() async throws {
        let f = try ServingFixture()
        let spec = EndpointSpec(deployment: "kept", model: "churn", backends: [f.backend(1, weight: 70), f.backend(2, weight: 30)])
        let (firstBoot, firstPIDs) = try await f.withAgent { agent, client in
            try await client.apply(spec)
            try await waitReady(client, "kept")
            return (agent.bootID, f.events.pids())
        }
        for pid in firstPIDs { #expect(isGone(pid)) }
        let saved = try Data(contentsOf: URL(fileURLWithPath: f.stateDir + "/serving/endpoints.json"))
        let text = String(decoding: saved, as: UTF8.self)
        #expect(text.contains("\"formatVersion\" : 1"))
        #expect(try EndpointStore(servingDirectory: f.stateDir + "/serving").load() == [spec])

        try await f.withAgent { agent, client in
            #expect(agent.bootID != firstBoot)
            let back = try #require(try await client.endpoint("kept"))
            #expect(back.spec == spec)
            #expect(back.spec.weights == [1: 70, 2: 30])
            try await waitReady(client, "kept")
            #expect(try await HTTP.post(agent.gatewayURL + "/kept/predict").status == 200)
            #expect(f.events.pids().count == 4, "the processes were started again")
            #expect(back.backends.allSatisfy { $0.stats.requests == 0 }, "counters start over with the new boot id")

            // A DELETE is saved too.
            try await client.remove(deployment: "kept")
        }
        let afterDelete = try await f.withAgent { _, client in try await client.endpoints() }
        #expect(afterDelete.isEmpty)
    }

    @Test(arguments: [
        ("{\"formatVersion\": 1, \"endpoints\": [", "it is not valid JSON"),
        ("{\"formatVersion\": 1}", "endpoints is missing"),
        ("{\"formatVersion\": 1, \"endpoints\": [{\"deployment\": \"x\", \"model\": \"m\", \"backends\": [{\"version\": 1, \"weight\": 50, \"replicas\": 1, \"command\": [\"a\"], \"workdir\": \"/w\", \"modelDir\": \"/m\", \"artifactDigest\": \"sha256:\(String(repeating: "b", count: 64))\"}]}]}",
         "endpoint 'x': the weights add up to 50"),
    ])
    func aDamagedEndpointsFileIsRefusedAndKept(_ content: String, _ detail: String) async throws {
        let f = try ServingFixture()
        let file = f.stateDir + "/serving/endpoints.json"
        try FileManager.default.createDirectory(atPath: f.stateDir + "/serving", withIntermediateDirectories: true)
        try content.write(toFile: file, atomically: true, encoding: .utf8)
        let error = #expect(throws: ServingAgentError.self) { try ServingAgent(configuration: f.configuration()) }
        #expect(error?.message.contains("'\(file)' is damaged") == true, "\(error?.message ?? "")")
        #expect(error?.message.contains(detail) == true, "\(error?.message ?? "")")
        #expect(error?.message.contains("will not start") == true)
        #expect(try String(contentsOfFile: file, encoding: .utf8) == content, "never silently reset")
    }

    @Test func specsAreSavedAtomically() throws {
        let dir = try TempDir()
        let store = EndpointStore(servingDirectory: dir.path)
        #expect(try store.load().isEmpty, "no file: no endpoints")
        let a = EndpointSpec(deployment: "b-second", model: "m", backends: [])
        let b = EndpointSpec(deployment: "a-first", model: "m", backends: [])
        try store.save([a, b])
        #expect(try store.load() == [b, a], "sorted by deployment")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0 != "endpoints.json" }
        #expect(leftovers.isEmpty, "no temporary file left: \(leftovers)")
    }
}
