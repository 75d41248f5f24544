import CapstanMLflow
import Foundation
import Testing
@testable import CapstanTestSupport

/// Registered models, model versions and aliases against a real `mlflow server`.
@Suite(.timeLimit(.minutes(5)))
struct MLflowRegistryTests {
    /// A run with a file uploaded under `model/`, as a training leaves it.
    private func trainedRun(_ client: MLflowClient, fingerprint: String) async throws -> (MLflowRun, MLflowArtifactLocation) {
        let experiment = try await client.ensureExperiment(named: "capstan/registry-tests")
        let run = try await client.createRun(experimentID: experiment.id, startTime: 1_700_000_000_000,
                                             tags: [MLflowTag(key: "capstan.fingerprint", value: fingerprint)])
        let temp = try TempDir()
        try writeFiles(["model.bin": bytes(100, seed: 3)], into: temp.url)
        let model = try MLflowArtifactLocation(artifactURI: run.info.artifactURI).appending("model")
        try await client.uploadArtifacts(from: temp.path, to: model)
        return (run, model)
    }

    @Test func aVersionFromARunsArtifactsWithTagsDescriptionAndAliases() async throws {
        let server = try await MLflowServer.shared()
        let name = unique("churn")
        try await withClient(server) { client in
            #expect(try await client.registeredModel(named: name) == nil)
            let model = try await client.createRegisteredModel(name: name, description: "churn in 30 days",
                                                               tags: [MLflowTag(key: "capstan.managed", value: "true")])
            #expect(model.name == name)
            #expect(model.aliases.isEmpty)
            let duplicate = await mlflowError { try await client.createRegisteredModel(name: name) }
            #expect(duplicate?.kind == .alreadyExists)
            #expect(try await client.ensureRegisteredModel(name: name).description == "churn in 30 days")
            try await client.setRegisteredModelTag(name: name, key: "team", value: "growth")
            try await client.deleteRegisteredModelTag(name: name, key: "capstan.managed")
            #expect(try await client.registeredModel(named: name)?.tags.dictionary == ["team": "growth"])

            let fingerprint = unique("fp")
            let (run, location) = try await trainedRun(client, fingerprint: fingerprint)
            let created = try await client.createModelVersion(name: name, source: location.uri, runID: run.info.runID,
                                                              tags: [MLflowTag(key: "capstan.fingerprint", value: fingerprint)],
                                                              description: "trained")
            #expect(created.version == 1)
            #expect(created.source == location.uri)
            #expect(created.runID == run.info.runID)
            #expect(created.status == .ready)

            // Already READY: no request to wait.
            let count = client.requestCount
            #expect(try await client.waitUntilReady(created, timeout: .seconds(5)).version == 1)
            #expect(client.requestCount == count)

            try await client.setModelVersionTag(name: name, version: 1, key: "capstan.gates", value: "passed")
            try await client.setModelVersionTag(name: name, version: 1, key: "capstan.gates", value: "rejected")
            try await client.setModelVersionTag(name: name, version: 1, key: "scratch", value: "x")
            try await client.deleteModelVersionTag(name: name, version: 1, key: "scratch")
            try await client.deleteModelVersionTag(name: name, version: 1, key: "never-set")
            let updated = try await client.updateModelVersion(name: name, version: 1, description: "gates: accuracy 0.93 >= 0.9")
            #expect(updated.description == "gates: accuracy 0.93 >= 0.9")
            let read = try #require(try await client.modelVersion(name: name, version: 1))
            #expect(read.tags.dictionary == ["capstan.fingerprint": fingerprint, "capstan.gates": "rejected"])
            #expect(try await client.modelVersion(name: name, version: 99) == nil)
            #expect(try await client.modelVersion(name: unique("no-such-model"), version: 1) == nil)

            let byFingerprint = try await client.searchModelVersions(filter: MLflowFilter.all([
                try MLflowFilter.name(equals: name), try MLflowFilter.tag("capstan.fingerprint", equals: fingerprint),
            ]))
            #expect(byFingerprint.map(\.version) == [1])
            #expect(try await client.searchModelVersions(filter: try MLflowFilter.runID(equals: run.info.runID)).map(\.version) == [1])

            // Aliases: set, read back (by alias, and from the registered model), move, delete.
            #expect(try await client.modelVersion(name: name, alias: "champion") == nil)
            try await client.setAlias(name: name, alias: "champion", version: 1)
            #expect(try await client.modelVersion(name: name, alias: "champion")?.version == 1)
            #expect(try await client.registeredModel(named: name)?.aliasVersions == ["champion": 1])
            let judged = try await server.python("""
                import sys
                from mlflow import MlflowClient
                print(MlflowClient().get_model_version_by_alias(sys.argv[1], "champion").version)
                """, [name])
            #expect(judged.trimmingCharacters(in: .whitespacesAndNewlines) == "1")

            let (run2, location2) = try await trainedRun(client, fingerprint: unique("fp"))
            let second = try await client.createModelVersion(name: name, source: location2.uri, runID: run2.info.runID)
            try await client.setAlias(name: name, alias: "champion", version: second.version)
            #expect(try await client.modelVersion(name: name, alias: "champion")?.version == 2)
            try await client.deleteAlias(name: name, alias: "champion")
            try await client.deleteAlias(name: name, alias: "champion")
            #expect(try await client.modelVersion(name: name, alias: "champion") == nil)
            #expect(try await client.registeredModel(named: name)?.aliases == [])

            // The server's refusals, classified.
            let reserved = await mlflowError { try await client.setAlias(name: name, alias: "latest", version: 1) }
            #expect(reserved?.kind == .invalidParameter)
            #expect(reserved?.message.contains("reserved") == true)
            let noVersion = await mlflowError { try await client.setAlias(name: name, alias: "champion", version: 7) }
            #expect(noVersion?.kind == .notFound)
            let noModel = await mlflowError { _ = try await client.modelVersion(name: unique("no-such-model"), alias: "champion") }
            #expect(noModel?.kind == .notFound)
            #expect(noModel?.description.contains("get alias 'champion' of") == true)
            let foreign = await mlflowError {
                _ = try await client.createModelVersion(name: name, source: "mlflow-artifacts:/0/other/artifacts/model", runID: run.info.runID)
            }
            #expect(foreign?.kind == .invalidParameter)

            try await client.deleteModelVersion(name: name, version: 1)
            #expect(try await client.modelVersion(name: name, version: 1) == nil)
            try await client.deleteRegisteredModel(name: name)
            #expect(try await client.registeredModel(named: name) == nil)
        }
    }

