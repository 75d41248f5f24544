import Foundation
import Testing
@testable import CapstanTestSupport

/// Registry-only models (a Model without `spec.train`) on the embedded registry: versions made
/// outside Capstan, registered with `capstan register`, judged on the Model's gates, promoted by
/// its aliases and served like any other version.
@Suite(.serialized) struct RegistryOnlyTests {
    /// The quick start's Model without its `train` and `retention`: a team that trains elsewhere.
    static func registryOnly(_ repo: GitRepo) throws {
        try ServeApplyTests.edit(repo, "models/churn/model.yaml") { text in
            var lines = text.components(separatedBy: "\n")
            guard let start = lines.firstIndex(of: "  train:"), let end = lines.firstIndex(of: "  validate:") else { return text }
            lines.removeSubrange(start..<end)
            return lines.filter { !$0.hasPrefix("  retention:") }.joined(separator: "\n")
        }
        try repo.commit("trained elsewhere: Capstan judges, promotes and serves")
    }

    /// What a notebook does: the quick start's training run by hand (`epochs` makes the files
    /// differ), its metrics replaced by `metrics`. Returns the output folder and metrics file.
    static func trainElsewhere(_ repo: GitRepo, _ temp: TempDir, _ label: String, epochs: Int,
                               metrics: String) throws -> (artifact: String, metrics: String) {
        let out = temp.sub("\(label)-model").path
        let params = temp.sub("\(label)-params.json").path
        let metricsFile = temp.sub("\(label)-metrics.json").path
        try #"{"learning_rate": 0.3, "epochs": \#(epochs), "seed": 7}"#.write(toFile: params, atomically: true, encoding: .utf8)
        let r = try Shell.run("python3", ["models/churn/train.py"], in: repo.url, environment: [
            "CAPSTAN_OUTPUT_DIR": out, "CAPSTAN_METRICS_FILE": temp.sub("\(label)-own-metrics.json").path, "CAPSTAN_PARAMS_FILE": params,
        ])
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        try metrics.write(toFile: metricsFile, atomically: true, encoding: .utf8)
        return (out, metricsFile)
    }

