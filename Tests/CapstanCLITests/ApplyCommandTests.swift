import Foundation
import Testing
@testable import CapstanTestSupport

/// A model repository whose training script does what a file in the repository says: succeed
/// with given metrics, fail, sleep, print garbage metrics or a flood of output.
final class TrainingRepo {
    let temp: TempDir
    let repo: GitRepo
    var state: String { temp.sub("state").path }

    /// The training script: reads `behavior.json` next to it (part of the model folder, so
    /// changing it retrains).
    static let trainScript = #"""
        import json, os, sys, time
        here = os.path.dirname(os.path.abspath(__file__))
        b = json.load(open(os.path.join(here, "behavior.json")))
        params = json.load(open(os.environ["CAPSTAN_PARAMS_FILE"]))
        print("training", os.environ["CAPSTAN_MODEL"], "v" + os.environ["CAPSTAN_VERSION"], "lr", params.get("learning_rate"), flush=True)
        flaky = os.environ.get("FLAKY_FILE")
        if flaky and os.path.exists(flaky):
            print("flaky failure", flush=True); sys.exit(5)
        tempfail = os.environ.get("TEMPFAIL_FILE")
        if tempfail and os.path.exists(tempfail):
            how = open(tempfail).read().strip()
            print("not now:", how, flush=True)
            if how == "kill": os.kill(os.getpid(), 9)
            sys.exit(75)
        sleep_file = os.environ.get("SLEEP_FILE")
        if sleep_file and os.path.exists(sleep_file):
            open(os.path.join(os.environ["MARKER_DIR"], "started"), "w").write(str(os.getpid()))
            time.sleep(300)
        if b.get("sleep"):
            open(os.path.join(os.environ["MARKER_DIR"], "started"), "w").write(str(os.getpid()))
            time.sleep(b["sleep"])
        if b.get("flood"):
            line = "x" * 1023
            for _ in range(b["flood"]): print(line)
        if b.get("fail"):
            print("Traceback (most recent call last):\nValueError: " + b["fail"], flush=True); sys.exit(3)
        out = os.environ["CAPSTAN_OUTPUT_DIR"]
        open(os.path.join(out, "model.json"), "w").write(json.dumps({"lr": params.get("learning_rate")}))
        if b.get("replace_output"):
            # The output folder swapped for a symlink to a folder of files elsewhere.
            elsewhere = os.path.join(os.environ["MARKER_DIR"], "elsewhere")
            os.makedirs(elsewhere, exist_ok=True)
            open(os.path.join(elsewhere, "model.json"), "w").write("{}")
            os.remove(os.path.join(out, "model.json")); os.rmdir(out); os.symlink(elsewhere, out)
        m = os.environ["CAPSTAN_METRICS_FILE"]
        special = b.get("special_metrics")
        if special == "fifo":
            os.mkfifo(m)
        elif special == "zero-link":
            os.symlink("/dev/zero", m)
        elif special == "device":
            os.mknod(m, 0o644 | __import__("stat").S_IFCHR, os.makedev(1, 5))
        elif "garbage" in b:
            open(m, "w").write(b["garbage"])
        else:
            open(m, "w").write(json.dumps({"accuracy": b.get("accuracy", 0.9), "loss": 0.3}))
        print("done", flush=True)
        """#

    init(behavior: String = #"{"accuracy": 0.9}"#, champion: String = "latest", timeout: String = "1m",
         extraTrain: String = "", validate: String = "validate: {metrics: {accuracy: {min: 0.8}}}") throws {
        temp = try TempDir()
        repo = try GitRepo(at: temp.sub("repo"))
        try repo.write("capstan.yaml", """
            apiVersion: capstan/v1
            kind: Config
            metadata: {name: default}
            spec:
              manifests: [models]
              policy: {retry: {initial: 1h, max: 2h}}

            """)
        try writeModel(learningRate: "0.1", champion: champion, timeout: timeout, extraTrain: extraTrain, validate: validate)
        try repo.write("models/churn/train.py", Self.trainScript)
        try repo.write("models/churn/behavior.json", behavior)
        try repo.write("data/x.csv", "a,b\n1,2\n")
        try repo.write("README.md", "# models\n")
        try repo.commit("Churn model")
    }

    func writeModel(learningRate: String, champion: String = "latest", timeout: String = "1m", extraTrain: String = "",
                    validate: String = "validate: {metrics: {accuracy: {min: 0.8}}}") throws {
        try repo.write("models/churn/model.yaml", """
            apiVersion: capstan/v1
            kind: Model
            metadata: {name: churn}
            spec:
              train:
                command: [python3, train.py]
                workdir: models/churn
                inputs: [models/churn, data/x.csv]
                params: {learning_rate: \(learningRate)}
                timeout: \(timeout)
                env: {MARKER_DIR: \(temp.url.path)}
            \(extraTrain)
              \(validate)
              aliases:
                champion: \(champion)