    @Test func searchesReturnEveryModelAndVersionAcrossPages() async throws {
        let server = try await MLflowServer.shared()
        let prefix = unique("paged")
        try await withClient(server) { client in
            for i in 0..<7 { try await client.createRegisteredModel(name: "\(prefix)-\(i)") }
            let name = "\(prefix)-0"
            for i in 0..<7 { _ = try await client.createModelVersion(name: name, source: "s3://bucket/\(prefix)/\(i)", runID: nil) }
            try await client.setAlias(name: name, alias: "champion", version: 4)

            var before = client.requestCount
            let models = try await client.searchRegisteredModels(filter: "name LIKE '\(prefix)-%'", orderBy: ["name ASC"], pageSize: 3)
            #expect(models.map(\.name) == (0..<7).map { "\(prefix)-\($0)" })
            #expect(client.requestCount - before == 3)
            // Aliases come with the registered models.
            #expect(models.first { $0.name == name }?.aliasVersions == ["champion": 4])
            #expect(models.filter { $0.name != name && !$0.aliases.isEmpty }.isEmpty)

            before = client.requestCount
            let versions = try await client.searchModelVersions(filter: try MLflowFilter.name(equals: name), pageSize: 3)
            #expect(versions.map(\.version).sorted() == Array(1...7))
            #expect(client.requestCount - before == 3)

            let first = try await client.searchModelVersionsPage(filter: try MLflowFilter.name(equals: name), pageSize: 5)
            #expect(first.items.count == 5)
            let rest = try await client.searchModelVersionsPage(filter: try MLflowFilter.name(equals: name), pageSize: 5, pageToken: first.nextPageToken)
            #expect(rest.items.count == 2)
            #expect(rest.nextPageToken == nil)

            let none = try await client.searchRegisteredModelsPage(filter: try MLflowFilter.name(equals: unique("absent")))
            #expect(none == MLflowPage(items: [], nextPageToken: nil))

            let badToken = await mlflowError { _ = try await client.searchRegisteredModelsPage(pageToken: "not-a-token") }
            #expect(badToken?.kind == .invalidParameter)
        }
    }