    @Test func registeredVersionsAreJudgedPromotedAndServedByCanary() throws {
        let temp = try TempDir()
        let state = temp.sub("state").path
        let agent = try ServeApplyTests.Agent(state: temp.sub("agent").path, log: temp.sub("agent.log"))
        defer { agent.stop() }
        let repo = try ServeApplyTests.repository(temp, agent: agent)
        try Self.registryOnly(repo)

        // Nothing registered yet: the alias has nothing to point at, and the plan says what to do.
        let empty = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state])
        #expect(empty.stdout.contains("alias champion (latest) has nothing to point at: the model has no versions in the registry yet"), "\(empty.stdout)")

        let v1 = try Self.trainElsewhere(repo, temp, "v1", epochs: 20, metrics: #"{"accuracy": 0.8, "log_loss": 0.4}"#)
        let registered = try CLI.run(["register", "churn", "--artifact", v1.artifact, "--metrics", v1.metrics, "--param", "epochs=20",
                                      "--state-dir", state])
        #expect(registered.status == 0, "\(registered.stdout)\n\(registered.stderr)")
        #expect(registered.stdout.contains("Registered v1 of churn"), "\(registered.stdout)")

        let first = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(first.status == 0, "\(first.stdout)\n\(first.stderr)")
        #expect(first.stdout.contains("v1 was registered outside Capstan; judging it on its metrics (it passes)"), "\(first.stdout)")
        #expect(first.stdout.contains("churn: validate done: v1 validated"), "\(first.stdout)")
        #expect(first.stdout.contains("churn: move-alias done: champion: unset → v1"), "\(first.stdout)")
        #expect(first.stdout.contains("churn-prod: create-endpoint done"), "\(first.stdout)")
        var polls = 0
        while agent.predict().0 != 200 && polls < 200 { usleep(100_000); polls += 1 }
        #expect(agent.predict() == (200, "1"), "the registered files serve, with the serving code of the commit")

        // A worse version is rejected by the gates; nothing fails and nothing moves.
        let v2 = try Self.trainElsewhere(repo, temp, "v2", epochs: 3, metrics: #"{"accuracy": 0.5, "log_loss": 0.4}"#)
        #expect(try CLI.run(["register", "churn", "--artifact", v2.artifact, "--metrics", v2.metrics, "--state-dir", state]).status == 0)
        let rejected = try CLI.run(["apply", "--repo", repo.path, "--state-dir", state])
        #expect(rejected.status == 0, "\(rejected.stdout)\n\(rejected.stderr)")
        #expect(rejected.stdout.contains("v2 rejected (registered outside Capstan; no alias will point at it): accuracy >= 0.65 (accuracy = 0.5)"),
                "\(rejected.stdout)")
        #expect(!rejected.stdout.contains("move-alias"), "\(rejected.stdout)")
        #expect(agent.predict() == (200, "1"))

        // A better one takes over by canary while requests flow.
        let v3 = try Self.trainElsewhere(repo, temp, "v3", epochs: 200, metrics: #"{"accuracy": 0.85, "log_loss": 0.35}"#)
        #expect(try CLI.run(["register", "churn", "--artifact", v3.artifact, "--metrics", v3.metrics, "--state-dir", state]).status == 0)
        let rollout = try ServeApplyTests.applyUntil(repo, state: state, agent: agent) { $0.stdout.contains("churn-prod: promote done") }
        let text = rollout.map(\.stdout).joined()
        #expect(text.contains("churn: move-alias done: champion: v1 → v3"), "\(text)")
        #expect(text.contains("start-rollout done"), "\(text)")
        #expect(text.contains("churn-prod: promote done"), "\(text)")
        #expect(agent.predict() == (200, "3"))

        // Promotion by pull request works on registered versions too: pinning the rejected v2
        // is blocked, pinning v1 rolls back to it.
        try ServeApplyTests.edit(repo, "models/churn/model.yaml") { $0.replacingOccurrences(of: "champion: latest", with: "champion: 2") }
        try repo.commit("pin v2")
        let blocked = try CLI.run(["plan", "--repo", repo.path, "--state-dir", state])
        #expect(blocked.stdout.contains("alias champion is pinned to v2, but v2 was rejected by its gates"), "\(blocked.stdout)")

        let status = try CLI.run(["status", "--state-dir", state])
        #expect(status.stdout.contains("aliases: champion → 3"), "\(status.stdout)")
        #expect(status.stdout.contains("rejected"), "\(status.stdout)")
        let history = try CLI.run(["history", "--state-dir", state])
        #expect(history.stdout.contains("register-version"), "\(history.stdout)")
    }

    @Test func badRegistrationsAreRefusedAndRegisterNothing() throws {
        let temp = try TempDir()
        let state = temp.sub("state").path
        let folder = temp.sub("model").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try "weights".write(toFile: folder + "/model.bin", atomically: true, encoding: .utf8)
        let good = temp.sub("metrics.json").path
        try #"{"accuracy": 0.9}"#.write(toFile: good, atomically: true, encoding: .utf8)
        let notAnObject = temp.sub("list.json").path
        try "[0.9]".write(toFile: notAnObject, atomically: true, encoding: .utf8)

        let badName = try CLI.run(["register", "Churn_Model", "--artifact", folder, "--metrics", good, "--state-dir", state])
        #expect(badName.status == 64, "\(badName.stderr)")
        #expect(badName.stderr.contains("'Churn_Model' is not a model name"), "\(badName.stderr)")

        let noFolder = try CLI.run(["register", "churn", "--artifact", temp.sub("missing").path, "--metrics", good, "--state-dir", state])
        #expect(noFolder.status == 1)
        #expect(noFolder.stderr.contains("no such folder"), "\(noFolder.stderr)")

        let noMetrics = try CLI.run(["register", "churn", "--artifact", folder, "--metrics", temp.sub("none.json").path, "--state-dir", state])
        #expect(noMetrics.status == 1)
        #expect(noMetrics.stderr.contains("--metrics \(temp.sub("none.json").path): no such file"), "\(noMetrics.stderr)")

        let wrongShape = try CLI.run(["register", "churn", "--artifact", folder, "--metrics", notAnObject, "--state-dir", state])
        #expect(wrongShape.status == 1)
        #expect(wrongShape.stderr.contains("--metrics \(notAnObject)"), "\(wrongShape.stderr)")

        let badParam = try CLI.run(["register", "churn", "--artifact", folder, "--metrics", good, "--param", "epochs", "--state-dir", state])
        #expect(badParam.status == 64)
        #expect(badParam.stderr.contains("--param 'epochs' is not key=value"), "\(badParam.stderr)")

        // None of these registered anything (the state folder was not even created).
        #expect(!FileManager.default.fileExists(atPath: state + "/capstan.db"))

        // The same files twice are one version; with other metrics they are refused.
        #expect(try CLI.run(["register", "churn", "--artifact", folder, "--metrics", good, "--state-dir", state]).status == 0)
        let again = try CLI.run(["register", "churn", "--artifact", folder, "--metrics", good, "--state-dir", state])
        #expect(again.status == 0)
        #expect(again.stdout.contains("These files are v1 of churn already (trained); nothing changed."), "\(again.stdout)")
        let other = temp.sub("other.json").path
        try #"{"accuracy": 0.99}"#.write(toFile: other, atomically: true, encoding: .utf8)
        let conflicting = try CLI.run(["register", "churn", "--artifact", folder, "--metrics", other, "--state-dir", state])
        #expect(conflicting.status == 1)
        #expect(conflicting.stderr.contains("these files are v1 of churn already, registered with other metrics"), "\(conflicting.stderr)")
        let status = try CLI.run(["status", "--state-dir", state])
        #expect(status.stdout.contains("1        trained"), "\(status.stdout)")
        #expect(!status.stdout.contains("\n  2 "), "\(status.stdout)")
    }

    @Test func aModelWithoutTrainCannotAskForAValidationCommandOrRetention() throws {
        let temp = try TempDir()
        let repo = try GitRepo(at: temp.sub("repo"))
        try repo.write("models/churn.yaml", """
            apiVersion: capstan/v1
            kind: Model
            metadata: {name: churn}
            spec:
              validate:
                command: [python3, eval.py]
              retention: {keepVersions: 3}

            """)
        try repo.commit("registry-only with a command")
        let r = try CLI.run(["validate", repo.path])
        #expect(r.status == 1)
        #expect(r.stdout.contains("models/churn.yaml:6:14: error: spec.validate.command is set, but the model has no spec.train"), "\(r.stdout)")
        #expect(r.stdout.contains("[registry-only-unsupported]"), "\(r.stdout)")
        #expect(r.stdout.contains("models/churn.yaml:7:14: error: spec.retention is set"), "\(r.stdout)")
    }
}
