import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import Testing
import CapstanServer
@testable import CapstanTestSupport

/// `capstan apply` with `registry: {mlflow: …}` against a real `mlflow server` on 127.0.0.1 (one
/// per suite, `MLflowServer.shared()`), with MLflow's own Python client as the judge of what
/// Capstan wrote. Each test uses its own model names, so that they share the server.
@Suite(.serialized) struct MLflowApplyTests {
    /// The quick start pointed at `server` (and at `agent`, when given), its model named `model`.
    static func repository(_ temp: TempDir, server: MLflowServer, model: String, agent: ServeApplyTests.Agent? = nil,
                           registry: String? = nil, drift: String = "revert") throws -> GitRepo {
        let repo = try GitRepo(at: temp.sub("repo"))
        let example = CLI.packageRoot.appendingPathComponent("examples/quickstart")
        try repo.copy(example: example) { original in
            var text = original
            text = text.replacingOccurrences(of: "    embedded: {}                     # SQLite registry in the state directory",
                                             with: "    mlflow: " + (registry ?? "{url: \"\(server.url)\"}"))
            if let agent { text = text.replacingOccurrences(of: "http://127.0.0.1:7070", with: "http://127.0.0.1:\(agent.admin)") }
            text = text.replacingOccurrences(of: "pause: 5s", with: "pause: 1s").replacingOccurrences(of: "minRequests: 20", with: "minRequests: 5")
                .replacingOccurrences(of: "  name: churn\n", with: "  name: \(model)\n")
                .replacingOccurrences(of: "  model: churn\n", with: "  model: \(model)\n")
                .replacingOccurrences(of: "    drift: revert", with: "    drift: \(drift)")
            return text
        }
        try repo.commit("quick start on MLflow")
        return repo
    }

    static func uniqueName(_ prefix: String) -> String { "\(prefix)-\(UUID().uuidString.prefix(8).lowercased())" }

    /// JSON printed by a judge script.
    static func judge(_ server: MLflowServer, _ script: String, _ arguments: [String] = []) async throws -> [String: Any] {
        let out = try await server.python(script, arguments)
        let line = try #require(out.split(separator: "\n").last.map(String.init), "the judge printed nothing")
        return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }

    /// Runs, versions and aliases of `model`, as MLflow's client sees them.
    static func inventory(_ server: MLflowServer, _ model: String) async throws -> [String: Any] {
        try await judge(server, """
            import json, sys
            from mlflow import MlflowClient
            c = MlflowClient()
            name = sys.argv[1]
            exp = c.get_experiment_by_name("capstan/" + name)
            runs = c.search_runs([exp.experiment_id]) if exp else []
            versions = c.search_model_versions(f"name = '{name}'")
            try:
                aliases = c.get_registered_model(name).aliases
            except Exception:
                aliases = {}
            print(json.dumps({
                "runs": [{"id": r.info.run_id, "status": r.info.status, "tags": r.data.tags, "params": r.data.params,
                          "metrics": r.data.metrics} for r in runs],
                "versions": [{"version": int(v.version), "run_id": v.run_id, "source": v.source, "status": v.status,
                              "tags": v.tags} for v in versions],
                "aliases": {a: int(v) for a, v in aliases.items()},
            }))
            """, [model])
    }

