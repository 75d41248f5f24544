import CapstanMLflow
import Foundation
import Testing
@testable import CapstanTestSupport

/// Experiments, runs and artifacts against a real `mlflow server`, with MLflow's own Python client
/// as the judge of what Capstan's client wrote.
@Suite(.timeLimit(.minutes(5)))
struct MLflowTrackingTests {
    @Test func experimentsAreCreatedOnceAndFoundByName() async throws {
        let server = try await MLflowServer.shared()
        let name = "capstan/" + unique("churn")
        try await withClient(server) { client in
            #expect(try await client.experiment(named: name) == nil)
            let created = try await client.ensureExperiment(named: name, tags: [MLflowTag(key: "capstan.managed", value: "true")])
            let again = try await client.ensureExperiment(named: name)
            #expect(again.id == created.id)
            #expect(created.name == name)
            #expect(created.tags.value(of: "capstan.managed") == "true")
            #expect(created.artifactLocation == "mlflow-artifacts:/\(created.id)")

            let duplicate = await mlflowError { _ = try await client.createExperiment(named: name) }
            #expect(duplicate?.kind == .alreadyExists)
            #expect(duplicate?.errorCode == "RESOURCE_ALREADY_EXISTS")
            #expect(duplicate?.httpStatus == 400)
            // MLflow's message carries the SQL statement on following lines; only the first is kept.
            #expect(duplicate?.message.contains("INSERT INTO") == false)

            // Deleted in MLflow (its name stays taken): a clear error, not a silent new experiment.
            _ = try await server.python("from mlflow import MlflowClient; import sys; MlflowClient().delete_experiment(sys.argv[1])", [created.id])
            let deleted = await mlflowError { _ = try await client.ensureExperiment(named: name) }
            #expect(deleted?.kind == .rejected)
            #expect(deleted?.description.contains("is deleted") == true)
            #expect(deleted?.description.contains("mlflow experiments restore --experiment-id \(created.id)") == true)
        }
    }

    @Test func aRunIsSeenByMLflowsOwnClientWithItsParamsMetricsAndTags() async throws {
        let server = try await MLflowServer.shared()
        try await withClient(server) { client in
            let experiment = try await client.ensureExperiment(named: "capstan/" + unique("runs"))
            let fingerprint = unique("fp")
            let run = try await client.createRun(experimentID: experiment.id, name: "train", startTime: 1_700_000_000_000,
                                                 tags: [MLflowTag(key: "capstan.fingerprint", value: fingerprint)])
            #expect(run.info.status == .running)
            #expect(run.info.artifactURI == "mlflow-artifacts:/\(experiment.id)/\(run.info.runID)/artifacts")

            // 150 params: more than one log-batch request may carry (100).
            let params = (0..<150).map { MLflowParam(key: "p\($0)", value: "v\($0)") }
            let metrics = [MLflowMetric(key: "accuracy", value: 0.93, timestamp: 1_700_000_001_000),
                           MLflowMetric(key: "loss", value: .nan, timestamp: 1_700_000_001_000, step: 3)]
            let tags = [MLflowTag(key: "capstan.commit", value: "0123abcd"), MLflowTag(key: "mlflow.source.git.commit", value: "0123abcd")]
            let before = client.requestCount
            try await client.logBatch(runID: run.info.runID, metrics: metrics, params: params, tags: tags)
            #expect(client.requestCount - before == 2)
            let info = try await client.updateRun(id: run.info.runID, status: .finished, endTime: 1_700_000_002_000)
            #expect(info.status == .finished)
            #expect(info.endTime == 1_700_000_002_000)

            let read = try #require(try await client.run(id: run.info.runID))
            #expect(read.data.paramValues == Dictionary(uniqueKeysWithValues: params.map { ($0.key, $0.value) }))
            #expect(read.data.metricValues["accuracy"] == 0.93)
            #expect(read.data.metricValues["loss"]?.isNaN == true)
            #expect(read.data.tags.value(of: "capstan.fingerprint") == fingerprint)
            #expect(read.data.tags.value(of: "capstan.commit") == "0123abcd")

            // The judge: MLflow's Python client reads the same run.
            let judged = try await server.python("""
                import json, sys
                from mlflow import MlflowClient
                r = MlflowClient().get_run(sys.argv[1])
                print(json.dumps({"params": r.data.params, "metrics": {k: repr(v) for k, v in r.data.metrics.items()},
                                  "tags": r.data.tags, "status": r.info.status, "name": r.info.run_name}))
                """, [run.info.runID])
            struct Judged: Decodable {
                var params: [String: String]
                var metrics: [String: String]
                var tags: [String: String]
                var status: String
                var name: String
            }
            let seen = try JSONDecoder().decode(Judged.self, from: Data(judged.utf8))
            #expect(seen.params.count == 150)
            #expect(seen.params["p149"] == "v149")
            #expect(seen.metrics == ["accuracy": "0.93", "loss": "nan"])
            #expect(seen.tags["capstan.fingerprint"] == fingerprint)
            #expect(seen.tags["mlflow.source.git.commit"] == "0123abcd")
            #expect(seen.status == "FINISHED")
            #expect(seen.name == "train")

            // Params never change in MLflow: logging another value is refused, with the server's words.
            let changed = await mlflowError { try await client.logBatch(runID: run.info.runID, params: [MLflowParam(key: "p0", value: "other")]) }
            #expect(changed?.kind == .invalidParameter)
            #expect(changed?.message.contains("Changing param values is not allowed") == true)

            #expect(try await client.run(id: "0000000000000000000000000000dead") == nil)
        }
    }

