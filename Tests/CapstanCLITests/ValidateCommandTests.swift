import Foundation
import Testing
@testable import CapstanTestSupport

struct ValidateCommandTests {
    static let brokenModel = """
        apiVersion: capstan/v1
        kind: Model
        metadata:
          name: churn
        spec:
          train:
            comand: [python3, train.py]
            timeout: 30
        """

    @Test func theQuickstartExampleIsValid() throws {
        let r = try CLI.run(["validate", "examples/quickstart"])
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        #expect(r.stdout == "examples/quickstart: valid (1 model, 1 deployment in 3 files)\n")
        #expect(r.stderr == "")
    }

    @Test func errorsAreReportedCompilerStyleWithExitOne() throws {
        let dir = try TemporaryDirectory()
        try dir.write("models/churn.yaml", Self.brokenModel)
        let r = try CLI.run(["validate", "."], in: dir.url)
        #expect(r.status == 1)
        #expect(r.stdout.contains("""
            models/churn.yaml:7:5: error: unknown field 'comand' in spec.train (did you mean 'command'?) [unknown-field]
                    comand: [python3, train.py]
                    ^~~~~~
            """))
        // The typo is reported once: not also as a missing 'command'.
        #expect(!r.stdout.contains("missing-field"))
        #expect(r.stdout.contains("models/churn.yaml:8:14: error: spec.train.timeout is not a valid duration: '30' [invalid-duration]"))
        #expect(r.stdout.contains("    hint: add a unit: 30s, 30m or 30h"))
        #expect(r.stdout.hasSuffix(".: invalid: 2 errors (1 model, 0 deployments in 1 file)\n"))
    }

    @Test func pathsAreShownAsGivenOnTheCommandLine() throws {
        let dir = try TemporaryDirectory()
        try dir.write("repo/models/churn.yaml", Self.brokenModel)
        let r = try CLI.run(["validate", "repo/"], in: dir.url)
        #expect(r.stdout.contains("repo/models/churn.yaml:7:5: error:"))
    }

    @Test func jsonFormatIsAnArrayOfDiagnostics() throws {
        let dir = try TemporaryDirectory()
        try dir.write("models/churn.yaml", Self.brokenModel)
        let r = try CLI.run(["validate", ".", "--format", "json"], in: dir.url)
        #expect(r.status == 1)
        let items = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
        #expect(items.count == 2)
        let first = items[0]
        #expect(first["file"] as? String == "models/churn.yaml")
        #expect(first["line"] as? Int == 7)
        #expect(first["column"] as? Int == 5)
        #expect(first["severity"] as? String == "error")
        #expect(first["code"] as? String == "unknown-field")
        #expect(first["message"] as? String == "unknown field 'comand' in spec.train (did you mean 'command'?)")
        #expect((first["hint"] as? String)?.hasPrefix("allowed fields: command, workdir") == true)
        #expect((first["related"] as? [Any])?.isEmpty == true)
        #expect(items.compactMap { $0["code"] as? String } == ["unknown-field", "invalid-duration"])
    }

    @Test func githubFormatPrintsWorkflowCommands() throws {
        let dir = try TemporaryDirectory()
        try dir.write("models/churn.yaml", Self.brokenModel)
        let r = try CLI.run(["validate", "--format", "github"], in: dir.url)
        #expect(r.status == 1)
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines.allSatisfy { $0.hasPrefix("::error file=models/churn.yaml,line=") })
        #expect(lines.contains { $0.hasPrefix("::error file=models/churn.yaml,line=7,col=5,title=capstan unknown-field::unknown field 'comand'") })
        #expect(r.stderr.contains("invalid: 2 errors"))
    }

    @Test func warningsPassUnlessStrict() throws {
        let dir = try TemporaryDirectory()
        try dir.write("models/churn.yaml", """
            apiVersion: capstan/v1
            kind: Model
            metadata: {name: churn}
            spec:
              train:
                command: "python3 train.py"
            """)
        let lenient = try CLI.run(["validate", "."], in: dir.url)
        #expect(lenient.status == 0)
        #expect(lenient.stdout.contains("models/churn.yaml:6:14: warning: spec.train.command is a single string with spaces"))
        #expect(lenient.stdout.contains("hint: did you mean [python3, train.py]?"))
        #expect(lenient.stdout.contains(".: valid: 1 warning"))
        let strict = try CLI.run(["validate", ".", "--strict"], in: dir.url)
        #expect(strict.status == 1)
        #expect(strict.stdout.contains(".: invalid: 1 warning"))
    }

    @Test func secretsNeverReachTheOutput() throws {
        let dir = try TemporaryDirectory()
        let secret = "ghp_s3cr3tT0k3nV4lu3ThatMustNotLeak"
        try dir.write("models/m.yaml", """
            apiVersion: capstan/v1
            kind: Model
            metadata: {name: m}
            spec:
              train:
                command: [python3, train.py]
                env: {GITHUB_TOKEN: \(secret)}
            """)
        for format in ["text", "json", "github"] {
            let r = try CLI.run(["validate", ".", "--format", format], in: dir.url)
            #expect(r.status == 0)
            #expect(r.stdout.contains("credential-in-env"))
            #expect(!r.stdout.contains(secret) && !r.stderr.contains(secret), "\(format) leaked the secret")
        }
    }

    @Test func usageErrorsExitSixtyFour() throws {
        #expect(try CLI.run(["validate", "--format", "yaml"]).status == 64)
        #expect(try CLI.run(["validate", "--no-such-flag"]).status == 64)
        let missing = try CLI.run(["validate", "/nonexistent/capstan-repo"])
        #expect(missing.status == 64)
        #expect(missing.stderr == "capstan: error: '/nonexistent/capstan-repo' does not exist; give the repository folder to validate\n")
    }

    @Test func aFolderWithoutManifestsFails() throws {
        let dir = try TemporaryDirectory()
        try dir.write("README.md", "not yaml\n")
        let r = try CLI.run(["validate", "."], in: dir.url)
        #expect(r.status == 1)
        #expect(r.stdout == "")
        #expect(r.stderr == "capstan: error: no manifest files found in '.' (looked for capstan.yaml, *.yaml and *.yml); give the repository root\n")
    }

    @Test func anUnreadableFileIsOneDiagnosticAmongOthers() throws {
        let dir = try TemporaryDirectory()
        try dir.write("models/a.yaml", Self.brokenModel)
        try dir.write("models/b.yaml", "apiVersion: capstan/v1\n")
        // A folder named like a manifest cannot be read as a file.
        try FileManager.default.createDirectory(at: dir.url.appendingPathComponent("models/c.yaml/inner"), withIntermediateDirectories: true)
        try dir.write("models/d.yaml", "x: 1\n")
        chmod(dir.url.appendingPathComponent("models/d.yaml").path, 0)
        defer { chmod(dir.url.appendingPathComponent("models/d.yaml").path, 0o644) }
        let r = try CLI.run(["validate", "--format", "json", "."], in: dir.url)
        #expect(r.status == 1)
        let items = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
        let files = Set(items.compactMap { $0["file"] as? String })
        #expect(files.contains("models/a.yaml"))
        #expect(files.contains("models/b.yaml"))
        if getuid() != 0 {  // root reads any file regardless of its mode
            #expect(items.contains { $0["file"] as? String == "models/d.yaml" && $0["code"] as? String == "file-unreadable" })
        }
    }
}

struct SchemaCommandTests {
    @Test func printsADraft202012SchemaForAllKinds() throws {
        let r = try CLI.run(["schema"])
        #expect(r.status == 0)
        let schema = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(schema["$schema"] as? String == "https://json-schema.org/draft/2020-12/schema")
        let defs = try #require(schema["$defs"] as? [String: Any])
        for name in ["Config", "Model", "Deployment", "TrainSpec", "Canary", "MetricGate"] {
            #expect(defs[name] != nil, "missing $defs/\(name)")
        }
        let train = try #require(defs["TrainSpec"] as? [String: Any])
        #expect(train["additionalProperties"] as? Bool == false)
        #expect((train["required"] as? [String]) == ["command"])
    }

    @Test func theManifestReferenceInDocsIsCurrent() throws {
        let r = try CLI.run(["schema", "--format", "markdown"])
        #expect(r.status == 0)
        let docs = try String(contentsOf: CLI.packageRoot.appendingPathComponent("docs/manifests.md"), encoding: .utf8)
        let begin = "<!-- BEGIN GENERATED: capstan schema --format markdown -->\n"
        let end = "<!-- END GENERATED -->"
        let start = try #require(docs.range(of: begin)).upperBound
        let stop = try #require(docs.range(of: end)).lowerBound
        #expect(String(docs[start..<stop]) == r.stdout, "docs/manifests.md is stale: run scripts/update-docs.sh")
    }
}

struct InitCommandTests {
    @Test func scaffoldsTheQuickstartExampleAndItValidates() throws {
        let dir = try TemporaryDirectory()
        let target = dir.url.appendingPathComponent("repo")
        let r = try CLI.run(["init", target.path])
        #expect(r.status == 0, "\(r.stderr)")
        // The scaffold is exactly examples/quickstart.
        let example = CLI.packageRoot.appendingPathComponent("examples/quickstart")
        let files = try FileManager.default.subpathsOfDirectory(atPath: example.path).filter {
            var isDir: ObjCBool = false
            let exists = FileManager.default.fileExists(atPath: example.appendingPathComponent($0).path, isDirectory: &isDir)
            return exists && !isDir.boolValue
        }.sorted()
        #expect(!files.isEmpty)
        for file in files {
            let a = try Data(contentsOf: example.appendingPathComponent(file))
            let b = try Data(contentsOf: target.appendingPathComponent(file))
            #expect(a == b, "\(file) differs from examples/quickstart: run scripts/generate-scaffold.py")
        }
        let v = try CLI.run(["validate", target.path])
        #expect(v.status == 0, "\(v.stdout)")
    }

    @Test func refusesToOverwrite() throws {
        let dir = try TemporaryDirectory()
        try dir.write("capstan.yaml", "# mine\n")
        let r = try CLI.run(["init", "."], in: dir.url)
        #expect(r.status == 1)
        #expect(r.stderr.contains("already has 'capstan.yaml'; nothing was written"))
        #expect(try String(contentsOf: dir.url.appendingPathComponent("capstan.yaml"), encoding: .utf8) == "# mine\n")
        #expect(!FileManager.default.fileExists(atPath: dir.url.appendingPathComponent("models").path))
    }

    @Test func theTrainingScriptRunsWithTheStandardLibrary() throws {
        let dir = try TemporaryDirectory()
        #expect(try CLI.run(["init", dir.url.path]).status == 0)
        let out = dir.url.appendingPathComponent("out")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "train.py"]
        process.currentDirectoryURL = dir.url.appendingPathComponent("models/churn")
        process.environment = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin",
                               "CAPSTAN_OUTPUT_DIR": out.path, "CAPSTAN_METRICS_FILE": out.appendingPathComponent("metrics.json").path]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let metrics = try JSONSerialization.jsonObject(with: Data(contentsOf: out.appendingPathComponent("metrics.json"))) as? [String: Double]
        #expect((metrics?["accuracy"] ?? 0) >= 0.65)
        #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("model.json").path))
    }
}

struct RedactionTests {
    @Test func aSecretOnALineIsWithheldFromEveryDiagnosticOnThatLine() throws {
        let dir = try TemporaryDirectory()
        try dir.write("models/m.yaml", """
            apiVersion: capstan/v1
            kind: Model
            metadata: {name: m}
            spec:
              train:
                command: [python3, train.py]
                env: {DB_PASSWORD: hunter2-prod, 1BAD: x, API_TOKEN: xyz-other-secret}
            """)
        let r = try CLI.run(["validate", "."], in: dir.url)
        #expect(r.status == 1)
        #expect(r.stdout.contains("invalid-env-name"))
        #expect(r.stdout.components(separatedBy: "credential-in-env").count == 3)
        #expect(!r.stdout.contains("hunter2"))
        #expect(!r.stdout.contains("xyz-other-secret"))
    }
}

/// Untrusted repository content (a pull request's checkout): validate reads nothing outside the
/// repository, never blocks on a special file, and no name breaks an output line.
struct UntrustedRepositoryTests {
    static let model = "apiVersion: capstan/v1\nkind: Model\nmetadata: {name: churn}\nspec:\n  train:\n    command: [python3, train.py]\n"

    /// The issue's report: `ln -s /proc/self/environ models/env.yaml; capstan validate .` printed
    /// the process environment, tokens included, in the snippet.
    @Test func aSymlinkToTheEnvironmentPrintsNothingOfIt() throws {
        let dir = try TemporaryDirectory()
        try dir.write("models/churn.yaml", Self.model)
        try FileManager.default.createSymbolicLink(atPath: dir.url.appendingPathComponent("models/env.yaml").path,
                                                   withDestinationPath: "/proc/self/environ")
        let secret = "ghp_\(UUID().uuidString.replacingOccurrences(of: "-", with: ""))"
        for format in ["text", "json", "github"] {
            let r = try CLI.run(["validate", ".", "--format", format], in: dir.url, environment: ["CAPSTAN_TEST_TOKEN": secret])
            #expect(r.status == 1, "\(format): \(r.stdout)\(r.stderr)")
            #expect(!(r.stdout + r.stderr).contains(secret), "\(format) leaked the environment")
            #expect(!(r.stdout + r.stderr).contains("CAPSTAN_TEST_TOKEN"))
            switch format {
            case "text":
                #expect(r.stdout.hasPrefix("models/env.yaml:1:1: error: symlink to the absolute path '/proc/self/environ' leads outside the repository; it is not followed and nothing there is read [symlink-escapes-repository]\n    hint: "), "\(r.stdout)")
                #expect(r.stdout.hasSuffix(".: invalid: 1 error (1 model, 0 deployments in 1 file)\n"), "\(r.stdout)")
            case "json":
                let items = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
                #expect(items.map { $0["file"] as? String } == ["models/env.yaml"])
                #expect(items.map { $0["code"] as? String } == ["symlink-escapes-repository"])
            default:
                #expect(r.stdout.hasPrefix("::error file=models/env.yaml,line=1,col=1,title=capstan symlink-escapes-repository::symlink to the absolute path '/proc/self/environ'"), "\(r.stdout)")
            }
        }
    }

    /// The same link committed, read with --repo (from Git objects): the same diagnostic.
    @Test func theSameLinkInACommitIsRefusedTheSameWay() throws {
        let temp = try TempDir()
        let repo = try GitRepo(at: temp.sub("repo"))
        try repo.write("models/churn.yaml", Self.model)
        try repo.symlink("models/env.yaml", to: "/proc/self/environ")
        try repo.commit("link out")
        let r = try CLI.run(["validate", "--repo", repo.path, "--ref", "main", "--format", "json"])
        #expect(r.status == 1, "\(r.stdout)\(r.stderr)")
        let items = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
        #expect(items.map { $0["file"] as? String } == ["models/env.yaml"])
        #expect(items.map { $0["code"] as? String } == ["symlink-escapes-repository"])
        // plan refuses the commit and shows the same diagnostic, nothing more.
        let plan = try CLI.run(["plan", "--repo", repo.path, "--ref", "main", "--state-dir", temp.sub("state").path])
        #expect(plan.status == 1)
        #expect(plan.stderr.contains("models/env.yaml:1:1: error: symlink to the absolute path '/proc/self/environ'"), "\(plan.stderr)")
        #expect(plan.stderr.contains("1 error in the manifests"), "\(plan.stderr)")
    }

    /// A FIFO named like a manifest: refused without being opened (opening it would block).
    @Test func aFIFONamedLikeAManifestDoesNotBlock() throws {
        let dir = try TemporaryDirectory()
        try dir.write("models/churn.yaml", Self.model)
        #expect(mkfifo(dir.url.appendingPathComponent("models/pipe.yaml").path, 0o644) == 0)
        let r = try CLI.run(["validate", "."], in: dir.url)
        #expect(r.status == 1)
        #expect(r.stdout.hasPrefix("models/pipe.yaml:1:1: error: this is a FIFO, not a regular file; manifests are read only from regular files [not-a-regular-file]"), "\(r.stdout)")
    }

    /// A line break in a file name: shown escaped in text, one annotation per line on GitHub.
    @Test func aLineBreakInAFileNameBreaksNoOutputLine() throws {
        let dir = try TemporaryDirectory()
        try dir.write("models/churn.yaml", Self.model)
        try dir.write("models/evil\n::error file=x.yaml::forged.yaml", Self.model)
        let text = try CLI.run(["validate", "."], in: dir.url)
        #expect(text.status == 1)
        #expect(text.stdout.hasPrefix(#"models/evil\n::error file=x.yaml::forged.yaml:1:1: error: the name is not UTF-8 or holds a control character"#), "\(text.stdout)")
        let github = try CLI.run(["validate", ".", "--format", "github"], in: dir.url)
        let lines = github.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        #expect(lines.count == 1, "\(github.stdout)")
        #expect(lines.allSatisfy { $0.hasPrefix("::error file=models/evil\\n%3A%3Aerror file=x.yaml%3A%3Aforged.yaml,line=1,col=1,") }, "\(github.stdout)")
        let json = try CLI.run(["validate", ".", "--format", "json"], in: dir.url)
        let items = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [[String: Any]])
        #expect(items.map { $0["file"] as? String } == [#"models/evil\n::error file=x.yaml::forged.yaml"#])
    }
}