    @Test func filterValuesWithQuotesFindWhatTheyName() async throws {
        let server = try await MLflowServer.shared()
        let name = unique("o'brien")
        try await withClient(server) { client in
            try await client.createRegisteredModel(name: name)
            try await client.createRegisteredModel(name: name + "x")
            let version = try await client.createModelVersion(name: name, source: "s3://bucket/q", runID: nil,
                                                              tags: [MLflowTag(key: "note", value: "it's")])
            #expect(try await client.searchRegisteredModels(filter: try MLflowFilter.name(equals: name)).map(\.name) == [name])
            let found = try await client.searchModelVersions(filter: MLflowFilter.all([
                try MLflowFilter.name(equals: name), try MLflowFilter.tag("note", equals: "it's"),
            ]))
            #expect(found.map(\.version) == [version.version])
        }
    }

    /// The OSS stores register versions at once (READY). A version pending forever is what an
    /// asynchronous registry backend produces; here the test sets the status in the server's own
    /// database, and the real server reports it (it reads the status from there on every call).
    @Test func waitingForAVersionEndsWhenReadyFailsOnFailureAndGivesUpAtTheDeadline() async throws {
        let server = try await MLflowServer.shared()
        let name = unique("pending")
        try await withClient(server) { client in
            try await client.createRegisteredModel(name: name)
            let created = try await client.createModelVersion(name: name, source: "s3://bucket/pending", runID: nil)
            func setStatus(_ status: String, message: String = "") async throws {
                try await server.sql("UPDATE model_versions SET status = '\(status)', status_message = '\(message)' WHERE name = '\(name)' AND version = 1")
            }

            try await setStatus("PENDING_REGISTRATION")
            let pending = try #require(try await client.modelVersion(name: name, version: 1))
            #expect(pending.status == .pendingRegistration)
            let before = client.requestCount
            let stuck = await mlflowError { _ = try await client.waitUntilReady(pending, timeout: .milliseconds(1500), pollInterval: .milliseconds(200)) }
            #expect(stuck?.kind == .registrationPending)
            #expect(stuck?.isTransient == true)
            #expect(stuck?.description.contains("wait for version 1 of '\(name)' to be registered at \(server.url) failed") == true)
            #expect(stuck?.description.contains("still PENDING_REGISTRATION after 1s500ms") == true)
            // It polled with growing pauses (200, 400, 800 ms …), not in a busy loop. (How many
            // polls fit in 1.5 s depends on how fast the server answers: one on a loaded machine.)
            #expect((1...6).contains(client.requestCount - before))

            // Becomes READY while it waits.
            let ready = try await withThrowingTaskGroup(of: MLflowModelVersion?.self) { group in
                group.addTask { try await client.waitUntilReady(pending, timeout: .seconds(60), pollInterval: .milliseconds(100)) }
                group.addTask {
                    try await Task.sleep(for: .milliseconds(500))
                    try await setStatus("READY")
                    return nil
                }
                var result: MLflowModelVersion?
                for try await value in group where value != nil { result = value }
                return result
            }
            #expect(ready?.status == .ready)

            try await setStatus("FAILED_REGISTRATION", message: "could not copy the files")
            let failedVersion = try #require(try await client.modelVersion(name: name, version: 1))
            let failed = await mlflowError { _ = try await client.waitUntilReady(failedVersion, timeout: .seconds(5)) }
            #expect(failed?.kind == .registrationFailed)
            #expect(failed?.isTransient == false)
            #expect(failed?.message.contains("could not copy the files") == true)
            _ = created
        }
    }
}