    @Test func runsAreFoundByTagAcrossPages() async throws {
        let server = try await MLflowServer.shared()
        try await withClient(server) { client in
            let experiment = try await client.ensureExperiment(named: "capstan/" + unique("search"))
            let fingerprint = unique("fp")
            var wanted: Set<String> = []
            for i in 0..<5 {
                let run = try await client.createRun(experimentID: experiment.id, startTime: 1_700_000_000_000 + Int64(i),
                                                     tags: [MLflowTag(key: "capstan.fingerprint", value: fingerprint)])
                wanted.insert(run.info.runID)
            }
            _ = try await client.createRun(experimentID: experiment.id, startTime: 1_700_000_000_000,
                                           tags: [MLflowTag(key: "capstan.fingerprint", value: "other")])
            let before = client.requestCount
            let found = try await client.searchRuns(experimentIDs: [experiment.id],
                                                    filter: try MLflowFilter.tag("capstan.fingerprint", equals: fingerprint), pageSize: 2)
            #expect(Set(found.map(\.info.runID)) == wanted)
            #expect(found.count == 5)
            #expect(client.requestCount - before == 3)
            let none = try await client.searchRuns(experimentIDs: [experiment.id], filter: try MLflowFilter.tag("capstan.fingerprint", equals: "absent"))
            #expect(none.isEmpty)
        }
    }