            """)
    }

    @discardableResult
    func capstan(_ arguments: [String], environment: [String: String] = [:]) throws -> CLI.Result {
        try CLI.run(arguments + ["--repo", repo.path, "--state-dir", state], environment: environment)
    }

    /// Starts `capstan apply` in the background with a training that sleeps until `SLEEP_FILE`
    /// is removed; returns once the training runs, with the process, its log and the training's pid.
    func startSleepingApply(sleepFile: String) throws -> (process: Process, log: URL, handle: FileHandle, trainingPID: Int32) {
        let process = Process()
        process.executableURL = CLI.binary
        process.arguments = ["apply", "--repo", repo.path, "--state-dir", state]
        var environment = ProcessInfo.processInfo.environment
        environment["SLEEP_FILE"] = sleepFile
        process.environment = environment
        let log = temp.sub("first.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let started = temp.sub("started").path
        var polls = 0
        while !FileManager.default.fileExists(atPath: started) && polls < 600 { usleep(50_000); polls += 1 }
        let pid = try #require(Int32(try String(contentsOfFile: started, encoding: .utf8)))
        return (process, log, handle, pid)
    }

    func status() throws -> [String: Any] {
        let r = try CLI.run(["status", "--state-dir", state, "--format", "json"])
        #expect(r.status == 0, "\(r.stderr)")
        return try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    }

    func model(_ name: String = "churn") throws -> [String: Any] {
        let models = try #require(try status()["models"] as? [[String: Any]])
        return try #require(models.first { $0["name"] as? String == name })
    }

    func versions() throws -> [[String: Any]] {
        try #require(try model()["versions"] as? [[String: Any]])
    }
}

@Suite(.serialized) struct ApplyCommandTests {
    @Test func applyTrainsValidatesAndPromotesThenIsANoOp() throws {
        let t = try TrainingRepo()
        let first = try t.capstan(["apply"])
        #expect(first.status == 0, "\(first.stdout)\n\(first.stderr)")
        #expect(first.stdout.contains("+ register model churn"), "\(first.stdout)")
        #expect(first.stdout.contains("churn: train done: v1 trained"), "\(first.stdout)")
        #expect(first.stdout.contains("churn: validate done: v1 validated"), "\(first.stdout)")
        #expect(first.stdout.contains("churn: move-alias done: champion: unset → v1"), "\(first.stdout)")
        #expect(first.stderr.contains("[churn v1] training churn v1 lr 0.1"), "\(first.stderr)")

        let model = try t.model()
        #expect(model["aliases"] as? [String: Int] == ["champion": 1])
        let versions = try t.versions()
        #expect(versions.count == 1)
        #expect(versions[0]["status"] as? String == "validated")
        #expect((versions[0]["metrics"] as? [String: Double])?["accuracy"] == 0.9)
        #expect((versions[0]["commit"] as? String) == (try t.repo.rev("HEAD")))
        let condition = try #require((model["conditions"] as? [[String: Any]])?.first)
        #expect(condition["type"] as? String == "Ready")

        let second = try t.capstan(["apply"])
        #expect(second.status == 0)
        #expect(second.stdout.contains("No changes."), "\(second.stdout)")
        #expect(second.stdout.contains("Apply complete: no changes"), "\(second.stdout)")
        #expect(try t.versions().count == 1)

        let history = try CLI.run(["history", "--state-dir", t.state, "--format", "json"])
        #expect(history.status == 0)
        for action in ["register", "create-version", "trained", "validated", "move-alias"] {
            #expect(history.stdout.contains("\"\(action)\""), "missing \(action) in \(history.stdout)")
        }
    }

    /// The default state directory is `.capstan`, relative to where capstan runs.
    @Test func aRelativeStateDirectoryWorks() throws {
        let t = try TrainingRepo()
        let r = try CLI.run(["apply", "--repo", t.repo.path], in: t.temp.url)
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("churn: train done: v1 trained"), "\(r.stdout)")
        #expect(FileManager.default.fileExists(atPath: t.temp.sub(".capstan/capstan.db").path))
        let relative = try CLI.run(["apply", "--repo", t.repo.path, "--state-dir", "other-state"], in: t.temp.url)
        #expect(relative.status == 0, "\(relative.stdout)\n\(relative.stderr)")
        #expect(relative.stdout.contains("churn: train done: v1 trained"), "\(relative.stdout)")
    }

    @Test func aParamChangeRetrainsAndThePlanSaysWhy() throws {
        let t = try TrainingRepo()
        #expect(try t.capstan(["apply"]).status == 0)
        try t.writeModel(learningRate: "0.2")
        try t.repo.commit("Faster learning")
        let plan = try t.capstan(["plan", "--detailed-exitcode"])
        #expect(plan.status == 2, "\(plan.stderr)")
        #expect(plan.stdout.contains("param learning_rate changed 0.1 → 0.2"), "\(plan.stdout)")
        let json = try t.capstan(["plan", "--format", "json"])
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect(doc["format_version"] as? Int == 1)
        #expect(doc["commit"] as? String == (try t.repo.rev("HEAD")))
        let changes = try #require(doc["changes"] as? [[String: Any]])
        let train = try #require(changes.first { $0["action"] as? String == "train" })
        #expect(train["kind"] as? String == "Model")
        #expect(train["name"] as? String == "churn")
        #expect((train["reason"] as? String)?.contains("learning_rate") == true)

        let apply = try t.capstan(["apply"])
        #expect(apply.status == 0, "\(apply.stdout)\n\(apply.stderr)")
        #expect(try t.model()["aliases"] as? [String: Int] == ["champion": 2])
        let noChanges = try t.capstan(["plan", "--detailed-exitcode"])
        #expect(noChanges.status == 0)
    }

    @Test func aPromotionInsideTheInputFolderNeverRetrains() throws {
        let t = try TrainingRepo()
        #expect(try t.capstan(["apply"]).status == 0)
        try t.writeModel(learningRate: "0.2")
        try t.repo.commit("v2")
        #expect(try t.capstan(["apply"]).status == 0)
        try t.writeModel(learningRate: "0.2", champion: "1")
        try t.repo.commit("Promote v1 back to champion")
        let plan = try t.capstan(["plan"])
        #expect(plan.stdout.contains("~ move alias churn@champion"), "\(plan.stdout)")
        #expect(!plan.stdout.contains("+ train"), "\(plan.stdout)")
        #expect(plan.stdout.contains("0 to train"), "\(plan.stdout)")
        #expect(try t.capstan(["apply"]).status == 0)
        #expect(try t.model()["aliases"] as? [String: Int] == ["champion": 1])
        #expect(try t.versions().count == 2)
    }

    @Test func aFailedTrainingIsClearKeepsTheAliasAndBacksOff() throws {
        let t = try TrainingRepo()
        #expect(try t.capstan(["apply"]).status == 0)
        try t.repo.write("models/churn/behavior.json", #"{"fail": "broken feature column"}"#)
        try t.repo.commit("Break training")
        let failed = try t.capstan(["apply"])
        #expect(failed.status == 1)
        #expect(failed.stdout.contains("churn: train FAILED: v2: training exited with status 3"), "\(failed.stdout)")
        #expect(failed.stderr.contains("did not converge"), "\(failed.stderr)")
        #expect(try t.model()["aliases"] as? [String: Int] == ["champion": 1])
        let versions = try t.versions()
        #expect(versions.map { $0["status"] as? String } == ["validated", "failed"])
        #expect((versions[1]["log_tail"] as? String)?.contains("ValueError: broken feature column") == true)

        let plan = try t.capstan(["plan"])
        #expect(plan.stdout.contains("failed once; retrying after a backoff of 1h"), "\(plan.stdout)")
        let again = try t.capstan(["apply"])
        #expect(again.status == 0)
        #expect(try t.versions().count == 2)

        try t.repo.write("models/churn/behavior.json", #"{"accuracy": 0.95}"#)
        try t.repo.commit("Fix training")
        let fixed = try t.capstan(["apply"])
        #expect(fixed.status == 0, "\(fixed.stdout)")
        #expect(try t.model()["aliases"] as? [String: Int] == ["champion": 3])
    }

    @Test func retryFailedRetrainsTheSameVersion() throws {
        let t = try TrainingRepo(extraTrain: "")
        let flaky = t.temp.sub("flaky").path
        _ = FileManager.default.createFile(atPath: flaky, contents: Data())
        let env = ["FLAKY_FILE": flaky]
        // FLAKY_FILE is read from the step's environment: pass it through the spec's env.
        try t.writeModel(learningRate: "0.1", extraTrain: "    secretEnv: {FLAKY_FILE: FLAKY_FILE}")
        try t.repo.commit("flaky")
        #expect(try t.capstan(["apply"], environment: env).status == 1)
        try FileManager.default.removeItem(atPath: flaky)
        let retry = try t.capstan(["apply", "--retry-failed"], environment: env)
        #expect(retry.status == 0, "\(retry.stdout)")
        let versions = try t.versions()
        #expect(versions.count == 1)
        #expect(versions[0]["status"] as? String == "validated")
        #expect(versions[0]["attempts"] as? Int == 2)
    }

    /// Exit 75 (EX_TEMPFAIL) and a SIGKILL Capstan did not send (the out-of-memory killer's) are
    /// transient: the version is not marked failed, gets no backoff, and the next pass trains it
    /// again (no --retry-failed needed); the model's condition says so with class and reason.
    @Test(arguments: ["75", "kill"])
    func aTemporaryFailureOfTheTrainingIsRetriedWithoutBackoff(_ how: String) throws {
        let t = try TrainingRepo(extraTrain: "")
        let file = t.temp.sub("tempfail").path
        try Data(how.utf8).write(to: URL(fileURLWithPath: file))
        let env = ["TEMPFAIL_FILE": file]
        try t.writeModel(learningRate: "0.1", extraTrain: "    secretEnv: {TEMPFAIL_FILE: TEMPFAIL_FILE}")
        try t.repo.commit("may say not now")
        let first = try t.capstan(["apply"], environment: env)
        #expect(first.status == 1, "\(first.stdout)\(first.stderr)")
        #expect(first.stdout.contains("FAILED (transient)"), "\(first.stdout)")
        #expect(first.stdout.contains(how == "75" ? "exited with status 75 (EX_TEMPFAIL" : "was killed by SIGKILL, which Capstan did not send"), "\(first.stdout)")
        var versions = try t.versions()
        #expect(versions.count == 1)
        #expect(versions[0]["status"] as? String == "training", "\(versions)")
        let status = try CLI.run(["status", "--state-dir", t.state, "--format", "json"])
        #expect(status.stdout.contains(#""class":"transient""#) || status.stdout.contains(#""class" : "transient""#), "\(status.stdout)")
        #expect(status.stdout.contains("TrainingTemporaryFailure"), "\(status.stdout)")
        // The next pass, without --retry-failed, trains the same version again.
        try FileManager.default.removeItem(atPath: file)
        let again = try t.capstan(["apply"], environment: env)
        #expect(again.status == 0, "\(again.stdout)\(again.stderr)")
        versions = try t.versions()
        #expect(versions.count == 1)
        #expect(versions[0]["status"] as? String == "validated", "\(versions)")
    }

    @Test func aTrainingThatRunsTooLongIsStoppedWithItsChildren() throws {
        let t = try TrainingRepo(behavior: #"{"sleep": 300}"#, timeout: "2s")
        let r = try t.capstan(["apply"])
        #expect(r.status == 1)
        #expect(r.stdout.contains("ran longer than its timeout of 2s"), "\(r.stdout)")
        let pid = try #require(Int32(String(contentsOfFile: t.temp.sub("started").path, encoding: .utf8)))
        #expect(!Self.isRunning(pid))
    }

    @Test func garbageMetricsFailTheTraining() throws {
        let t = try TrainingRepo(behavior: #"{"garbage": "accuracy: high"}"#)
        let r = try t.capstan(["apply"])
        #expect(r.status == 1)
        #expect(r.stdout.contains("/metrics.json' is not a JSON object of numbers (it starts with 'accuracy: high')"), "\(r.stdout)")
        let strings = try TrainingRepo(behavior: #"{"garbage": "{\"accuracy\": \"0.9\"}"}"#)
        let s = try strings.capstan(["apply"])
        #expect(s.status == 1)
        #expect(s.stdout.contains(#"metric 'accuracy' in the metrics file '"#), "\(s.stdout)")
        #expect(s.stdout.contains(#"/metrics.json' is the string "0.9", not a number; write it without quotes"#), "\(s.stdout)")
    }

    /// Metric names follow one rule (letters, digits, `_ . - /`, 1 to 128 characters) and each
    /// is written once; the error names the key, escaped, on one line.
    @Test(arguments: [
        (#"{"a\u0000b": 1}"#, #"has a metric named 'a\0b', which is not a metric name: it contains '\0' (a control character)"#),
        (#"{"a\nb": 1}"#, #"has a metric named 'a\nb', which is not a metric name: it contains '\n' (a control character)"#),
        (#"{"": 1}"#, "has a metric named '', which is not a metric name: it is empty"),
        ("{\"\(String(repeating: "m", count: 129))\": 1}", "which is not a metric name: it is 129 characters long; the limit is 128"),
        (#"{"accuracy": 0.9, "accuracy": 0.95}"#, "has metric 'accuracy' more than once; write each metric once"),
    ])
    func metricNamesAreChecked(_ metrics: String, _ expected: String) throws {
        let behavior = String(decoding: try JSONSerialization.data(withJSONObject: ["garbage": metrics]), as: UTF8.self)
        let t = try TrainingRepo(behavior: behavior)
        let r = try t.capstan(["apply"])
        #expect(r.status == 1)
        let line = try #require(r.stdout.split(separator: "\n").first { $0.contains("churn: train FAILED") }, "\(r.stdout)")
        #expect(line.contains(expected), "\(r.stdout)")
        #expect(!r.stdout.contains("\0"))
        let versions = try t.versions()
        #expect(versions.map { $0["status"] as? String } == ["failed"])
        #expect((versions[0]["metrics"] as? [String: Double])?.isEmpty == true)
        #expect((versions[0]["log_tail"] as? String)?.contains(expected) == true, "\(versions)")
    }

    /// A FIFO, a symlink to /dev/zero or a device as the metrics file: refused at once, named,
    /// without blocking on the FIFO or reading the device.
    @Test(arguments: [
        ("fifo", "is a FIFO (named pipe), not a regular file; write a JSON object of numbers into the file itself"),
        ("zero-link", "is a symlink, not a regular file; write a JSON object of numbers into the file itself"),
        ("device", "is a character device, not a regular file"),
    ])
    func aMetricsFileThatIsNotARegularFileIsRefused(_ kind: String, _ expected: String) throws {
        if kind == "device" && getuid() != 0 { return }  // mknod of a device needs root
        let t = try TrainingRepo(behavior: #"{"special_metrics": "\#(kind)"}"#)
        let r = try t.capstan(["apply"])
        #expect(r.status == 1)
        #expect(r.stdout.contains("/runs/churn/v1-a1/metrics.json' \(expected)"), "\(r.stdout)")
        #expect(!r.stdout.contains("NSCocoaErrorDomain") && !r.stdout.contains("permission"), "\(r.stdout)")
    }

    /// A training that replaces `$CAPSTAN_OUTPUT_DIR` with a symlink stores nothing: the link's
    /// target is not its output.
    @Test func anOutputFolderReplacedByASymlinkIsRefused() throws {
        let t = try TrainingRepo(behavior: #"{"replace_output": true}"#)
        let r = try t.capstan(["apply"])
        #expect(r.status == 1)
        #expect(r.stdout.contains("/runs/churn/v1-a1/output' (CAPSTAN_OUTPUT_DIR) with a symlink"), "\(r.stdout)")
        #expect(try t.versions().map { $0["status"] as? String } == ["failed"])
        #expect(try t.versions().first?["artifact_digest"] == nil)
        let stored = (try? FileManager.default.contentsOfDirectory(atPath: t.state + "/artifacts/sha256")) ?? []
        #expect(stored.isEmpty, "\(stored)")
    }

    /// Links that look inside one by one but lead four folders above the tree through each
    /// other, to a file that does not exist yet: refused before the training runs (which would
    /// write through them into the state folder).
    /// (In a declared input: a step gets only its workdir and declared inputs, and links elsewhere
    /// in the repository never reach it.)
    @Test func aDanglingSymlinkChainOutOfTheTreeIsRefused() throws {
        let t = try TrainingRepo()
        try t.repo.symlink("data/a/b/c/d/up", to: "../../../..")
        try t.repo.symlink("data/a/b/c/d/out", to: "up/../../../../escaped")
        try t.repo.write("models/churn/train.py", """
            import os
            open(os.path.join(os.getcwd(), "../../data/a/b/c/d/out"), "w").write("written through the chain")
            open(os.path.join(os.environ["CAPSTAN_OUTPUT_DIR"], "m"), "w").write("m")
            """)
        try t.writeModel(learningRate: "0.1")
        let model = try String(contentsOfFile: t.repo.path + "/models/churn/model.yaml", encoding: .utf8)
        try t.repo.write("models/churn/model.yaml", model.replacingOccurrences(of: "inputs: [models/churn, data/x.csv]", with: "inputs: [models/churn, data]"))
        try t.repo.commit("a chain of links")
        let r = try t.capstan(["apply"])
        #expect(r.status == 1, "\(r.stdout)")
        #expect(r.stdout.contains("symlink 'data/a/b/c/d/out' points outside the tree ('up/../../../../escaped', through other links)"), "\(r.stdout)\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: t.state + "/escaped"))
        #expect(!FileManager.default.fileExists(atPath: t.temp.sub("escaped").path))
    }

    /// A secret of fewer than 4 characters cannot be redacted reliably: the pass refuses it
    /// before anything runs, naming the model and both variables but not the value.
    @Test func aSecretShorterThanFourCharactersIsRefusedBeforeAnythingRuns() throws {
        let t = try TrainingRepo()
        try t.writeModel(learningRate: "0.1", extraTrain: "    secretEnv: {API_TOKEN: CAPSTAN_TEST_TOKEN}")
        try t.repo.commit("needs a token")
        let r = try t.capstan(["apply"], environment: ["CAPSTAN_TEST_TOKEN": "Q7z"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("model churn: secretEnv API_TOKEN is taken from the environment variable CAPSTAN_TEST_TOKEN, whose value has only 3 characters"), "\(r.stderr)")
        #expect(r.stderr.contains("set a longer secret in CAPSTAN_TEST_TOKEN"), "\(r.stderr)")
        #expect(!r.stdout.contains("Q7z") && !r.stderr.contains("Q7z"))
        #expect(!r.stdout.contains("register model"), "nothing is planned: \(r.stdout)")
        #expect((try t.status()["models"] as? [Any])?.isEmpty == true)
        let fixed = try t.capstan(["apply"], environment: ["CAPSTAN_TEST_TOKEN": "Q7z-longer"])
        #expect(fixed.status == 0, "\(fixed.stdout)\n\(fixed.stderr)")
    }

    @Test func hugeOutputIsStreamedAndBounded() throws {
        let t = try TrainingRepo(behavior: #"{"flood": 70000, "accuracy": 0.9}"#)
        let r = try t.capstan(["apply"])
        #expect(r.status == 0, "\(r.stdout)")
        let logs = t.temp.sub("state/logs/churn")
        let files = try FileManager.default.contentsOfDirectory(atPath: logs.path)
        #expect(files.count == 1)
        let size = try FileManager.default.attributesOfItem(atPath: logs.appendingPathComponent(files[0]).path)[.size] as? Int ?? 0
        #expect(size >= 50 * 1_000_000)
        #expect(size < 51 * 1_048_576)
        let tail = try String(contentsOf: logs.appendingPathComponent(files[0]), encoding: .utf8).suffix(200)
        #expect(tail.contains("output truncated"), "\(tail)")
    }

    @Test func aCandidateFailingItsGatesIsRejectedAndNeverAliased() throws {
        let t = try TrainingRepo(behavior: #"{"accuracy": 0.5}"#)
        let r = try t.capstan(["apply"])
        #expect(r.status == 1)
        #expect(r.stdout.contains("v1 rejected: accuracy >= 0.8 (accuracy = 0.5)"), "\(r.stdout)")
        let model = try t.model()
        #expect((model["aliases"] as? [String: Int])?.isEmpty == true)
        let condition = try #require((model["conditions"] as? [[String: Any]])?.first)
        #expect(condition["type"] as? String == "Degraded")
        #expect(condition["reason"] as? String == "CandidateRejected")
    }

    @Test func aSavedPlanRunsOnlyAgainstTheStateItWasMadeFrom() throws {
        let t = try TrainingRepo()
        let planFile = t.temp.sub("plan.json").path
        #expect(try t.capstan(["plan", "--out", planFile]).status == 0)
        let applied = try CLI.run(["apply", planFile, "--state-dir", t.state])
        #expect(applied.status == 0, "\(applied.stdout)\n\(applied.stderr)")
        #expect(try t.versions().count == 1)

        // The registry moved since: the same plan is refused.
        let stale = try CLI.run(["apply", planFile, "--state-dir", t.state])
        #expect(stale.status == 1)
        #expect(stale.stderr.contains("the registry changed since the saved plan was made"), "\(stale.stderr)")

        // A new commit since: refused too.
        try t.writeModel(learningRate: "0.3")
        let second = t.temp.sub("plan2.json").path
        #expect(try t.capstan(["plan", "--out", second]).status == 0)
        try t.repo.commit("move on")
        let moved = try CLI.run(["apply", second, "--state-dir", t.state])
        #expect(moved.status == 1)
        #expect(moved.stderr.contains("the saved plan was made at commit"), "\(moved.stderr)")
        #expect(try t.versions().count == 1)

        let garbage = t.temp.sub("garbage.json")
        try Data("{}".utf8).write(to: garbage)
        let bad = try CLI.run(["apply", garbage.path, "--state-dir", t.state])
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("is not a plan saved by `capstan plan --out`"), "\(bad.stderr)")
    }

    @Test func anInvalidCommitChangesNothing() throws {
        let t = try TrainingRepo()
        #expect(try t.capstan(["apply"]).status == 0)
        try t.repo.write("models/churn/model.yaml", "apiVersion: capstan/v1\nkind: Model\nmetadata: {name: churn}\nspec:\n  train:\n    comand: [x]\n")
        try t.repo.commit("typo")
        let r = try t.capstan(["apply"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("models/churn/model.yaml:6:5"), "\(r.stderr)")
        #expect(r.stderr.contains("nothing was planned and nothing changed"), "\(r.stderr)")
        #expect(try t.versions().count == 1)
    }

    @Test func theValidationCommandGatesTheVersionAndCanAddMetrics() throws {
        let validate = """
            validate:
                metrics: {accuracy: {min: 0.8}, p95_ms: {max: 50}}
                command: [python3, evaluate.py]
            """
        let t = try TrainingRepo(validate: validate)
        try t.repo.write("models/churn/evaluate.py", #"""
            import json, os, sys
            model = json.load(open(os.path.join(os.environ["CAPSTAN_MODEL_DIR"], "model.json")))
            print("evaluating model with lr", model["lr"], flush=True)
            json.dump({"p95_ms": 40 if model["lr"] < 0.15 else 70}, open(os.environ["CAPSTAN_METRICS_FILE"], "w"))
            sys.exit(0 if model["lr"] < 0.25 else 1)
            """#)
        try t.repo.commit("evaluate")
        let first = try t.capstan(["apply"])
        #expect(first.status == 0, "\(first.stdout)\n\(first.stderr)")
        #expect(first.stderr.contains("[churn v1 validate] evaluating model with lr 0.1"), "\(first.stderr)")
        let v1 = try #require(try t.versions().first)
        #expect((v1["metrics"] as? [String: Double])?["p95_ms"] == 40)

        // The command passes but the latency it measured fails its gate.
        try t.writeModel(learningRate: "0.2", validate: validate)
        try t.repo.commit("slower")
        let slow = try t.capstan(["apply"])
        #expect(slow.status == 1)
        #expect(slow.stdout.contains("v2 rejected: p95_ms <= 50 (p95_ms = 70)"), "\(slow.stdout)")

        // The command itself fails.
        try t.writeModel(learningRate: "0.3", validate: validate)
        try t.repo.commit("worse")
        let failing = try t.capstan(["apply"])
        #expect(failing.status == 1)
        #expect(failing.stdout.contains("command python3 evaluate.py (exited with status 1"), "\(failing.stdout)")
        #expect(try t.model()["aliases"] as? [String: Int] == ["champion": 1])
        #expect(try t.versions().map { $0["status"] as? String } == ["validated", "rejected", "rejected"])
    }

    /// A failure the registry keeps no trace of still shows in the model's condition, with its
    /// class and reason: a missing secret needs a change (stalled), not "progressing".
    @Test func aMissingSecretShowsInTheModelsCondition() throws {
        let t = try TrainingRepo()
        try t.writeModel(learningRate: "0.1", extraTrain: "    secretEnv: {API_TOKEN: CAPSTAN_TEST_TOKEN_UNSET}")
        try t.repo.commit("needs a token")
        let r = try t.capstan(["apply"])
        #expect(r.status == 1, "\(r.stdout)\(r.stderr)")
        let status = try CLI.run(["status", "--state-dir", t.state, "--format", "json"])
        let document = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        let models = try #require(document["models"] as? [[String: Any]])
        let churn = try #require(models.first { $0["name"] as? String == "churn" })
        let condition = try #require((churn["conditions"] as? [[String: Any]])?.first)
        #expect(condition["type"] as? String == "Stalled", "\(condition)")
        #expect(condition["class"] as? String == "stalled", "\(condition)")
        #expect(condition["reason"] as? String == "MissingSecret", "\(condition)")
        #expect((condition["message"] as? String)?.contains("CAPSTAN_TEST_TOKEN_UNSET") == true, "\(condition)")
    }

    @Test func secretsNeverReachLogsStatusOrHistory() throws {
        let t = try TrainingRepo(behavior: #"{"fail": "bad token"}"#)
        try t.repo.write("models/churn/train.py", "import os, sys\nprint('token is', os.environ['API_TOKEN'], flush=True)\nsys.exit(2)\n")
        try t.writeModel(learningRate: "0.1", extraTrain: "    secretEnv: {API_TOKEN: CAPSTAN_TEST_TOKEN}")
        try t.repo.commit("leaky script")
        let secret = "s3cr3t-value-\(UUID().uuidString)"
        let r = try t.capstan(["apply"], environment: ["CAPSTAN_TEST_TOKEN": secret])
        #expect(r.status == 1)
        #expect(r.stderr.contains("token is [secret]"), "\(r.stderr)")
        #expect(!r.stdout.contains(secret) && !r.stderr.contains(secret))
        let status = try CLI.run(["status", "--state-dir", t.state, "--format", "json"])
        #expect(status.stdout.contains("token is [secret]"), "\(status.stdout)")
        #expect(!status.stdout.contains(secret))
        let history = try CLI.run(["history", "--state-dir", t.state, "--format", "json"])
        #expect(!history.stdout.contains(secret))
        let logs = t.temp.sub("state/logs/churn")
        for file in try FileManager.default.contentsOfDirectory(atPath: logs.path) {
            let text = try String(contentsOf: logs.appendingPathComponent(file), encoding: .utf8)
            #expect(!text.contains(secret))
        }
        let database = try Data(contentsOf: URL(fileURLWithPath: t.state + "/capstan.db"))
        #expect(database.range(of: Data(secret.utf8)) == nil)

        // Without the variable the step does not start, and the message names it.
        let missing = try t.capstan(["apply", "--retry-failed"])
        #expect(missing.stdout.contains("CAPSTAN_TEST_TOKEN, which is not set"), "\(missing.stdout)")
    }

    /// A training that returns its secret every way a step can (defect 2 of issue 13): in the
    /// text of a metrics file that is not JSON (also cut through the secret where the error
    /// quotes it), as a metric's string value, as a metric's name, as an output file's name, in
    /// a 64 KiB+ line with the secret across the cut, in its error output, and a validation
    /// command that prints it. None of apply's output, status (text and JSON), history (text
    /// and JSON) or any byte under the state folder (database and WAL included) holds it.
    @Test func aSecretNeverLeavesATrainingAnyWayItIsReturned() throws {
        let secret = "ZqJx-canary-\(UUID().uuidString)"
        let t = try CanaryTraining(secret: secret)
        var printed = ""
        for (way, expected) in CanaryTraining.ways {
            try t.repo.write("models/churn/behavior.json", #"{"leak": "\#(way)"}"#)
            try t.repo.commit("leak by \(way)")
            let r = try t.capstan(["apply"], environment: t.environment)
            printed += r.stdout + r.stderr
            #expect(r.stdout.contains(expected), "\(way): \(r.stdout)")
            #expect(r.stderr.contains("token is [secret]"), "\(way): \(r.stderr.suffix(2000))")
            #expect(r.stderr.contains("xxxx[secret] [line cut: longer than 64 KiB]"), "\(way)")
            for command in [["status"], ["status", "--format", "json"], ["history"], ["history", "--format", "json"]] {
                printed += try CLI.run(command + ["--state-dir", t.state]).stdout
            }
        }
        #expect(printed.contains("[secret]"))
        #expect(try CanaryTraining.leaks(of: [secret], in: printed).isEmpty)
        #expect(try CanaryTraining.leaks(of: [secret], under: t.state).isEmpty)
        // Nor the part of it before a cut (the 64 KiB line, the start of the metrics file quoted).
        #expect(try CanaryTraining.leaks(of: [String(secret.prefix(4))], in: printed).isEmpty)
        #expect(try CanaryTraining.leaks(of: [String(secret.prefix(4))], under: t.state).isEmpty)
    }

    @Test func modelsTrainInParallelUpToThePolicy() throws {
        let t = try TrainingRepo()
        // Each training waits until the other one has started: they finish only if both run at once.
        let script = #"""
            import os, sys, time
            me, other = os.environ["CAPSTAN_MODEL"], {"churn": "fraud", "fraud": "churn"}[os.environ["CAPSTAN_MODEL"]]
            d = os.environ["MARKER_DIR"]
            open(os.path.join(d, me + ".started"), "w").close()
            for _ in range(200):
                if os.path.exists(os.path.join(d, other + ".started")): break
                time.sleep(0.05)
            else:
                print("the other model never started alongside", flush=True); sys.exit(1)
            open(os.path.join(os.environ["CAPSTAN_OUTPUT_DIR"], "m"), "w").write(me)
            """#
        try t.repo.write("models/churn/train.py", script)
        try t.repo.write("models/fraud/train.py", script)
        try t.repo.write("models/fraud/model.yaml", """
            apiVersion: capstan/v1
            kind: Model
            metadata: {name: fraud}
            spec:
              train:
                command: [python3, train.py]
                workdir: models/fraud
                inputs: [models/fraud]
                env: {MARKER_DIR: \(t.temp.url.path)}