    @Test func theQuickStartFlowRunsAgainstMLflow() async throws {
        let server = try await MLflowServer.shared()
        let temp = try TempDir()
        let state = temp.sub("state").path
        let agent = try ServeApplyTests.Agent(state: temp.sub("agent").path, log: temp.sub("agent.log"))
        defer { agent.stop() }
        let model = Self.uniqueName("churn")
        let repo = try Self.repository(temp, server: server, model: model, agent: agent)

        // Train, gate, champion, endpoint: everything in MLflow, nothing in the embedded registry.
        let first = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(first.status == 0, "\(first.stdout)\n\(first.stderr)")
        #expect(first.stdout.contains("\(model): train done: v1 trained"), "\(first.stdout)")
        #expect(first.stdout.contains("\(model): move-alias done: champion: unset → v1"), "\(first.stdout)")
        var polls = 0
        while agent.predict().0 != 200 && polls < 200 { usleep(100_000); polls += 1 }
        #expect(agent.predict() == (200, "1"))

        let judged = try await Self.judge(server, """
            import json, sys, os, tempfile
            import mlflow
            from mlflow import MlflowClient
            c = MlflowClient()
            name = sys.argv[1]
            v = c.get_model_version_by_alias(name, "champion")
            run = c.get_run(v.run_id)
            folder = mlflow.artifacts.download_artifacts(run_id=v.run_id, artifact_path="model", dst_path=tempfile.mkdtemp())
            print(json.dumps({"version": int(v.version), "status": v.status, "source": v.source, "tags": v.tags,
                              "run_status": run.info.status, "params": run.data.params, "metrics": run.data.metrics,
                              "run_tags": run.data.tags, "files": sorted(os.listdir(folder)),
                              "experiment": c.get_experiment(run.info.experiment_id).name,
                              "model_tags": c.get_registered_model(name).tags}))
            """, [model])
        #expect(judged["version"] as? Int == 1)
        #expect(judged["status"] as? String == "READY")
        #expect(judged["run_status"] as? String == "FINISHED")
        #expect(judged["experiment"] as? String == "capstan/\(model)")
        #expect((judged["source"] as? String)?.hasPrefix("mlflow-artifacts:/") == true)
        #expect(judged["files"] as? [String] == ["model.json"])
        #expect(judged["params"] as? [String: String] == ["epochs": "20", "learning_rate": "0.3", "seed": "7"])
        #expect((judged["metrics"] as? [String: Double])?["accuracy"] != nil)
        let versionTags = try #require(judged["tags"] as? [String: String])
        #expect(versionTags["capstan.status"] == "validated")
        #expect(versionTags["capstan.gates"] == "passed")
        #expect(versionTags["capstan.fingerprint"]?.count == 64)
        let runTags = try #require(judged["run_tags"] as? [String: String])
        #expect(runTags["capstan.model"] == model)
        #expect(runTags["capstan.fingerprint"] == versionTags["capstan.fingerprint"])
        #expect(runTags["mlflow.source.git.commit"] == (try repo.git("rev-parse", "HEAD")).trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(runTags["mlflow.source.name"] == repo.path)
        #expect((judged["model_tags"] as? [String: String]) == ["capstan.managed": "true", "team": "growth"])

        // Converged: the next plan has nothing to do.
        let plan = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state])
        #expect(plan.status == 0)
        #expect(plan.stdout.contains("No changes."), "\(plan.stdout)")

        // A better v2 rolls out by canary and takes champion, in MLflow too.
        try ServeApplyTests.edit(repo, "models/churn/model.yaml") { $0.replacingOccurrences(of: "epochs: 20,", with: "epochs: 200,") }
        try repo.commit("more epochs")
        let rollout = try ServeApplyTests.applyUntil(repo, state: state, agent: agent) { $0.stdout.contains("churn-prod: promote done") }
        #expect(rollout.map(\.stdout).joined().contains("churn-prod: promote done"))
        #expect(agent.predict() == (200, "2"))
        var now = try await Self.inventory(server, model)
        #expect(now["aliases"] as? [String: Int] == ["champion": 2])

        // A broken v3 is rolled back from the endpoint; champion stays where the gates put it.
        try ServeApplyTests.edit(repo, "models/churn/serve.py") {
            $0.replacingOccurrences(of: #"self._send(200, {"churn_probability": round(predict(row), 4)})"#, with: #"self._send(500, {"error": "broken"})"#)
        }
        try repo.commit("broken server")
        let broken = try ServeApplyTests.applyUntil(repo, state: state, agent: agent) { $0.stdout.contains("churn-prod: rollback") }
        #expect(broken.map(\.stdout).joined().contains("v3 rolled back and quarantined; traffic back on v2"))
        #expect(agent.predict() == (200, "2"))
        now = try await Self.inventory(server, model)
        #expect((now["versions"] as? [[String: Any]])?.count == 3)
        #expect((now["runs"] as? [[String: Any]])?.count == 3)

        // Status and history read MLflow (through the registry the state folder last used).
        let status = try CLI.run(["status", "--state-dir", state])
        #expect(status.stdout.contains("Model \(model)"), "\(status.stdout)")
        #expect(status.stdout.contains("[champion]"), "\(status.stdout)")
        let history = try CLI.run(["history", "--state-dir", state, "--model", model])
        #expect(history.stdout.contains("move-alias"), "\(history.stdout)")
    }

    /// Another Capstan (a fresh state folder: an empty artifact store) serves the versions it
    /// finds in MLflow: their files are downloaded through the artifact proxy, checked against
    /// their digest, and served; nothing is trained again.
    @Test func aVersionIsServedFromMLflowsFilesByAnotherCapstan() async throws {
        let server = try await MLflowServer.shared()
        let temp = try TempDir()
        let model = Self.uniqueName("served")
        let agent = try ServeApplyTests.Agent(state: temp.sub("agent").path, log: temp.sub("agent.log"))
        defer { agent.stop() }
        // Trained by one Capstan whose serving layer is elsewhere: MLflow has v1 and champion on it.
        let repo = try Self.repository(temp, server: server, model: model)
        let trainer = try CLI.run(["apply", "--repo", repo.path, "--state-dir", temp.sub("trainer").path])
        #expect(trainer.stdout.contains("\(model): train done: v1 trained"), "\(trainer.stdout)")
        try ServeApplyTests.edit(repo, "capstan.yaml") { $0.replacingOccurrences(of: "http://127.0.0.1:7070", with: "http://127.0.0.1:\(agent.admin)") }
        try repo.commit("serve with the agent")
        let state = temp.sub("server-side").path

        // Files changed in MLflow after registration are never served.
        let source = try #require(((try await Self.inventory(server, model))["versions"] as? [[String: Any]])?.first?["source"] as? String)
        let file = server.directory + "/artifacts/" + String(source.dropFirst("mlflow-artifacts:/".count)) + "/model.json"
        let original = try String(contentsOfFile: file, encoding: .utf8)
        try "tampered".write(toFile: file, atomically: true, encoding: .utf8)
        let refused = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(refused.status != 0)
        #expect(refused.stdout.contains("were changed after registration and will not be served"), "\(refused.stdout)")
        #expect(agent.predict().0 != 200, "nothing serves the tampered files")

        try original.write(toFile: file, atomically: true, encoding: .utf8)
        let serving = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(serving.status == 0, "\(serving.stdout)\n\(serving.stderr)")
        #expect(!serving.stdout.contains("train done"), "nothing is trained again: \(serving.stdout)")
        #expect(serving.stderr.contains("downloaded the files of v1 of \(model) from the registry"), "\(serving.stderr)")
        var polls = 0
        while agent.predict().0 != 200 && polls < 200 { usleep(100_000); polls += 1 }
        #expect(agent.predict() == (200, "1"))
    }

    @Test func aFailedTrainingIsAFailedRunAndNoVersion() async throws {
        let server = try await MLflowServer.shared()
        let temp = try TempDir()
        let state = temp.sub("state").path
        let model = Self.uniqueName("failing")
        let repo = try Self.repository(temp, server: server, model: model)
        try ServeApplyTests.edit(repo, "models/churn/train.py") { "import sys\nprint('the data is broken')\nsys.exit(3)\n" + $0 }
        try repo.commit("break the training")

        let failed = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(failed.status != 0)
        #expect(failed.stdout.contains("training exited with status 3"), "\(failed.stdout)")
        var now = try await Self.inventory(server, model)
        #expect((now["versions"] as? [[String: Any]])?.isEmpty == true, "a failed training registers no version")
        let runs = try #require(now["runs"] as? [[String: Any]])
        #expect(runs.count == 1)
        #expect(runs.first?["status"] as? String == "FAILED")
        #expect(((runs.first?["tags"] as? [String: String])?["capstan.log_tail"])?.contains("the data is broken") == true)

        // The backoff is read from MLflow's run: the plan waits, naming the fingerprint.
        let plan = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state])
        #expect(plan.stdout.contains("failed once; retrying after a backoff"), "\(plan.stdout)")

        // Retried now: a second run; fixed: a third run, and the first version is v1.
        let retried = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state, "--retry-failed"])
        #expect(retried.status != 0)
        now = try await Self.inventory(server, model)
        let attempts = (now["runs"] as? [[String: Any]])?.compactMap { ($0["tags"] as? [String: String])?["capstan.attempt"] }.sorted()
        #expect(attempts == ["1", "2"])
        try ServeApplyTests.edit(repo, "models/churn/train.py") { $0.replacingOccurrences(of: "import sys\nprint('the data is broken')\nsys.exit(3)\n", with: "") }
        try repo.commit("fix the training")
        let fixed = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(fixed.stdout.contains("\(model): train done: v1 trained"), "\(fixed.stdout)\n\(fixed.stderr)")
    }

    /// A pass killed at each point of a training leaves MLflow so that the next pass finishes it
    /// without a second run or version.
    @Test(arguments: ["train.after-create-version", "train.after-start", "train.after-artifact", "train.after-trained",
                      "validate.after-update", "alias.after-set"])
    func aKilledPassIsFinishedWithoutDuplicates(failpoint: String) async throws {
        let server = try await MLflowServer.shared()
        let temp = try TempDir()
        let state = temp.sub("state").path
        let model = Self.uniqueName("killed")
        let repo = try Self.repository(temp, server: server, model: model)
        let killed = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state], environment: ["CAPSTAN_FAILPOINT": failpoint])
        #expect(killed.status != 0, "\(failpoint): the pass was not killed")
        let resumed = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(resumed.status == 0, "\(failpoint): \(resumed.stdout)\n\(resumed.stderr)")
        let plan = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state])
        #expect(plan.stdout.contains("No changes."), "\(failpoint): \(plan.stdout)")
        let now = try await Self.inventory(server, model)
        let runs = try #require(now["runs"] as? [[String: Any]])
        #expect(runs.count == 1, "\(failpoint): \(runs)")
        #expect(runs.first?["status"] as? String == "FINISHED")
        #expect((now["versions"] as? [[String: Any]])?.count == 1, "\(failpoint)")
        #expect(now["aliases"] as? [String: Int] == ["champion": 1])
    }

    /// Changes made in MLflow behind Capstan's back: champion moved, a version added by hand,
    /// Capstan's tags edited. Each is drift, and `policy.drift` decides.
    @Test(arguments: ["revert", "alert", "adopt"])
    func driftInMLflowIsHandledPerPolicy(policy: String) async throws {
        let server = try await MLflowServer.shared()
        let temp = try TempDir()
        let state = temp.sub("state").path
        let model = Self.uniqueName("drift-\(policy)")
        let repo = try Self.repository(temp, server: server, model: model, drift: policy)
        #expect(try CLI.run(["apply", "--repo", repo.path, "--state-dir", state]).status == 0)
        try ServeApplyTests.edit(repo, "models/churn/model.yaml") { $0.replacingOccurrences(of: "epochs: 20,", with: "epochs: 200,") }
        try repo.commit("more epochs")
        let second = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(second.stdout.contains("champion: v1 → v2"), "\(second.stdout)")

        // Someone moves champion back to v1 in the UI, registers v3 by hand from v1's files, and
        // edits a tag Capstan wrote on v2.
        _ = try await server.python("""
            import sys
            from mlflow import MlflowClient
            c = MlflowClient()
            name = sys.argv[1]
            c.set_registered_model_alias(name, "champion", "1")
            v1 = c.get_model_version(name, "1")
            c.create_model_version(name, v1.source, run_id=v1.run_id, tags={"owner": "notebook"})
            c.set_model_version_tag(name, "2", "capstan.gates", "rejected")
            """, [model])
        let plan = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state])
        let text = plan.stdout
        #expect(text.contains("alias champion was moved outside Capstan to v1 (Capstan set v2)"), "\(text)")
        #expect(text.contains("v3 was registered outside Capstan"), "\(text)")
        #expect(text.contains("the tags Capstan wrote on v2 were edited outside Capstan (capstan.gates: rejected)"), "\(text)")
        let apply = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(apply.status == 0, "\(apply.stdout)\n\(apply.stderr)")
        var now = try await Self.inventory(server, model)
        let v2Tags = ((now["versions"] as? [[String: Any]])?.first { $0["version"] as? Int == 2 }?["tags"] as? [String: String])
        let v3Tags = ((now["versions"] as? [[String: Any]])?.first { $0["version"] as? Int == 3 }?["tags"] as? [String: String])
        #expect(v3Tags == ["owner": "notebook"], "Capstan never touches a version it did not make")
        let again = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state])
        switch policy {
        case "revert":
            #expect(text.contains("policy.drift is revert: champion follows the version of the current spec, v2"), "\(text)")
            #expect(now["aliases"] as? [String: Int] == ["champion": 2])
            #expect(v2Tags?["capstan.gates"] == "passed")
            // The hand-made version stays reported: Capstan cannot put anything back there.
            #expect(again.stdout.contains("v3 was registered outside Capstan"), "\(again.stdout)")
            #expect(!again.stdout.contains("alias champion was moved"), "\(again.stdout)")
        case "alert":
            #expect(now["aliases"] as? [String: Int] == ["champion": 1])
            #expect(v2Tags?["capstan.gates"] == "rejected")
            #expect(again.stdout.contains("alias champion was moved outside Capstan to v1"), "reported until it is resolved: \(again.stdout)")
            #expect(again.stdout.contains("policy.drift is alert: reported only"), "\(again.stdout)")
        default:
            #expect(now["aliases"] as? [String: Int] == ["champion": 1])
            #expect(v2Tags?["capstan.gates"] == "rejected")
            #expect(again.stdout.contains("No changes."), "adopted drift is not reported again: \(again.stdout)")
            #expect(!again.stdout.contains("outside Capstan"), "\(again.stdout)")
            // Until the spec changes: then champion follows the spec again.
            try ServeApplyTests.edit(repo, "models/churn/model.yaml") { $0.replacingOccurrences(of: "epochs: 200,", with: "epochs: 150,") }
            try repo.commit("other epochs")
            let changed = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
            #expect(changed.status == 0, "\(changed.stdout)\n\(changed.stderr)")
            now = try await Self.inventory(server, model)
            #expect(now["aliases"] as? [String: Int] == ["champion": 4], "\(changed.stdout)")
        }
    }

    /// An alias Capstan manages, deleted in MLflow, is drift: put back under revert, reported
    /// under alert. Aliases Capstan never set are left alone, even when the spec does not name them.
    @Test(arguments: ["revert", "alert"])
    func aDeletedAliasIsDrift(policy: String) async throws {
        let server = try await MLflowServer.shared()
        let temp = try TempDir()
        let state = temp.sub("state").path
        let model = Self.uniqueName("alias-\(policy)")
        let repo = try Self.repository(temp, server: server, model: model, drift: policy)
        #expect(try CLI.run(["apply", "--repo", repo.path, "--state-dir", state]).status == 0)
        _ = try await server.python("""
            import sys
            from mlflow import MlflowClient
            c = MlflowClient()
            c.delete_registered_model_alias(sys.argv[1], "champion")
            c.set_registered_model_alias(sys.argv[1], "notebook-pick", "1")
            """, [model])
        let plan = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state])
        #expect(plan.stdout.contains("alias champion was deleted outside Capstan (Capstan had set it to v1)"), "\(plan.stdout)")
        // (Other tests' models on the shared server show as orphans, with their aliases.)
        #expect(!plan.stdout.contains("alias notebook-pick is no longer in the spec"), "an alias Capstan never set is not Capstan's: \(plan.stdout)")
        #expect(!plan.stdout.contains("\(model)@notebook-pick"), "\(plan.stdout)")
        let apply = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(apply.status == 0, "\(apply.stdout)\n\(apply.stderr)")
        let aliases = (try await Self.inventory(server, model))["aliases"] as? [String: Int]
        if policy == "revert" {
            #expect(aliases == ["champion": 1, "notebook-pick": 1])
        } else {
            #expect(aliases == ["notebook-pick": 1])
            #expect(apply.stdout.contains("policy.drift is alert: reported only") || plan.stdout.contains("policy.drift is alert: reported only"))
        }
    }

    /// A version Capstan registered, deleted in MLflow, is registered again from its run (a new
    /// number: MLflow never reuses one) without training again.
    @Test func aDeletedVersionIsRegisteredAgainFromItsRun() async throws {
        let server = try await MLflowServer.shared()
        let temp = try TempDir()
        let state = temp.sub("state").path
        let model = Self.uniqueName("deleted")
        let repo = try Self.repository(temp, server: server, model: model)
        #expect(try CLI.run(["apply", "--repo", repo.path, "--state-dir", state]).status == 0)
        _ = try await server.python("""
            import sys
            from mlflow import MlflowClient
            MlflowClient().delete_model_version(sys.argv[1], "1")
            """, [model])
        let plan = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state])
        #expect(plan.stdout.contains("v1, which Capstan registered, was deleted outside Capstan"), "\(plan.stdout)")
        #expect(plan.stdout.contains("registering it (the training does not run again)"), "\(plan.stdout)")
        let apply = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(apply.status == 0, "\(apply.stdout)\n\(apply.stderr)")
        #expect(!apply.stdout.contains("trained on"), "the training did not run: \(apply.stdout)")
        let now = try await Self.inventory(server, model)
        #expect((now["runs"] as? [[String: Any]])?.count == 1)
        #expect((now["versions"] as? [[String: Any]])?.map { $0["version"] as? Int } == [2])
        #expect(now["aliases"] as? [String: Int] == ["champion": 2])
    }

    /// `capstan run` with MLflow's registry webhook: champion moved in MLflow starts a pass at
    /// once, which reverts it; unsigned, forged and replayed deliveries start nothing.
    @Test func anAliasMovedInMLflowIsRevertedByThePassItsWebhookStarts() async throws {
        let server = try await MLflowServer.shared()
        let temp = try TempDir()
        let model = Self.uniqueName("hooked")
        let repo = try Self.repository(temp, server: server, model: model)
        let secret = "mlflow-hook-\(UUID().uuidString)"
        let controller = try ControllerTests.RunningController(
            repo: repo.path, state: temp.sub("state").path, log: temp.sub("run.log"),
            arguments: ["--interval", "1h", "--resync", "1h", "--mlflow-webhook-secret-env", "MLFLOW_HOOK_SECRET"],
            environment: ["MLFLOW_HOOK_SECRET": secret])
        func passes() -> [[String: Any]] { controller.logLines.filter { $0["msg"] as? String == "pass finished" } }
        #expect(ControllerTests.eventually(within: 90) { passes().count == 1 }, "no first pass: \(controller.logText)")
        #expect((try await Self.inventory(server, model))["aliases"] as? [String: Int] == ["champion": 1])

        // Not MLflow's, or not now: 401, and no pass.
        let body = Array(#"{"entity": "model_version_alias", "action": "created", "data": {}}"#.utf8)
        let signer = MLflowWebhookAuthenticator(secret: secret)
        let forger = MLflowWebhookAuthenticator(secret: "guess")
        #expect(controller.request("POST", "/hooks/mlflow", body: Data(body)).0 == 401)
        #expect(controller.request("POST", "/hooks/mlflow", body: Data(body), headers: forger.headers(for: body)).0 == 401)
        let stale = signer.headers(for: body, timestamp: Int64(Date().timeIntervalSince1970) - 3600)
        #expect(controller.request("POST", "/hooks/mlflow", body: Data(body), headers: stale).0 == 401)
        #expect(controller.request("POST", "/hooks/mlflow", body: Data(#"{"tampered": 1}"#.utf8), headers: signer.headers(for: body)).0 == 401)
        usleep(1_500_000)
        #expect(passes().count == 1, "a refused delivery started a pass")
        #expect(!controller.logText.contains(secret))

        // MLflow's own webhook: someone moves champion to a version made by hand.
        let port = controller.http
        _ = try await server.python("""
            import sys, time
            from mlflow import MlflowClient
            c = MlflowClient()
            name, url, secret = sys.argv[1], sys.argv[2], sys.argv[3]
            c.create_webhook(name=name, url=url, events=["model_version_alias.created"], secret=secret)
            v1 = c.get_model_version(name, "1")
            c.create_model_version(name, v1.source, run_id=v1.run_id)
            time.sleep(1.5)  # the server reads its webhooks again after MLFLOW_WEBHOOK_CACHE_TTL
            c.set_registered_model_alias(name, "champion", "2")
            """, [model, "http://127.0.0.1:\(port)/hooks/mlflow", secret])
        let moved = Date()
        #expect(ControllerTests.eventually(within: 30) { passes().count >= 2 }, "the webhook started no pass: \(controller.logText)")
        let started = controller.logLines.filter { $0["msg"] as? String == "pass started" }.last
        #expect((started?["trigger"] as? String)?.hasPrefix("mlflow webhook (model_version_alias.created)") == true, "\(String(describing: started))")
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let ts = started?["ts"] as? String, let at = formatter.date(from: ts) {
            #expect(at.timeIntervalSince(moved) < 1.0, "the pass started \(at.timeIntervalSince(moved)) s after the alias moved")
        }
        let now = try await Self.inventory(server, model)
        #expect(now["aliases"] as? [String: Int] == ["champion": 1], "the drift was reverted: \(now)")
        #expect(controller.stop() == 0)
    }

    /// An `mlflow server` of the test's own, killed (SIGKILL, its whole process group) and started
    /// again on the same port and store.
    final class OwnServer {
        let directory: String
        let port: UInt16
        let python: String
        let mlflow: String
        var process: Process?
        var url: String { "http://127.0.0.1:\(port)" }

        init(_ temp: TempDir) throws {
            directory = temp.sub("mlflow").path
            try FileManager.default.createDirectory(atPath: directory + "/artifacts", withIntermediateDirectories: true)
            port = try Ports.free()
            python = try MLflowServer.findPython()
            mlflow = (python as NSString).deletingLastPathComponent + "/mlflow"
        }

        func start() throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: mlflow)
            process.arguments = ["server", "--host", "127.0.0.1", "--port", String(port), "--workers", "1",
                                 "--backend-store-uri", "sqlite:///\(directory)/mlflow.db", "--artifacts-destination", directory + "/artifacts"]
            var environment = ProcessInfo.processInfo.environment
            environment["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
            process.environment = environment
            let logPath = directory + "/server.log"
            if !FileManager.default.fileExists(atPath: logPath) { _ = FileManager.default.createFile(atPath: logPath, contents: nil) }
            let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
            log.seekToEndOfFile()
            process.standardOutput = log
            process.standardError = log
            process.standardInput = FileHandle.nullDevice
            try process.run()
            self.process = process
            var polls = 0
            while !Ports.accepts(port) && polls < 1800 && process.isRunning { usleep(100_000); polls += 1 }
            guard Ports.accepts(port) else { throw FixtureError("mlflow server did not start on \(port)") }
            // Listening comes a little before answering.
            usleep(500_000)
        }

        /// SIGKILL to the server and its uvicorn worker (every process started with this port).
        func kill() {
            _ = try? Shell.run("pkill", ["-9", "-f", "port \(port) "])
            process?.waitUntilExit()
            process = nil
            var polls = 0
            while Ports.accepts(port) && polls < 100 { usleep(50_000); polls += 1 }
        }

        deinit { kill() }
    }

    /// MLflow killed while a training runs: the pass ends with a transient failure naming the
    /// server, nothing is marked failed, and once the server is back the next pass registers the
    /// version from the training that finished, without training again and without a second run.
    @Test func theServerKilledMidPassAndRestartedLeavesNoDuplicate() async throws {
        let temp = try TempDir()
        let server = try OwnServer(temp)
        try server.start()
        let model = Self.uniqueName("restarted")
        let shared = try await MLflowServer.shared()
        let repo = try Self.repository(temp, server: shared, model: model, registry: "{url: \"\(server.url)\"}")
        let marker = temp.sub("training-started").path
        try ServeApplyTests.edit(repo, "models/churn/train.py") {
            "import os, time\nopen(\"\(marker)\", \"w\").close()\ntime.sleep(4)\n" + $0
        }
        try repo.commit("a slow training")
        let state = temp.sub("state").path

        let apply = Process()
        apply.executableURL = CLI.binary
        apply.arguments = ["apply", "--repo", repo.path, "--state-dir", state]
        var environment = ProcessInfo.processInfo.environment
        environment["NO_COLOR"] = "1"
        apply.environment = environment
        let out = Pipe()
        apply.standardOutput = out
        apply.standardError = out
        try apply.run()
        var polls = 0
        while !FileManager.default.fileExists(atPath: marker) && polls < 600 { usleep(50_000); polls += 1 }
        #expect(FileManager.default.fileExists(atPath: marker), "the training never started")
        server.kill()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        apply.waitUntilExit()
        #expect(apply.terminationStatus != 0)
        #expect(text.contains(server.url), "the failure names the server: \(text)")
        #expect(text.contains("registers it without training again"), "\(text)")

        try server.start()
        let resumed = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(resumed.status == 0, "\(resumed.stdout)\n\(resumed.stderr)")
        #expect(!resumed.stdout.contains("trained on"), "the training ran again: \(resumed.stdout)")
        #expect(resumed.stdout.contains("champion: unset → v1"), "\(resumed.stdout)")
        let inventory = try await Self.judge(shared, """
            import json, sys
            from mlflow import MlflowClient
            c = MlflowClient(sys.argv[2])
            name = sys.argv[1]
            runs = c.search_runs([c.get_experiment_by_name("capstan/" + name).experiment_id])
            print(json.dumps({"runs": [r.info.status for r in runs],
                              "versions": [int(v.version) for v in c.search_model_versions(f"name = '{name}'")]}))
            """, [model, server.url])
        #expect(inventory["runs"] as? [String] == ["FINISHED"])
        #expect(inventory["versions"] as? [Int] == [1])
        server.kill()
    }

    /// examples/mlflow-sklearn as a user runs it: a scikit-learn model saved as an MLflow model,
    /// registered in MLflow, served by `mlflow models serve` through the serving agent, and a
    /// better version rolled out by canary; MLflow's own client loads champion.
    /// A team that trains in notebooks: versions made with MLflow's Python client (plain files
    /// from a run, and an `mlflow.sklearn.log_model` logged model), taken over by a Model without
    /// `spec.train`, judged on their runs' metrics, promoted and served.
    @Test func registryOnlyVersionsMadeWithThePythonClientAreJudgedPromotedAndServed() async throws {
        let server = try await MLflowServer.shared()
        let temp = try TempDir()
        let model = Self.uniqueName("notebook")
        let agent = try ServeApplyTests.Agent(state: temp.sub("agent").path, log: temp.sub("agent.log"))
        defer { agent.stop() }
        let repo = try Self.repository(temp, server: server, model: model, agent: agent)
        try RegistryOnlyTests.registryOnly(repo)
        let notebook = """
            import json, sys
            import mlflow
            from mlflow import MlflowClient
            name, kind, folder, accuracy = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
            mlflow.set_experiment("notebooks/" + name)
            client = MlflowClient()
            with mlflow.start_run() as run:
                mlflow.log_metrics({"accuracy": accuracy, "log_loss": 0.4})
                if kind == "files":
                    mlflow.log_artifacts(folder, "model")
                else:
                    from sklearn.linear_model import LogisticRegression
                    mlflow.sklearn.log_model(LogisticRegression().fit([[0], [1]], [0, 1]), name="model")
            if kind == "files":
                try:
                    client.create_registered_model(name)
                except Exception:
                    pass
                v = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
            else:
                v = mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
            print(json.dumps({"version": int(v.version), "source": v.source}))
            """
        let v1 = try RegistryOnlyTests.trainElsewhere(repo, temp, "v1", epochs: 20, metrics: "{}")
        let first = try await Self.judge(server, notebook, [model, "files", v1.artifact, "0.8"])
        #expect(first["version"] as? Int == 1)
        let second = try await Self.judge(server, notebook, [model, "sklearn", "-", "0.5"])
        #expect((second["source"] as? String)?.hasPrefix("models:/") == true, "\(second)")

        // One pass takes the registered model over, judges both versions and serves v1.
        let state = temp.sub("state").path
        let apply = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(apply.status == 0, "\(apply.stdout)\n\(apply.stderr)")
        #expect(apply.stdout.contains("\(model): validate done: v1 validated"), "\(apply.stdout)")
        #expect(apply.stdout.contains("\(model): move-alias done: champion: unset → v1"), "\(apply.stdout)")
        #expect(apply.stdout.contains("v2 rejected (registered outside Capstan; no alias will point at it): accuracy >= 0.65 (accuracy = 0.5)"),
                "\(apply.stdout)")
        #expect(apply.stderr.contains("downloaded the files of v1 of \(model) from the registry into the artifact store"), "\(apply.stderr)")
        var polls = 0
        while agent.predict().0 != 200 && polls < 200 { usleep(100_000); polls += 1 }
        #expect(agent.predict() == (200, "1"))

        // MLflow's client sees the alias and the verdicts; the versions keep their own runs.
        let seen = try await Self.judge(server, """
            import json, sys
            from mlflow import MlflowClient
            c = MlflowClient()
            name = sys.argv[1]
            v = {int(x.version): x for x in c.search_model_versions(f"name = '{name}'")}
            print(json.dumps({"champion": int(c.get_model_version_by_alias(name, "champion").version),
                              "status": {k: x.tags.get("capstan.status") for k, x in v.items()},
                              "fingerprint": [k for k, x in v.items() if "capstan.fingerprint" in x.tags],
                              "digest": v[1].tags.get("capstan.artifact_digest", "")}))
            """, [model])
        #expect(seen["champion"] as? Int == 1)
        #expect(seen["status"] as? [String: String] == ["1": "validated", "2": "rejected"], "\(seen)")
        #expect((seen["fingerprint"] as? [Int])?.isEmpty == true, "Capstan never claims a version it did not make")
        #expect((seen["digest"] as? String)?.hasPrefix("sha256:") == true, "\(seen)")

        let again = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state])
        #expect(again.stdout.contains("No changes."), "\(again.stdout)")

        // A better notebook version rolls out by canary.
        let v3 = try RegistryOnlyTests.trainElsewhere(repo, temp, "v3", epochs: 200, metrics: "{}")
        #expect(try await Self.judge(server, notebook, [model, "files", v3.artifact, "0.9"])["version"] as? Int == 3)
        let rollout = try ServeApplyTests.applyUntil(repo, state: state, agent: agent) { $0.stdout.contains("churn-prod: promote done") }
        let text = rollout.map(\.stdout).joined()
        #expect(text.contains("\(model): move-alias done: champion: v1 → v3"), "\(text)")
        #expect(text.contains("churn-prod: promote done"), "\(text)")
        #expect(agent.predict() == (200, "3"))

        // A version whose run is still going waits for its run to end; `capstan.*` tags written
        // by hand on a version Capstan never judged decide nothing.
        let unfinished = try await Self.judge(server, """
            import json, sys
            from mlflow import MlflowClient
            name, folder = sys.argv[1], sys.argv[2]
            c = MlflowClient()
            exp = c.get_experiment_by_name("notebooks/" + name).experiment_id
            running = c.create_run(exp)
            c.log_metric(running.info.run_id, "accuracy", 0.99)
            c.log_metric(running.info.run_id, "log_loss", 0.1)
            c.log_artifacts(running.info.run_id, folder, "model")
            v4 = c.create_model_version(name, source=f"{running.info.artifact_uri}/model", run_id=running.info.run_id)
            done = c.create_run(exp)
            c.log_metric(done.info.run_id, "accuracy", 0.3)
            c.log_metric(done.info.run_id, "log_loss", 0.4)
            c.log_artifacts(done.info.run_id, folder, "model")
            c.set_terminated(done.info.run_id)
            v5 = c.create_model_version(name, source=f"{done.info.artifact_uri}/model", run_id=done.info.run_id)
            c.set_model_version_tag(name, v5.version, "capstan.status", "validated")
            c.set_model_version_tag(name, v5.version, "capstan.metrics", '{"accuracy": 0.99, "log_loss": 0.1}')
            print(json.dumps({"running": int(v4.version), "forged": int(v5.version)}))
            """, [model, v3.artifact])
        #expect(unfinished["running"] as? Int == 4 && unfinished["forged"] as? Int == 5, "\(unfinished)")
        let later = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(later.status == 0, "\(later.stdout)\n\(later.stderr)")
        #expect(!later.stdout.contains("validate \(model) v4"), "a version whose run is running is not judged: \(later.stdout)")
        #expect(later.stdout.contains("v5 rejected (registered outside Capstan; no alias will point at it): accuracy >= 0.65 (accuracy = 0.3)"),
                "\(later.stdout)")
        #expect(!later.stdout.contains("move-alias"), "\(later.stdout)")
    }

    @Test func theSklearnExampleTrainsServesAndRollsOutACanary() async throws {
        let server = try await MLflowServer.shared()
        let temp = try TempDir()
        // The Python that has mlflow and scikit-learn, first on PATH (as the example's README says).
        let bin = (try MLflowServer.findPython() as NSString).deletingLastPathComponent
        let path = ["PATH": bin + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin")]
        let agent = try ServeApplyTests.Agent(state: temp.sub("agent").path, log: temp.sub("agent.log"), environment: path)
        defer { agent.stop() }
        let model = Self.uniqueName("churn-sklearn")
        let repo = try GitRepo(at: temp.sub("repo"))
        let example = CLI.packageRoot.appendingPathComponent("examples/mlflow-sklearn")
        try repo.copy(example: example) { original in
            return original
                .replacingOccurrences(of: "http://127.0.0.1:5000", with: server.url)
                .replacingOccurrences(of: "http://127.0.0.1:7070", with: "http://127.0.0.1:\(agent.admin)")
                .replacingOccurrences(of: "name: churn-sklearn\n", with: "name: \(model)\n")
                .replacingOccurrences(of: "model: churn-sklearn\n", with: "model: \(model)\n")
                .replacingOccurrences(of: "pause: 10s", with: "pause: 2s")
                .replacingOccurrences(of: "minRequests: 20", with: "minRequests: 5")
        }
        try repo.commit("the scikit-learn example")
        let state = temp.sub("state").path

        func predict() -> (Int, String?) {
            var request = URLRequest(url: URL(string: "http://127.0.0.1:\(agent.gateway)/churn-prod/invocations")!)
            request.httpMethod = "POST"
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            request.httpBody = Data(#"{"dataframe_records": [{"tenure_months": 3, "monthly_charges": 99.5, "support_calls": 4}]}"#.utf8)
            let result = Mutex<(Int, String?)>((0, nil))
            let done = DispatchSemaphore(value: 0)
            URLSession.shared.dataTask(with: request) { data, response, _ in
                let http = response as? HTTPURLResponse
                let body = data.map { String(decoding: $0, as: UTF8.self) } ?? ""
                result.withLock { $0 = (http?.statusCode == 200 && body.contains("predictions") ? 200 : http?.statusCode ?? 0,
                                        http?.value(forHTTPHeaderField: "X-Capstan-Version")) }
                done.signal()
            }.resume()
            _ = done.wait(timeout: .now() + 20)
            return result.withLock { $0 }
        }

        let first = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state], environment: path)
        #expect(first.status == 0, "\(first.stdout)\n\(first.stderr)")
        #expect(first.stdout.contains("\(model): train done: v1 trained"), "\(first.stdout)")
        var polls = 0
        while predict().0 != 200 && polls < 300 { usleep(200_000); polls += 1 }
        #expect(predict() == (200, "1"), "\((try? String(contentsOf: agent.log, encoding: .utf8))?.suffix(3000) ?? "")")

        // Fewer trees do better here: v2 passes its gates and rolls out by canary.
        try ServeApplyTests.edit(repo, "models/churn/model.yaml") { $0.replacingOccurrences(of: "n_estimators: 50,", with: "n_estimators: 20,") }
        try repo.commit("20 trees")
        var results: [CLI.Result] = []
        for _ in 0..<60 {
            for _ in 0..<8 { _ = predict() }
            let r = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state], environment: path)
            results.append(r)
            if r.stdout.contains("churn-prod: promote done") || r.status != 0 { break }
            usleep(300_000)
        }
        let text = results.map(\.stdout).joined()
        #expect(text.contains("start-rollout done"), "\(text)\n\(results.last?.stderr ?? "")")
        #expect(text.contains("churn-prod: promote done"), "\(text)")
        #expect(predict() == (200, "2"))

        // MLflow's own client loads and runs what champion holds.
        let judged = try await Self.judge(server, """
            import json, sys
            import mlflow.pyfunc, pandas as pd
            model = mlflow.pyfunc.load_model(f"models:/{sys.argv[1]}@champion")
            out = model.predict(pd.DataFrame([{"tenure_months": 3.0, "monthly_charges": 99.5, "support_calls": 4.0}]))
            print(json.dumps({"predictions": [int(x) for x in out]}))
            """, [model])
        #expect((judged["predictions"] as? [Int])?.count == 1)
        #expect((try await Self.inventory(server, model))["aliases"] as? [String: Int] == ["champion": 2])
    }

    @Test func aWrongTokenIsRefusedWithoutShowingIt() async throws {
        let server = try await MLflowServer.sharedWithAuth()
        let temp = try TempDir()
        let state = temp.sub("state").path
        let model = Self.uniqueName("auth")
        let repo = try Self.repository(temp, server: server, model: model,
                                       registry: "{url: \"\(server.url)\", tokenEnv: CAPSTAN_TEST_MLFLOW_TOKEN}")
        let token = "not-the-token-\(UUID().uuidString)"
        let refused = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state], environment: ["CAPSTAN_TEST_MLFLOW_TOKEN": token])
        #expect(refused.status != 0)
        let output = refused.stdout + refused.stderr
        #expect(output.contains("HTTP 401"), "\(output)")
        #expect(output.contains(server.url), "\(output)")
        #expect(output.contains("CAPSTAN_TEST_MLFLOW_TOKEN"), "the error names the variable to fix: \(output)")
        #expect(!output.contains(token))

        // An unset variable is refused before anything is sent.
        let unset = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state])
        #expect(unset.status != 0)
        #expect(unset.stderr.contains("CAPSTAN_TEST_MLFLOW_TOKEN"), "\(unset.stderr)")

        // The right token works.
        let auth = try #require(server.auth)
        let accepted = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state], environment: ["CAPSTAN_TEST_MLFLOW_TOKEN": auth.token])
        #expect(accepted.status == 0, "\(accepted.stdout)\n\(accepted.stderr)")
        #expect(accepted.stdout.contains("+ train \(model)"), "\(accepted.stdout)")
    }

    @Test func anUnreachableServerIsATransientFailureThatTrainsNothing() async throws {
        let temp = try TempDir()
        let state = temp.sub("state").path
        let port = try Ports.free()
        let repo = try GitRepo(at: temp.sub("repo"))
        let example = CLI.packageRoot.appendingPathComponent("examples/quickstart")
        try repo.copy(example: example) { original in
            return original.replacingOccurrences(
                of: "    embedded: {}                     # SQLite registry in the state directory",
                with: "    mlflow: {url: \"http://127.0.0.1:\(port)\", timeout: 2s}")
        }
        try repo.commit("unreachable MLflow")
        let r = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(r.status != 0)
        let output = r.stdout + r.stderr
        #expect(output.contains("http://127.0.0.1:\(port)"), "\(output)")
        #expect(!output.contains("train done"), "\(output)")
        #expect(!FileManager.default.fileExists(atPath: state + "/runs/churn"), "nothing was trained")
    }
}