    @Test func artifactsRoundTripThroughTheProxyAndMLflowsClientDownloadsThem() async throws {
        let server = try await MLflowServer.shared()
        let temp = try TempDir()
        let output = temp.sub("output")
        let files: [String: [UInt8]] = [
            "MLmodel": Array("flavors: {}\n".utf8),
            "model.bin": bytes(700_000, seed: 1),
            "empty.txt": [],
            "sub dir/weights 100%.npy": bytes(1000, seed: 2),
            "sub dir/deeper/naïve (1) ünïcode.json": Array("{\"a\": 1}".utf8),
        ]
        try writeFiles(files, into: output)
        try await withClient(server) { client in
            let experiment = try await client.ensureExperiment(named: "capstan/" + unique("artifacts"))
            let run = try await client.createRun(experimentID: experiment.id, startTime: 1_700_000_000_000)
            let root = try MLflowArtifactLocation(artifactURI: run.info.artifactURI)
            let model = try root.appending("model")
            let before = client.requestCount
            let uploaded = try await client.uploadArtifacts(from: output.path, to: model)
            #expect(client.requestCount - before == files.count)
            #expect(Dictionary(uniqueKeysWithValues: uploaded.map { ($0.path, $0.size) }) == files.mapValues { Int64($0.count) })

            let top = try await client.listArtifacts(at: model)
            #expect(Set(top.map(\.path)) == ["MLmodel", "model.bin", "empty.txt", "sub dir"])
            #expect(top.first { $0.path == "sub dir" }?.isDirectory == true)
            #expect(top.first { $0.path == "model.bin" }?.size == 700_000)
            let all = try await client.listArtifactsRecursively(at: model)
            #expect(Dictionary(uniqueKeysWithValues: all.map { ($0.path, $0.size) }) == files.mapValues { Int64($0.count) })
            #expect(try await client.listArtifacts(at: root.appending("nothing-here")).isEmpty)

            let copy = temp.sub("copy")
            let downloaded = try await client.downloadArtifacts(from: model, into: copy.path + "/")
            #expect(downloaded.count == files.count)
            #expect(try readFiles(in: copy) == files)
            #expect(try FileManager.default.contentsOfDirectory(atPath: temp.path).sorted() == ["copy", "output"])

            // Into a folder that exists: refused before anything is fetched.
            let count = client.requestCount
            let exists = await mlflowError { try await client.downloadArtifacts(from: model, into: copy.path) }
            #expect(exists?.kind == .localFiles)
            #expect(client.requestCount == count)

            // Nothing there: not found, and no folder left behind.
            let missing = await mlflowError { try await client.downloadArtifacts(from: root.appending("absent"), into: temp.sub("none").path) }
            #expect(missing?.kind == .notFound)
            #expect(!FileManager.default.fileExists(atPath: temp.sub("none").path))

            // The judge: MLflow's client downloads what Capstan's uploaded, byte for byte.
            let judged = temp.sub("judged")
            _ = try await server.python("""
                import sys, mlflow
                mlflow.artifacts.download_artifacts(run_id=sys.argv[1], artifact_path="model", dst_path=sys.argv[2])
                """, [run.info.runID, judged.path])
            #expect(try readFiles(in: judged.appendingPathComponent("model")) == files)
        }
    }

    @Test func anArtifactFolderWithASymlinkIsRefusedBeforeAnythingIsSent() async throws {
        let server = try await MLflowServer.shared()
        let temp = try TempDir()
        let output = temp.sub("output")
        try writeFiles(["model.bin": [1, 2, 3]], into: output)
        try FileManager.default.createSymbolicLink(atPath: output.path + "/link", withDestinationPath: "/etc/passwd")
        try await withClient(server) { client in
            let location = try MLflowArtifactLocation(proxyPath: "0/\(unique("run"))/artifacts/model")
            let before = client.requestCount
            let error = await mlflowError { try await client.uploadArtifacts(from: output.path, to: location) }
            #expect(error?.kind == .localFiles)
            #expect(error?.description.contains("'\(output.path)/link' is a symlink") == true)
            #expect(client.requestCount == before)

            // Names MLflow would refuse ('#') or store under another name ('%41' is decoded to 'A').
            for name in ["model #1.bin", "a%41.txt"] {
                let folder = temp.sub(unique("names"))
                try writeFiles(["ok.bin": [1], name: [2]], into: folder)
                let refused = await mlflowError { try await client.uploadArtifacts(from: folder.path, to: location) }
                #expect(refused?.kind == .localFiles)
                #expect(refused?.description.contains("'\(folder.path)/\(name)' has a name MLflow cannot store") == true)
                #expect(client.requestCount == before)
            }

            let empty = temp.sub("empty")
            try FileManager.default.createDirectory(at: empty.appendingPathComponent("only-a-folder"), withIntermediateDirectories: true)
            let nothing = await mlflowError { try await client.uploadArtifacts(from: empty.path, to: location) }
            #expect(nothing?.kind == .localFiles)
            #expect(nothing?.message.contains("no file") == true)
        }
    }
}