            """)
        try t.writeModel(learningRate: "0.1", validate: "")
        try t.repo.commit("two models")
        let r = try t.capstan(["apply"])
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("churn: train done"), "\(r.stdout)")
        #expect(r.stdout.contains("fraud: train done"), "\(r.stdout)")
    }

    @Test func versionsBeyondRetentionAreArchived() throws {
        let t = try TrainingRepo(extraTrain: "")
        func model(_ lr: String, _ champion: String) throws {
            try t.writeModel(learningRate: lr, champion: champion)
            let path = t.repo.url.appendingPathComponent("models/churn/model.yaml")
            let text = try String(contentsOf: path, encoding: .utf8) + "  retention: {keepVersions: 1}\n"
            try t.repo.write("models/churn/model.yaml", text)
        }
        try model("0.1", "latest")
        try t.repo.commit("retention")
        #expect(try t.capstan(["apply"]).status == 0)
        try model("0.11", "1")
        try t.repo.commit("v2, champion stays on v1")
        #expect(try t.capstan(["apply"]).status == 0)
        try model("0.12", "1")
        try t.repo.commit("v3")
        // v2 becomes archivable once v3 is the newest: archived in the same pass, not the next.
        let archive = try t.capstan(["apply"])
        #expect(archive.status == 0)
        #expect(archive.stdout.contains("archive-versions done: archived v2"), "\(archive.stdout)")
        #expect(try t.capstan(["apply"]).stdout.contains("Apply complete: no changes"))
        let versions = try t.versions()
        #expect(versions.map { $0["archived_at"] != nil } == [false, true, false])
        #expect(try t.model()["aliases"] as? [String: Int] == ["champion": 1])
    }

    // MARK: Crash safety and locking

    /// Kills `capstan apply` at each failpoint of a pass that trains v2 and moves the alias, then
    /// checks that the next pass converges: no version number or fingerprint used twice, the alias
    /// only on a validated version, the journal closed, and a third pass has nothing to do.
    @Test(arguments: ["train.after-journal", "train.after-create-version", "train.after-start", "train.after-exit",
                      "train.after-artifact", "train.after-trained", "train.after-finish", "validate.before-update",
                      "validate.after-update", "alias.before-set", "alias.after-set"])
    func aPassKilledAnywhereConvergesOnTheNextOne(_ failpoint: String) throws {
        let t = try TrainingRepo()
        #expect(try t.capstan(["apply"]).status == 0)
        try t.writeModel(learningRate: "0.2")
        try t.repo.commit("v2")
        let killed = try t.capstan(["apply"], environment: ["CAPSTAN_FAILPOINT": failpoint])
        #expect(killed.status != 0 && killed.status != 1, "\(failpoint): \(killed.status) \(killed.stdout)")

        let next = try t.capstan(["apply"])
        #expect(next.status == 0, "\(failpoint): \(next.stdout)\n\(next.stderr)")
        let versions = try t.versions()
        let numbers = versions.compactMap { $0["version"] as? Int }
        let fingerprints = versions.compactMap { $0["fingerprint"] as? String }
        #expect(numbers == [1, 2], "\(failpoint): \(versions)")
        #expect(Set(fingerprints).count == fingerprints.count)
        #expect(versions.allSatisfy { $0["status"] as? String == "validated" }, "\(failpoint): \(versions)")
        #expect(try t.model()["aliases"] as? [String: Int] == ["champion": 2])
        let third = try t.capstan(["apply"])
        #expect(third.stdout.contains("Apply complete: no changes"), "\(failpoint): \(third.stdout)")
        // Every change is in the audit log, even one whose process died before writing it.
        let history = try CLI.run(["history", "--state-dir", t.state, "--format", "json"])
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(history.stdout.utf8)) as? [String: Any])
        let events = try #require(doc["events"] as? [[String: Any]])
        func count(_ object: String, _ action: String) -> Int {
            events.count { $0["object"] as? String == object && $0["action"] as? String == action }
        }
        #expect(count("model/churn/v2", "create-version") == 1, "\(failpoint): \(history.stdout)")
        #expect(count("model/churn/v2", "trained") >= 1, "\(failpoint)")
        #expect(count("model/churn/v2", "validated") == 1, "\(failpoint)")
        #expect(events.contains { $0["object"] as? String == "model/churn/alias/champion" && $0["action"] as? String == "move-alias"
                && ($0["after"] as? Int) == 2 }, "\(failpoint)")
        if failpoint != "alias.after-set" && failpoint != "train.after-finish" {
            #expect(events.contains { $0["action"] as? String == "interrupted" }, "\(failpoint): \(history.stdout)")
        }
        // Nothing of the killed pass's steps is left in the state folder.
        let runs = (try? FileManager.default.subpathsOfDirectory(atPath: t.state + "/runs"))?.filter { $0.split(separator: "/").count == 2 } ?? []
        #expect(runs.isEmpty, "\(failpoint): \(runs)")
    }

    /// A training resumed after a crash is killed again before or after it claimed the version:
    /// the audit log still has one creation of the version and one `retrain-version` per attempt
    /// that claimed it (recovery used to record the version's creation a second time). Found by
    /// the kill-anywhere suite.
    @Test(arguments: ["train.after-journal", "train.after-create-version"])
    func aResumedTrainingKilledAgainIsAuditedOnce(_ failpoint: String) throws {
        let t = try TrainingRepo()
        let killed = try t.capstan(["apply"], environment: ["CAPSTAN_FAILPOINT": "train.after-start"])
        #expect(killed.status != 0 && killed.status != 1)
        let resumed = try t.capstan(["apply"], environment: ["CAPSTAN_FAILPOINT": failpoint])
        #expect(resumed.status != 0 && resumed.status != 1, "\(failpoint): \(resumed.stdout)")
        let next = try t.capstan(["apply"])
        #expect(next.status == 0, "\(failpoint): \(next.stdout)\n\(next.stderr)")
        let version = try #require(try t.versions().first)
        #expect(version["status"] as? String == "validated")
        let attempts = try #require(version["attempts"] as? Int)
        let events = try Self.events(t.state).filter { $0["object"] as? String == "model/churn/v1" }
        let actions = events.compactMap { $0["action"] as? String }
        #expect(actions.count { $0 == "create-version" } == 1, "\(failpoint): \(actions)")
        #expect(actions.count { $0 == "retrain-version" } == attempts - 1, "\(failpoint): attempts \(attempts), \(actions)")
    }

    /// A pass killed while a validation command runs: the next pass stops that command's
    /// processes (they were left running before: only trainings were journaled with their process
    /// group), removes its folder, and validates again. Found by the kill-anywhere suite.
    @Test func aValidationCommandOfAKilledPassDoesNotOutliveTheNextPass() throws {
        let t = try TrainingRepo(validate: "validate: {metrics: {accuracy: {min: 0.8}}, command: [python3, validate.py]}")
        try t.repo.write("models/churn/validate.py", """
            import os, time
            d = os.environ["MARKER_DIR"]
            if not os.path.exists(os.path.join(d, "fast")):
                open(os.path.join(d, "validating"), "w").write(str(os.getpid()))
                time.sleep(300)

            """)
        try t.repo.commit("slow gate")
        let killed = try t.capstan(["apply"], environment: ["CAPSTAN_FAILPOINT": "validate.after-start"])
        #expect(killed.status != 0 && killed.status != 1, "\(killed.stdout)")
        let marker = t.temp.sub("validating").path
        var polls = 0
        while !FileManager.default.fileExists(atPath: marker) && polls < 200 { usleep(50_000); polls += 1 }
        let validating = try #require(Int32(try String(contentsOfFile: marker, encoding: .utf8)))
        #expect(Self.isRunning(validating), "the killed pass's validation command runs on")

        _ = FileManager.default.createFile(atPath: t.temp.sub("fast").path, contents: Data())
        let next = try t.capstan(["apply"])
        #expect(next.status == 0, "\(next.stdout)\n\(next.stderr)")
        #expect(next.stdout.contains("recovered an interrupted validate-command of model/churn"), "\(next.stdout)")
        #expect(next.stdout.contains("stopped its leftover validation processes"), "\(next.stdout)")
        #expect(!Self.isRunning(validating))
        #expect(try t.versions().map { $0["status"] as? String } == ["validated"])
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: t.state + "/runs/churn")) ?? []).isEmpty)
    }

    /// A pass killed right after its validation command, or while it runs: the next pass
    /// converges, the version is validated once, and no step folder is left.
    @Test(arguments: ["validate.after-start", "validate.after-command"])
    func aPassKilledAroundItsValidationCommandConverges(_ failpoint: String) throws {
        let t = try TrainingRepo(validate: "validate: {metrics: {accuracy: {min: 0.8}}, command: [python3, validate.py]}")
        try t.repo.write("models/churn/validate.py", "import json, os\nopen(os.environ['CAPSTAN_METRICS_FILE'], 'w').write(json.dumps({'auc': 0.8}))\n")
        try t.repo.commit("gate command")
        let killed = try t.capstan(["apply"], environment: ["CAPSTAN_FAILPOINT": failpoint])
        #expect(killed.status != 0 && killed.status != 1, "\(failpoint): \(killed.stdout)")
        let next = try t.capstan(["apply"])
        #expect(next.status == 0, "\(failpoint): \(next.stdout)\n\(next.stderr)")
        let version = try #require(try t.versions().first)
        #expect(version["status"] as? String == "validated")
        // The command's metrics are kept with the version.
        #expect((version["metrics"] as? [String: Double])?["auc"] == 0.8, "\(version)")
        let actions = try Self.events(t.state).filter { $0["object"] as? String == "model/churn/v1" }.compactMap { $0["action"] as? String }
        #expect(actions.count { $0 == "validated" } == 1, "\(failpoint): \(actions)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: t.state + "/runs/churn")) ?? []).isEmpty)
    }

    /// A pass killed after it marked a training failed but before it recorded the failure: the
    /// next pass records `training-failed` (it was journaled first), once.
    @Test func aFailureKilledBeforeItsEventIsStillAuditedOnce() throws {
        let t = try TrainingRepo(behavior: #"{"fail": "broken feature column"}"#)
        let killed = try t.capstan(["apply"], environment: ["CAPSTAN_FAILPOINT": "train.after-failed"])
        #expect(killed.status != 0 && killed.status != 1, "\(killed.stdout)")
        #expect(try t.versions().first?["status"] as? String == "failed")
        let next = try t.capstan(["apply"])
        #expect(next.status == 0, "a failure waits out its backoff: \(next.stdout)\n\(next.stderr)")
        let actions = try Self.events(t.state).filter { $0["object"] as? String == "model/churn/v1" }.compactMap { $0["action"] as? String }
        #expect(actions.count { $0 == "training-failed" } == 1, "\(actions)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: t.state + "/runs/churn")) ?? []).isEmpty)
    }

    /// SIGTERM (what docker stop, systemd and Kubernetes send) stops a pass cleanly: the training's
    /// processes are gone, the lock is released, and the next pass trains the version again at
    /// once (no backoff: nothing failed).
    @Test func sigtermStopsAPassCleanly() throws {
        let t = try TrainingRepo()
        let sleepFile = t.temp.sub("sleep").path
        _ = FileManager.default.createFile(atPath: sleepFile, contents: Data())
        try t.writeModel(learningRate: "0.1", extraTrain: "    secretEnv: {SLEEP_FILE: SLEEP_FILE}")
        try t.repo.commit("sleepy")
        let (first, log, handle, trainingPID) = try t.startSleepingApply(sleepFile: sleepFile)
        kill(first.processIdentifier, SIGTERM)
        var polls = 0
        while first.isRunning && polls < 600 { usleep(50_000); polls += 1 }
        try? handle.close()
        let printed = try String(contentsOf: log, encoding: .utf8)
        #expect(!first.isRunning)
        #expect(first.terminationStatus == 143, "\(printed)")
        #expect(printed.contains("terminated; stopping the running step"), "\(printed)")
        #expect(!Self.isRunning(trainingPID))
        let status = try t.status()
        #expect((status["locks"] as? [Any])?.isEmpty == true, "\(status)")
        #expect(try t.versions().first?["status"] as? String == "training")

        try FileManager.default.removeItem(atPath: sleepFile)
        let next = try t.capstan(["apply"], environment: ["SLEEP_FILE": sleepFile])
        #expect(next.status == 0, "\(next.stdout)\n\(next.stderr)")
        #expect(try t.versions().first?["status"] as? String == "validated")
    }

    @Test func aMissingSecretSpendsNoVersion() throws {
        let t = try TrainingRepo()
        try t.writeModel(learningRate: "0.1", extraTrain: "    secretEnv: {API_TOKEN: CAPSTAN_TEST_MISSING_TOKEN}")
        try t.repo.commit("needs a token")
        let r = try t.capstan(["apply"])
        #expect(r.status == 1)
        #expect(r.stdout.contains("CAPSTAN_TEST_MISSING_TOKEN, which is not set"), "\(r.stdout)")
        #expect(try t.versions().isEmpty)
        let fixed = try t.capstan(["apply"], environment: ["CAPSTAN_TEST_MISSING_TOKEN": "token-value"])
        #expect(fixed.status == 0, "\(fixed.stdout)")
        #expect(try t.versions().map { $0["version"] as? Int } == [1])
    }

    @Test func aRegressionGateJudgesAgainstTheAliasAsThePlanMovesIt() throws {
        let validate = "validate: {noRegressionAgainst: champion}"
        let t = try TrainingRepo(behavior: #"{"accuracy": 0.9}"#, validate: validate)
        #expect(try t.capstan(["apply"]).status == 0)
        try t.repo.write("models/churn/behavior.json", #"{"accuracy": 0.95}"#)
        try t.repo.commit("better")
        #expect(try t.capstan(["apply"]).status == 0)
        #expect(try t.model()["aliases"] as? [String: Int] == ["champion": 2])
        // One commit pins champion back to v1 and trains v3 (0.92): judged against v1 (0.9),
        // not v2 (0.95), because the pin moves first.
        try t.repo.write("models/churn/behavior.json", #"{"accuracy": 0.92}"#)
        try t.writeModel(learningRate: "0.1", champion: "1", validate: validate)
        try t.repo.commit("pin v1, try v3")
        let r = try t.capstan(["apply"])
        #expect(r.status == 0, "\(r.stdout)")
        let v3 = try #require(try t.versions().first { $0["version"] as? Int == 3 })
        #expect(v3["status"] as? String == "validated")
        let gates = try #require(v3["gate_results"] as? [[String: Any]])
        #expect((gates.first?["detail"] as? String)?.contains("against v1") == true, "\(gates)")
    }

    /// Two `capstan apply` processes on one state directory: the second is refused at once with
    /// the holder named; the first is killed with SIGKILL mid-training; the next apply takes the
    /// lock over, stops the orphaned training process, trains the version again, and status and
    /// history tell what happened.
    @Test func twoProcessesContendAndAKilledOneIsRecovered() throws {
        let t = try TrainingRepo()
        let sleepFile = t.temp.sub("sleep").path
        _ = FileManager.default.createFile(atPath: sleepFile, contents: Data())
        try t.writeModel(learningRate: "0.1", extraTrain: "    secretEnv: {SLEEP_FILE: SLEEP_FILE}")
        try t.repo.commit("sleepy")
        let env = ["SLEEP_FILE": sleepFile]

        let (first, _, handle, trainingPID) = try t.startSleepingApply(sleepFile: sleepFile)

        let second = try t.capstan(["apply"], environment: env)
        #expect(second.status == 1)
        #expect(second.stderr.contains("is still locked"), "\(second.stderr)")
        #expect(second.stderr.contains("pid \(first.processIdentifier)"), "\(second.stderr)")
        #expect(second.stderr.contains("capstan unlock"), "\(second.stderr)")

        let waited = try t.capstan(["apply", "--lock-timeout", "1s"], environment: env)
        #expect(waited.status == 1)
        #expect(waited.stderr.contains("is still locked after waiting 1"), "\(waited.stderr)")

        let midway = try t.versions()
        #expect(midway.map { $0["status"] as? String } == ["training"])

        kill(first.processIdentifier, SIGKILL)
        while first.isRunning { usleep(20_000) }
        try? handle.close()
        #expect(Self.isRunning(trainingPID), "the orphaned training process is still running before recovery")

        try FileManager.default.removeItem(atPath: sleepFile)
        let third = try t.capstan(["apply"], environment: env)
        #expect(third.status == 0, "\(third.stdout)\n\(third.stderr)")
        #expect(third.stderr.contains("took over the lock"), "\(third.stderr)")
        #expect(third.stdout.contains("recovered an interrupted train of model/churn"), "\(third.stdout)")
        #expect(third.stdout.contains("version 1 was interrupted while training"), "\(third.stdout)")
        #expect(third.stdout.contains("stopped its leftover training processes"), "\(third.stdout)")
        #expect(!Self.isRunning(trainingPID), "the orphaned training process was stopped")

        let versions = try t.versions()
        #expect(versions.count == 1)
        #expect(versions[0]["status"] as? String == "validated")
        #expect(versions[0]["attempts"] as? Int == 2)
        let status = try t.status()
        #expect((status["last_pass"] as? [String: Any])?["outcome"] as? String == "converged")
        let history = try CLI.run(["history", "--state-dir", t.state])
        #expect(history.stdout.contains("interrupted"), "\(history.stdout)")
    }

    /// Whether `pid` is a live process (a zombie waiting for a parent that does not reap it is
    /// not: PID 1 of some containers never does).
    static func isRunning(_ pid: Int32) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(close, offsetBy: 2)...].prefix(1)
        return state != "Z" && state != "X"
    }
}

/// A model whose training and validation command return the secret in `$API_TOKEN` in the way
/// `behavior.json` says (`leak`).
final class CanaryTraining {
    let secret: String
    let base: TrainingRepo
    var repo: GitRepo { base.repo }
    var state: String { base.state }
    var environment: [String: String] { ["CAPSTAN_TEST_TOKEN": secret] }

    /// Each way, with what apply's outcome line says about it.
    static let ways: [(String, String)] = [
        ("text", "is not a JSON object of numbers (it starts with 'token [secret]\\nnot json')"),
        ("text-cut", "is not a JSON object of numbers (it starts with 'xxxxx"),
        ("value", #"metric 'token' in the metrics file '"#),
        ("key", "has a metric named '[secret]', which holds the value of a secret"),
        ("name", "weights-[secret].bin' has the value of a secret in its name"),
        ("error", "training exited with status 3"),
        ("validate-key", "has a metric named '[secret]', which holds the value of a secret"),
        ("none", "churn: validate done"),
    ]

    static let script = #"""
        import json, os, sys
        here = os.path.dirname(os.path.abspath(__file__))
        way = json.load(open(os.path.join(here, "behavior.json")))["leak"]
        secret = os.environ["API_TOKEN"]
        out, m = os.environ["CAPSTAN_OUTPUT_DIR"], os.environ["CAPSTAN_METRICS_FILE"]
        print("token is", secret, flush=True)
        # The secret across the 64 KiB line cut.
        print("x" * (64 * 1024 - 5) + secret + "-rest of the line", flush=True)
        open(os.path.join(out, "model.json"), "w").write("{}")
        metrics = {"accuracy": 0.9}
        if way == "text":
            open(m, "w").write("token " + secret + "\nnot json")
        elif way == "text-cut":
            open(m, "w").write("x" * 76 + secret + " not json")
        elif way == "value":
            metrics["token"] = secret
        elif way == "key":
            metrics[secret] = 1
        elif way == "name":
            open(os.path.join(out, "weights-" + secret + ".bin"), "w").write("w")
        elif way == "error":
            print("Traceback (most recent call last):\nValueError: bad token " + secret, flush=True)
            sys.exit(3)
        if not os.path.exists(m):
            json.dump(metrics, open(m, "w"))
        """#

    static let evaluate = #"""
        import json, os, sys
        here = os.path.dirname(os.path.abspath(__file__))
        way = json.load(open(os.path.join(here, "behavior.json")))["leak"]
        secret = os.environ["API_TOKEN"]
        print("evaluating with", secret, flush=True)
        json.dump({secret: 1} if way == "validate-key" else {"p95_ms": 10}, open(os.environ["CAPSTAN_METRICS_FILE"], "w"))
        """#

    init(secret: String) throws {
        self.secret = secret
        base = try TrainingRepo(validate: """
            validate:
                metrics: {accuracy: {min: 0.8}}
                command: [python3, evaluate.py]
            """)
        try base.writeModel(learningRate: "0.1", extraTrain: "    secretEnv: {API_TOKEN: CAPSTAN_TEST_TOKEN}", validate: """
            validate:
                metrics: {accuracy: {min: 0.8}}
                command: [python3, evaluate.py]
            """)
        try repo.write("models/churn/train.py", Self.script)
        try repo.write("models/churn/evaluate.py", Self.evaluate)
        try repo.commit("canary training")
    }

    @discardableResult
    func capstan(_ arguments: [String], environment: [String: String] = [:]) throws -> CLI.Result {
        try base.capstan(arguments, environment: environment)
    }

    /// Which of `secrets` occur in `text`.
    static func leaks(of secrets: [String], in text: String) throws -> [String] {
        secrets.filter { text.contains($0) }
    }

    /// `file: secret` for every file under `folder` (recursively, whatever its type of
    /// contents: the database and its WAL included) whose bytes or name hold one of `secrets`.
    static func leaks(of secrets: [String], under folder: String) throws -> [String] {
        var found: [String] = []
        let fm = FileManager.default
        guard let walker = fm.enumerator(atPath: folder) else { return ["cannot list \(folder)"] }
        while let relative = walker.nextObject() as? String {
            let path = folder + "/" + relative
            for secret in secrets where relative.contains(secret) { found.append("\(relative) (name): \(secret)") }
            var isFolder: ObjCBool = false
            guard fm.fileExists(atPath: path, isDirectory: &isFolder), !isFolder.boolValue,
                  let data = fm.contents(atPath: path) else { continue }
            for secret in secrets where data.range(of: Data(secret.utf8)) != nil { found.append("\(relative): \(secret)") }
        }
        return found
    }
}

// MARK: - Leases, fencing, the state folder (issue 13)

extension ApplyCommandTests {
    /// The audit events of a state folder, newest first.
    static func events(_ state: String) throws -> [[String: Any]] {
        let history = try CLI.run(["history", "--state-dir", state, "--format", "json", "--limit", "10000"])
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(history.stdout.utf8)) as? [String: Any])
        return try #require(doc["events"] as? [[String: Any]])
    }

    static func waitForExit(_ process: Process, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        return !process.isRunning
    }

    /// `capstan unlock ID` refuses the lease of a live apply; `--force` removes it, and that
    /// apply stops within moments: its training is killed and nothing more it does is recorded (in
    /// particular no `training-failed`, while a second apply that started right away takes the
    /// lock and stops the first one's training). The second pass converges.
    @Test func anUnlockedLiveApplyIsRefusedAndWithForceStopsWritingAtOnce() throws {
        let t = try TrainingRepo()
        let sleepFile = t.temp.sub("sleep").path
        _ = FileManager.default.createFile(atPath: sleepFile, contents: Data())
        try t.writeModel(learningRate: "0.1", extraTrain: "    secretEnv: {SLEEP_FILE: SLEEP_FILE}")
        try t.repo.commit("sleepy")
        let (first, log, handle, trainingPID) = try t.startSleepingApply(sleepFile: sleepFile)
        defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) } }
        let locks = try #require(try t.status()["locks"] as? [[String: Any]])
        let id = try #require(locks.first?["holder"] as? String)
        #expect(locks.first?["generation"] as? Int == 1)

        let refused = try CLI.run(["unlock", id, "--state-dir", t.state])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("refusing to remove lease \(id)"), "\(refused.stderr)")
        #expect(refused.stderr.contains("its holder is alive: pid \(first.processIdentifier) on this host"), "\(refused.stderr)")
        #expect(first.isRunning)

        let forced = try CLI.run(["unlock", id, "--force", "--state-dir", t.state])
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect(forced.stderr.contains("warning: removing the lease \(id) although its holder is alive"), "\(forced.stderr)")
        // The next apply at once: it takes the lock and stops the first one's training.
        try FileManager.default.removeItem(atPath: sleepFile)
        let second = try t.capstan(["apply"], environment: ["SLEEP_FILE": sleepFile])
        #expect(second.status == 0, "\(second.stdout)\n\(second.stderr)")

        #expect(Self.waitForExit(first, seconds: 30))
        try? handle.close()
        let printed = try String(contentsOf: log, encoding: .utf8)
        #expect(first.terminationStatus == 1, "\(printed)")
        #expect(printed.contains("lost its lease on the state folder"), "\(printed)")
        #expect(!Self.isRunning(trainingPID))

        let events = try Self.events(t.state)
        #expect(!events.contains { $0["action"] as? String == "training-failed" }, "\(events)")
        let versions = try t.versions()
        #expect(versions.map { $0["status"] as? String } == ["validated"])
        #expect(try t.model()["aliases"] as? [String: Int] == ["champion": 1])
        #expect(try t.capstan(["apply"]).stdout.contains("Apply complete: no changes"))
    }

    /// The same without a second apply: the first notices the lost lease by itself (it checks
    /// every second) and stops its training; it records nothing more.
    @Test func anApplyWhoseLeaseWasRemovedStopsByItself() throws {
        let t = try TrainingRepo()
        let sleepFile = t.temp.sub("sleep").path
        _ = FileManager.default.createFile(atPath: sleepFile, contents: Data())
        try t.writeModel(learningRate: "0.1", extraTrain: "    secretEnv: {SLEEP_FILE: SLEEP_FILE}")
        try t.repo.commit("sleepy")
        let (first, log, handle, trainingPID) = try t.startSleepingApply(sleepFile: sleepFile)
        defer { if first.isRunning { kill(first.processIdentifier, SIGKILL) } }
        let before = try Self.events(t.state).count
        let id = try #require((try t.status()["locks"] as? [[String: Any]])?.first?["holder"] as? String)
        #expect(try CLI.run(["unlock", id, "--force", "--state-dir", t.state]).status == 0)
        #expect(Self.waitForExit(first, seconds: 20))
        try? handle.close()
        let printed = try String(contentsOf: log, encoding: .utf8)
        #expect(first.terminationStatus == 1, "\(printed)")
        #expect(printed.contains("the lease on the state folder was lost; stopping the running step"), "\(printed)")
        #expect(!Self.isRunning(trainingPID))
        #expect(try Self.events(t.state).count == before)
        #expect(try t.versions().map { $0["status"] as? String } == ["training"])

        try FileManager.default.removeItem(atPath: sleepFile)
        let next = try t.capstan(["apply"], environment: ["SLEEP_FILE": sleepFile])
        #expect(next.status == 0, "\(next.stdout)\n\(next.stderr)")
        #expect(try t.versions().map { $0["status"] as? String } == ["validated"])
    }

    /// `capstan apply` killed with SIGKILL under a parent that never reaps it (the init of some
    /// containers): it stays a zombie, and the next apply takes its lease over at once instead of
    /// waiting a minute for it to expire.
    @Test func aKilledApplyLeftAZombieIsTakenOverAtOnce() throws {
        let t = try TrainingRepo()
        let sleepFile = t.temp.sub("sleep").path
        _ = FileManager.default.createFile(atPath: sleepFile, contents: Data())
        try t.writeModel(learningRate: "0.1", extraTrain: "    secretEnv: {SLEEP_FILE: SLEEP_FILE}")
        try t.repo.commit("sleepy")
        // A parent that starts capstan and never waits for it.
        let parent = Process()
        parent.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        parent.arguments = ["python3", "-c", """
            import os, sys, time
            log = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o600)
            pid = os.fork()
            if pid == 0:
                os.dup2(log, 1); os.dup2(log, 2)
                os.execv(sys.argv[1], sys.argv[1:2] + sys.argv[3:])
            print(pid, flush=True)
            time.sleep(600)
            """, CLI.binary.path, t.temp.sub("zombie.log").path, "apply", "--repo", t.repo.path, "--state-dir", t.state]
        var environment = ProcessInfo.processInfo.environment
        environment["SLEEP_FILE"] = sleepFile
        parent.environment = environment
        let out = Pipe()
        parent.standardOutput = out
        try parent.run()
        defer { Processes.stop(parent) }
        let pidText = String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
        let capstan = try #require(Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))
        let started = t.temp.sub("started").path
        var polls = 0
        while !FileManager.default.fileExists(atPath: started) && polls < 600 { usleep(50_000); polls += 1 }
        #expect(FileManager.default.fileExists(atPath: started))
        kill(capstan, SIGKILL)
        var state = ""
        for _ in 0..<200 {
            state = (try? String(contentsOfFile: "/proc/\(capstan)/stat", encoding: .utf8)).flatMap { text in
                text.lastIndex(of: ")").map { String(text[text.index($0, offsetBy: 2)]) }
            } ?? ""
            if state == "Z" { break }
            usleep(10_000)
        }
        #expect(state == "Z", "capstan \(capstan) is \(state), not a zombie")

        try FileManager.default.removeItem(atPath: sleepFile)
        let next = try t.capstan(["apply"], environment: ["SLEEP_FILE": sleepFile])
        #expect(next.status == 0, "\(next.stdout)\n\(next.stderr)")
        #expect(next.stderr.contains("took over the lock of holder"), "\(next.stderr)")
        #expect(next.stderr.contains("process \(capstan) has exited (a zombie"), "\(next.stderr)")
        #expect(next.stdout.contains("stopped its leftover training processes"), "\(next.stdout)")
        #expect(try t.versions().map { $0["status"] as? String } == ["validated"])
    }

    /// A lease whose pid is now another process (started at another time than the one recorded)
    /// is taken over at once; with the recorded start time it holds.
    @Test func aLeaseWhosePidWasRecycledIsTakenOverAtOnce() throws {
        let t = try TrainingRepo()
        #expect(try t.capstan(["apply"]).status == 0)
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: "/bin/sleep")
        sleeper.arguments = ["600"]
        try sleeper.run()
        defer { Processes.stop(sleeper) }
        let pid = sleeper.processIdentifier
        let stat = try String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)
        let fields = stat[stat.index(after: try #require(stat.lastIndex(of: ")")))...].split(separator: " ")
        let start = try #require(Int64(fields[19]))
        func plant(_ processStart: Int64) throws {
            let now = Int64(Date().timeIntervalSince1970 * 1000)
            let script = """
                import socket, sqlite3, sys
                con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
                con.execute("DELETE FROM locks")
                con.execute("INSERT INTO locks (name, holder, generation, host, pid, process_start, command, started_at, expires_at) VALUES ('apply', 'planted', 7, ?, ?, ?, 'capstan apply (before a reboot)', ?, ?)",
                            (socket.gethostname(), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[5]) + 600000))
                """
            let r = try Shell.run("python3", ["-c", script, t.state + "/capstan.db", "-", String(pid),
                                              String(processStart), String(now)])
            #expect(r.status == 0, "\(r.stderr)")
        }
        try plant(start)
        let held = try t.capstan(["apply"])
        #expect(held.status == 1)
        #expect(held.stderr.contains("is still locked"), "\(held.stderr)")

        try plant(start - 3)
        let next = try t.capstan(["apply"])
        #expect(next.status == 0, "\(next.stdout)\n\(next.stderr)")
        #expect(next.stderr.contains("took over the lock of holder planted"), "\(next.stderr)")
        #expect(next.stderr.contains("pid \(pid) now belongs to another process"), "\(next.stderr)")
        // The next generation after the planted one.
        #expect(try Self.lockGeneration(t.state) == 8)
    }

    static func lockGeneration(_ state: String) throws -> Int? {
        let r = try Shell.run("python3", ["-c", """
            import sqlite3, sys
            print(sqlite3.connect(sys.argv[1]).execute("SELECT generation FROM lock_generations WHERE name = 'apply'").fetchone()[0])
            """, state + "/capstan.db"])
        return Int(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Two `capstan apply` started together on a fresh folder: one works, the other is told the
    /// state is locked (or, if it came after, finds nothing to do), never that the database
    /// cannot be opened. Repeated, since the race is in the first milliseconds.
    @Test func twoFirstAppliesOnAFreshFolderMeetTheLockNotABrokenDatabase() throws {
        let t = try TrainingRepo(behavior: #"{"sleep": 1, "accuracy": 0.9}"#)
        for round in 1...8 {
            let state = t.temp.sub("fresh-\(round)").path
            let processes = try (0..<2).map { index -> (Process, URL) in
                let p = Process()
                p.executableURL = CLI.binary
                p.arguments = ["apply", "--repo", t.repo.path, "--state-dir", state]
                let log = t.temp.sub("fresh-\(round)-\(index).log")
                _ = FileManager.default.createFile(atPath: log.path, contents: nil)
                let handle = try FileHandle(forWritingTo: log)
                p.standardOutput = handle
                p.standardError = handle
                return (p, log)
            }
            for (p, _) in processes { try p.run() }
            for (p, _) in processes { p.waitUntilExit() }
            var winners = 0
            for (p, log) in processes {
                let printed = try String(contentsOf: log, encoding: .utf8)
                #expect(!printed.contains("cannot open the state database") && !printed.contains("is damaged"), "round \(round): \(printed)")
                if p.terminationStatus == 0 {
                    winners += 1
                } else {
                    #expect(p.terminationStatus == 1 && printed.contains("is still locked"), "round \(round): \(printed)")
                }
            }
            #expect(winners >= 1, "round \(round)")
            let versions = try CLI.run(["status", "--state-dir", state, "--format", "json"]).stdout
            #expect(versions.contains("\"status\" : \"validated\""), "round \(round): \(versions)")
        }
    }

    /// Under umask 022 everything `apply` writes in the state folder is private: the folder
    /// 0700, the database, its WAL and the logs 0600, artifacts and their folders private; only
    /// the materialized Git trees (`trees/`, modes as in Git) inside the private folder keep their
    /// Git modes. An existing folder every user can read gets a warning.
    @Test func theStateFolderIsPrivateWhateverTheUmask() throws {
        let t = try TrainingRepo()
        let r = try Shell.run("/bin/sh", ["-c", "umask 022; exec \"$0\" \"$@\"", CLI.binary.path, "apply", "--repo", t.repo.path,
                                          "--state-dir", t.state])
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(!r.stderr.contains("warning"), "\(r.stderr)")
        func mode(_ path: String) throws -> Int {
            try #require((try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue)
        }
        #expect(try mode(t.state) == 0o700)
        // The WAL and shared-memory files go when the last connection closes; while they exist
        // they have the database's mode (the store's tests check them open).
        for file in ["capstan.db", "capstan.db-wal", "capstan.db-shm"]
        where file == "capstan.db" || FileManager.default.fileExists(atPath: t.state + "/" + file) {
            #expect(try mode(t.state + "/" + file) == 0o600, "\(file)")
        }
        let logs = try FileManager.default.contentsOfDirectory(atPath: t.state + "/logs/churn")
        #expect(!logs.isEmpty)
        for log in logs { #expect(try mode(t.state + "/logs/churn/" + log) == 0o600, "\(log)") }
        // Nothing outside trees/ is open to the group or other users.
        let enumerator = try #require(FileManager.default.enumerator(atPath: t.state))
        var open: [String] = []
        var checked = 0
        while let relative = enumerator.nextObject() as? String {
            if relative == "trees" { enumerator.skipDescendants(); continue }
            checked += 1
            if try mode(t.state + "/" + relative) & 0o077 != 0 { open.append("\(relative) \(String(try mode(t.state + "/" + relative), radix: 8))") }
        }
        #expect(checked > 8)
        #expect(open == [])

        chmod(t.state, 0o755)
        let again = try t.capstan(["apply"])
        #expect(again.status == 0)
        #expect(again.stderr.contains("capstan: warning: the state folder '\(t.state)' can be read by every user of this machine (mode 755)"), "\(again.stderr)")
        #expect(try mode(t.state) == 0o755)
    }

    /// The disk fills while the training output is stored: that is not the training's fault. The
    /// version is not marked failed and gets no backoff, the message says "disk full" and where,
    /// and the next pass trains it again.
    @Test(.enabled(if: TestMount.available, "\(TestMount.unavailable ?? "")"))
    func aFullDiskWhileStoringTheArtifactIsRetriedOnTheNextPassWithoutBackoff() throws {
        let t = try TrainingRepo()
        // The output takes 60% of the free space when FILL_FILE exists: storing it needs as much again.
        try t.repo.write("models/churn/train.py", #"""
            import json, os
            out = os.environ["CAPSTAN_OUTPUT_DIR"]
            if os.path.exists(os.environ["FILL_FILE"]):
                s = os.statvfs(out)
                open(os.path.join(out, "weights.bin"), "wb").write(b"w" * int(s.f_bavail * s.f_frsize * 0.6))
            else:
                open(os.path.join(out, "weights.bin"), "wb").write(b"w" * 1000)
            open(os.environ["CAPSTAN_METRICS_FILE"], "w").write(json.dumps({"accuracy": 0.9}))
            """#)
        try t.writeModel(learningRate: "0.1", extraTrain: "    secretEnv: {FILL_FILE: FILL_FILE}")
        try t.repo.commit("big output")
        let fill = t.temp.sub("fill").path
        _ = FileManager.default.createFile(atPath: fill, contents: Data())
        let disk = try TestMount(tmpfsKiB: 16 * 1024)
        let state = disk.path + "/state"
        func apply(_ extra: [String] = []) throws -> CLI.Result {
            try CLI.run(["apply", "--repo", t.repo.path, "--state-dir", state] + extra, environment: ["FILL_FILE": fill])
        }
        let full = try apply()
        #expect(full.status == 1, "\(full.stdout)\n\(full.stderr)")
        #expect(full.stdout.contains("churn: train FAILED (transient): v1: disk full: cannot store an artifact file at '\(state)/artifacts/"), "\(full.stdout)")
        #expect(full.stdout.contains("No space left on device"), "\(full.stdout)")
        #expect(full.stdout.contains("the next pass trains it again"), "\(full.stdout)")
        let status = try CLI.run(["status", "--state-dir", state, "--format", "json"])
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any])
        let version = try #require(((doc["models"] as? [[String: Any]])?.first?["versions"] as? [[String: Any]])?.first)
        #expect(version["status"] as? String == "training", "\(version)")
        #expect(version["failed_at"] == nil || version["failed_at"] is NSNull, "\(version)")
        let events = try Self.events(state)
        #expect(!events.contains { $0["action"] as? String == "training-failed" }, "\(events)")
        #expect(events.contains { ($0["reason"] as? String)?.hasPrefix("disk full:") == true }, "\(events)")
        // The step's folder was removed: the space is back.
        #expect(!FileManager.default.fileExists(atPath: state + "/runs/churn/v1-a1"))
        // No backoff: the plan trains v1 again at once.
        let plan = try CLI.run(["plan", "--repo", t.repo.path, "--state-dir", state], environment: ["FILL_FILE": fill])
        #expect(plan.stdout.contains("+ train churn"), "\(plan.stdout)")
        #expect(!plan.stdout.contains("backoff"), "\(plan.stdout)")

        try FileManager.default.removeItem(atPath: fill)
        let next = try apply()
        #expect(next.status == 0, "\(next.stdout)\n\(next.stderr)")
        let after = try CLI.run(["status", "--state-dir", state, "--format", "json"]).stdout
        #expect(after.contains("\"status\" : \"validated\""), "\(after)")
        #expect(after.contains("\"attempts\" : 2"), "\(after)")
    }
}
