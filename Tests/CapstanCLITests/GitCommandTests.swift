import Foundation
import Testing
@testable import CapstanTestSupport

/// A work repository with the standard desired state, a bare repository it pushes to (served
/// by `git daemon` when asked), and a state directory.
final class GitCLIFixture {
    let dir: TempDir
    let work: GitRepo
    let served: URL
    let first: String
    var state: String { dir.sub("state").path }

    init() throws {
        dir = try TempDir()
        served = dir.sub("served/models.git")
        _ = try GitRepo(at: served, bare: true)
        work = try GitRepo(at: dir.sub("work"))
        try Manifests.write(into: work)
        first = try work.commit("first")
        try work.push(to: served.path)
    }

    func daemon() throws -> GitDaemon { try GitDaemon(base: dir.sub("served")) }

    @discardableResult
    func pushCommit(_ message: String, files: [String: String]) throws -> String {
        let id = try work.commit(message, files: files)
        try work.push(to: served.path)
        return id
    }

    /// Every file below the state directory that contains `secret`.
    func stateFiles(containing secret: String) -> [String] {
        dir.files(under: URL(fileURLWithPath: state)).filter { path in
            let data = (try? Data(contentsOf: URL(fileURLWithPath: state).appendingPathComponent(path))) ?? Data()
            return data.range(of: Data(secret.utf8)) != nil
        }
    }
}

/// `capstan validate --repo`: desired state read from a commit, local or fetched.
@Suite(.serialized)
struct GitValidateCommandTests {
    @Test func validatesABranchFetchedOverGitProtocol() throws {
        let f = try GitCLIFixture()
        let daemon = try f.daemon()
        let url = daemon.url("models.git")
        let r = try CLI.run(["validate", "--repo", url, "--ref", "main", "--state-dir", f.state])
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        #expect(r.stdout == "\(url) @ main (commit \(f.first.prefix(10))): valid (1 model, 1 deployment in 3 files)\n")
        #expect(r.stderr == "")
        let sources = try FileManager.default.contentsOfDirectory(atPath: f.state + "/sources")
        #expect(sources.count == 1)
        #expect(sources.allSatisfy { $0.hasSuffix(".git") })
    }

    @Test func withoutARefTheRemotesDefaultBranchIsRead() throws {
        let f = try GitCLIFixture()
        let daemon = try f.daemon()
        let r = try CLI.run(["validate", "--repo", daemon.url("models.git"), "--state-dir", f.state])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.hasPrefix("\(daemon.url("models.git")) @ HEAD (commit \(f.first.prefix(10))): valid"))
    }

    @Test func theStateDirectoryComesFromTheEnvironmentToo() throws {
        let f = try GitCLIFixture()
        let r = try CLI.run(["validate", "--repo", "file://" + f.served.path, "--ref", "main"], in: f.dir.url,
                            environment: ["CAPSTAN_STATE_DIR": f.state])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: f.state + "/sources"))
        #expect(!FileManager.default.fileExists(atPath: f.dir.sub(".capstan").path))
    }

    @Test func whenTheRemoteIsGoneTheCommandFailsNamingItAndNoFetchStillWorks() throws {
        let f = try GitCLIFixture()
        let daemon = try f.daemon()
        let url = daemon.url("models.git")
        let arguments = ["validate", "--repo", url, "--ref", "main", "--state-dir", f.state]
        #expect(try CLI.run(arguments).status == 0)
        daemon.stop()
        let r = try CLI.run(arguments)
        #expect(r.status == 1)
        #expect(r.stdout == "")
        #expect(r.stderr.hasPrefix("capstan: error: \(url): cannot fetch: "), "\(r.stderr)")
        #expect(r.stderr.contains("check that the remote is reachable"))
        let offline = try CLI.run(arguments + ["--no-fetch"])
        #expect(offline.status == 0, "\(offline.stderr)")
        #expect(offline.stdout.contains("(commit \(f.first.prefix(10))): valid"))
    }

    @Test func noFetchWithoutAMirrorSaysSo() throws {
        let f = try GitCLIFixture()
        let r = try CLI.run(["validate", "--repo", "git://127.0.0.1:9/models.git", "--no-fetch", "--state-dir", f.state])
        #expect(r.status == 1)
        #expect(r.stderr.contains("there is no mirror of this remote"))
    }

    /// Damages the pack files of the (only) mirror in the state directory.
    static func damageMirror(_ state: String, _ damage: String) throws {
        let sources = state + "/sources"
        let mirror = try #require(try FileManager.default.contentsOfDirectory(atPath: sources).first { $0.hasSuffix(".git") })
        try #require(try damagePacks(inMirror: sources + "/" + mirror, damage) > 0)
    }

    /// docs/git.md: a mirror whose objects are damaged is cloned again, never trusted.
    @Test(arguments: ["truncated", "deleted", "overwritten"], [false, true])
    func aDamagedMirrorIsClonedAgain(_ damage: String, newCommit: Bool) throws {
        let f = try GitCLIFixture()
        let arguments = ["validate", "--repo", "file://" + f.served.path, "--ref", "main", "--state-dir", f.state]
        #expect(try CLI.run(arguments).status == 0)
        try Self.damageMirror(f.state, damage)
        let expected = newCommit ? try f.pushCommit("second", files: ["README.md": "# 2\n"]) : f.first
        let r = try CLI.run(arguments)
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        #expect(r.stdout.contains("(commit \(expected.prefix(10))): valid"), "\(r.stdout)")
        let again = try CLI.run(arguments)
        #expect(again.status == 0)
        #expect(again.stderr == "")
    }

    @Test func aDiffOverADamagedMirrorIsClonedAgainOrSaysItIsDamaged() throws {
        let f = try GitCLIFixture()
        try f.pushCommit("lr", files: ["models/churn/model.yaml": Manifests.model(learningRate: "0.05")])
        let arguments = ["diff", "--repo", "file://" + f.served.path, "--state-dir", f.state, "main~1", "main"]
        #expect(try CLI.run(arguments).status == 0)
        try Self.damageMirror(f.state, "overwritten")
        let r = try CLI.run(arguments)
        if r.status == 0 {
            #expect(r.stdout.contains("spec.train.params.learning_rate 0.1 → 0.05"))
        } else {
            #expect(r.status == 1)
            #expect(r.stderr.contains("damaged"), "\(r.stderr)")
        }
    }

    @Test func aForcePushPrintsANoteAndTheNewCommitIsRead() throws {
        let f = try GitCLIFixture()
        let daemon = try f.daemon()
        let old = try f.pushCommit("lr 0.2", files: ["models/churn/model.yaml": Manifests.model(learningRate: "0.2")])
        let arguments = ["validate", "--repo", daemon.url("models.git"), "--ref", "main", "--state-dir", f.state]
        #expect(try CLI.run(arguments).status == 0)
        try f.work.git("reset", "-q", "--hard", "HEAD~1")
        let new = try f.work.commit("lr 0.3", files: ["models/churn/model.yaml": Manifests.model(learningRate: "0.3")])
        try f.work.push(to: f.served.path, ["main"], force: true)
        let r = try CLI.run(arguments)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stderr == "capstan: note: refs/heads/main was force-pushed (\(old.prefix(10)) → \(new.prefix(10)), not a fast-forward); following the new commit\n")
        #expect(r.stdout.contains("(commit \(new.prefix(10))): valid"))
        // Said once.
        #expect(try CLI.run(arguments).stderr == "")
    }

    @Test func invalidManifestsAtTheCommitAreReportedWithRepositoryPaths() throws {
        let f = try GitCLIFixture()
        let broken = try f.work.commit("broken", files: ["models/churn/model.yaml": Manifests.broken])
        // The work tree is fixed but not committed: the commit is what is read.
        try f.work.write("models/churn/model.yaml", Manifests.model())
        let r = try CLI.run(["validate", "--repo", ".", "--ref", "main"], in: f.work.url)
        #expect(r.status == 1)
        #expect(r.stdout.contains("""
            models/churn/model.yaml:7:5: error: unknown field 'comand' in spec.train (did you mean 'command'?) [unknown-field]
                    comand: [python3, train.py]
                    ^~~~~~
            """), "\(r.stdout)")
        #expect(r.stdout.contains(". @ main (commit \(broken.prefix(10))): invalid: "))
        // The folder itself (work tree) is fine.
        #expect(try CLI.run(["validate", "."], in: f.work.url).status == 0)
    }

    @Test func jsonOutputCarriesTheCommit() throws {
        let f = try GitCLIFixture()
        let broken = try f.work.commit("broken", files: ["models/churn/model.yaml": Manifests.broken])
        let r = try CLI.run(["validate", "--repo", ".", "--ref", "main", "--format", "json"], in: f.work.url)
        #expect(r.status == 1)
        let items = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[String: Any]])
        #expect(!items.isEmpty)
        #expect(items.allSatisfy { $0["commit"] as? String == broken })
        #expect(items.contains { $0["file"] as? String == "models/churn/model.yaml" && $0["line"] as? Int == 7 && $0["column"] as? Int == 5 })
    }

    @Test func aBareRepositoryPathAndATagAreRead() throws {
        let f = try GitCLIFixture()
        try f.work.git("tag", "-a", "v1", "-m", "one")
        try f.work.push(to: f.served.path, ["v1"])
        try f.pushCommit("broken", files: ["models/churn/model.yaml": Manifests.broken])
        let r = try CLI.run(["validate", "--repo", f.served.path, "--ref", "v1"])
        #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
        #expect(r.stdout.hasPrefix("\(f.served.path) @ v1 (commit \(f.first.prefix(10))): valid"))
    }

    @Test func aMissingRefListsTheBranches() throws {
        let f = try GitCLIFixture()
        let r = try CLI.run(["validate", "--repo", ".", "--ref", "release-9"], in: f.work.url)
        #expect(r.status == 1)
        #expect(r.stderr == "capstan: error: . @ release-9: ref 'release-9' not found (branches: main); pass a branch, a tag or a full commit id\n")
    }

    @Test func aCommitWithoutManifestsFails() throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("r"))
        let id = try repo.commit("readme", files: ["README.md": "# nothing\n"])
        let r = try CLI.run(["validate", "--repo", ".", "--ref", "main"], in: repo.url)
        #expect(r.status == 1)
        #expect(r.stderr.contains(". @ main (\(id.prefix(10))) holds no manifest files"))
    }

    @Test func usageErrorsExitSixtyFour() throws {
        let f = try GitCLIFixture()
        let refOnly = try CLI.run(["validate", "--ref", "main"], in: f.work.url)
        #expect(refOnly.status == 64)
        #expect(refOnly.stderr == "capstan: error: --ref needs --repo (the repository to read the ref from)\n")
        let both = try CLI.run(["validate", ".", "--repo", "."], in: f.work.url)
        #expect(both.status == 64)
        #expect(both.stderr == "capstan: error: give either a PATH or --repo, not both\n")
        let timeout = try CLI.run(["validate", "--repo", ".", "--fetch-timeout", "soon"], in: f.work.url)
        #expect(timeout.status == 64)
        #expect(timeout.stderr.contains("--fetch-timeout 'soon' is not a duration"))
        let scheme = try CLI.run(["validate", "--repo", "ftp://host/models.git"])
        #expect(scheme.status == 64)
        #expect(scheme.stderr.contains("unsupported repository URL scheme 'ftp'"))
        let missing = try CLI.run(["validate", "--repo", "no/such/repository"])
        #expect(missing.status == 64)
        #expect(missing.stderr.contains("'no/such/repository' is neither a repository on this machine nor a URL"))
        let envName = try CLI.run(["validate", "--repo", ".", "--git-token-env", "1-BAD"], in: f.work.url)
        #expect(envName.status == 64)
        let diffRef = try CLI.run(["diff", "--ref", "main", "main~1", "main"], in: f.work.url)
        #expect(diffRef.status == 64)
    }

    @Test func credentialsInTheURLAreRefusedWithoutEchoingThem() throws {
        let r = try CLI.run(["validate", "--repo", "https://alice:hunter2-pw@git.example.com/ml/models.git"])
        #expect(r.status == 64)
        #expect(r.stderr.contains("carries credentials"))
        #expect(r.stderr.contains("https://git.example.com/ml/models.git"))
        #expect(!r.stderr.contains("hunter2-pw"))
    }

    /// Tokens may contain '/'. Such a URL is not valid, but the token must still never be shown.
    @Test func aTokenWithASlashInTheURLIsNeverEchoed() throws {
        let f = try GitCLIFixture()
        let r = try CLI.run(["validate", "--repo", "https://oauth2:abc/DEF+ghi@127.0.0.1:9/models.git", "--state-dir", f.state])
        #expect(r.status != 0)
        #expect(!r.stderr.contains("DEF+ghi"), "\(r.stderr)")
        #expect(!r.stdout.contains("DEF+ghi"))
    }
}

/// HTTP with Basic auth (git http-backend behind a small Python server), through the binary.
@Suite(.serialized)
struct GitHTTPCredentialsCommandTests {
    static let token = "cli-test-token-d41d8cd98f"

    @Test func theTokenComesFromTheEnvironmentAndNeverAppearsAnywhere() throws {
        let f = try GitCLIFixture()
        let server = try PythonServer(script: PythonServer.gitHTTP, arguments: [f.dir.sub("served").path, "x-access-token", Self.token])
        let url = "http://127.0.0.1:\(server.port)/models.git"
        let arguments = ["validate", "--repo", url, "--ref", "main", "--state-dir", f.state]

        let none = try CLI.run(arguments, environment: ["CAPSTAN_GIT_TOKEN": ""])
        #expect(none.status == 1)
        #expect(none.stderr.contains("needs credentials: set $CAPSTAN_GIT_TOKEN"), "\(none.stderr)")

        let wrong = "cli-wrong-token-5e8a1f"
        let refused = try CLI.run(arguments, environment: ["CAPSTAN_GIT_TOKEN": wrong])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("refused the credentials from $CAPSTAN_GIT_TOKEN"), "\(refused.stderr)")
        #expect(refused.stderr.contains(url))
        #expect(!refused.stderr.contains(wrong) && !refused.stdout.contains(wrong))

        let ok = try CLI.run(arguments, environment: ["CAPSTAN_GIT_TOKEN": Self.token])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(ok.stdout.contains("valid (1 model, 1 deployment in 3 files)"))
        #expect(!ok.stderr.contains(Self.token) && !ok.stdout.contains(Self.token))

        let renamed = try CLI.run(arguments + ["--git-token-env", "ACME_TOKEN"], environment: ["CAPSTAN_GIT_TOKEN": "", "ACME_TOKEN": wrong])
        #expect(renamed.status == 1)
        #expect(renamed.stderr.contains("$ACME_TOKEN"))
        #expect(!renamed.stderr.contains(wrong))

        #expect(f.stateFiles(containing: Self.token).isEmpty)
        #expect(f.stateFiles(containing: wrong).isEmpty)
        #expect(!f.dir.files(under: URL(fileURLWithPath: f.state)).isEmpty)
    }

    @Test func aRedirectToAnotherHostGetsNoCredentialsAndTheErrorSaysWhy() throws {
        let f = try GitCLIFixture()
        let log = f.dir.sub("second.log").path
        let second = try PythonServer.gitHTTP(root: f.dir.sub("served").path, user: "x-access-token", password: Self.token, options: ["log": log])
        let first = try PythonServer.gitHTTP(root: f.dir.sub("served").path, user: "x-access-token", password: Self.token,
                                             options: ["redirectFrom": "/old.git", "redirectTo": "http://localhost:\(second.port)/models.git"])
        let r = try CLI.run(["validate", "--repo", "http://127.0.0.1:\(first.port)/old.git", "--ref", "main", "--state-dir", f.state],
                            environment: ["CAPSTAN_GIT_TOKEN": Self.token])
        let received = PythonServer.loggedAuthorizations(log)
        #expect(!received.isEmpty && received.allSatisfy { $0 == nil }, "the second host received: \(received)")
        #expect(r.status == 1)
        #expect(r.stderr.contains("redirected from http://127.0.0.1:\(first.port) to http://localhost:\(second.port)"), "\(r.stderr)")
        #expect(r.stderr.contains("update the remote URL (--repo)"), "\(r.stderr)")
        #expect(!r.stderr.contains(Self.token) && !r.stdout.contains(Self.token))
    }

    @Test(.enabled(if: NonLoopbackAddress.ipv4 != nil, "this machine has no non-loopback IPv4 address"))
    func aTokenOverPlainHTTPToAnotherMachinePrintsOneWarning() throws {
        let address = try #require(NonLoopbackAddress.ipv4)
        let f = try GitCLIFixture()
        let server = try PythonServer.gitHTTP(root: f.dir.sub("served").path, user: "x-access-token", password: Self.token, options: ["bind": address])
        let url = "http://\(address):\(server.port)/models.git"
        let r = try CLI.run(["validate", "--repo", url, "--ref", "main", "--state-dir", f.state], environment: ["CAPSTAN_GIT_TOKEN": Self.token])
        #expect(r.status == 0, "\(r.stderr)")
        let warnings = r.stderr.split(separator: "\n").filter { $0.hasPrefix("capstan: warning: ") }
        #expect(warnings.count == 1, "\(r.stderr)")
        #expect(warnings.first?.contains("the credentials from $CAPSTAN_GIT_TOKEN are sent to http://\(address):\(server.port) over plain http://") == true,
                "\(r.stderr)")
        #expect(!r.stderr.contains(Self.token))
        // Over loopback: no warning.
        let local = try PythonServer.gitHTTP(root: f.dir.sub("served").path, user: "x-access-token", password: Self.token)
        let quiet = try CLI.run(["validate", "--repo", "http://127.0.0.1:\(local.port)/models.git", "--ref", "main", "--state-dir", f.state],
                                environment: ["CAPSTAN_GIT_TOKEN": Self.token])
        #expect(quiet.status == 0)
        #expect(!quiet.stderr.contains("warning"), "\(quiet.stderr)")
    }
}

/// `capstan diff`: what a change does to the desired state.
struct DiffCommandTests {
    /// `diff` in the work repository.
    static func diff(_ f: GitCLIFixture, _ arguments: [String]) throws -> CLI.Result {
        try CLI.run(["diff"] + arguments, in: f.work.url)
    }

    @Test func fieldsAreListedOneByOneWithTheDataChange() throws {
        let f = try GitCLIFixture()
        let head = try f.work.commit("retrain", files: [
            "models/churn/model.yaml": Manifests.model(learningRate: "0.05"),
            "data/x.csv": "a,b\n9,9\n",
        ])
        let r = try Self.diff(f, ["main~1", "main"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == """
            models/churn/model.yaml: Model churn: spec.train.params.learning_rate 0.1 → 0.05
            models/churn/model.yaml: Model churn: training input data/x.csv changed
            . \(f.first.prefix(10))..\(head.prefix(10)): 1 changed, 1 with changed training inputs

            """)
        #expect(r.stderr == "")
    }

    @Test func aDataChangeAloneIsARetrain() throws {
        let f = try GitCLIFixture()
        try f.work.commit("data", files: ["data/x.csv": "a,b\n9,9\n"])
        let r = try Self.diff(f, ["main~1", "main"])
        #expect(r.stdout.hasPrefix("models/churn/model.yaml: Model churn: training input data/x.csv changed\n"))
        #expect(!r.stdout.contains("→"))
    }

    @Test func aCodeChangeInsideTheModelsFolderIsARetrain() throws {
        let f = try GitCLIFixture()
        try f.work.commit("code", files: ["models/churn/train.py": "print('better')\n"])
        let r = try Self.diff(f, ["main~1", "main"])
        #expect(r.stdout.contains("models/churn/model.yaml: Model churn: training input models/churn changed\n"))
    }

    /// The model's own manifest lives in its input folder; a promotion pull request changes only
    /// the manifest and must not look like a retrain.
    @Test func aPromotionIsNotARetrain() throws {
        let f = try GitCLIFixture()
        try f.work.commit("promote v3", files: ["models/churn/model.yaml": Manifests.model(champion: "3")])
        let r = try Self.diff(f, ["main~1", "main"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("models/churn/model.yaml: Model churn: spec.aliases.champion latest → 3\n"))
        #expect(!r.stdout.contains("training input"))
        #expect(r.stdout.hasSuffix(": 1 changed\n"))
    }

    @Test func aChangeOnlyOutsideManifestsAndInputsIsNoChange() throws {
        let f = try GitCLIFixture()
        try f.work.commit("docs", files: ["README.md": "# better docs\n"])
        let r = try Self.diff(f, ["main~1", "main", "--exit-code"])
        #expect(r.status == 0)
        #expect(r.stdout.hasSuffix(": no changes to the desired state\n"))
    }

    @Test func addedAndRemovedObjects() throws {
        let f = try GitCLIFixture()
        try f.work.remove("deployments/churn-prod.yaml")
        try f.work.write("deployments/fraud-prod.yaml", Manifests.deployment.replacingOccurrences(of: "churn", with: "fraud"))
        try f.work.write("models/fraud.yaml", Manifests.model(name: "fraud"))
        let head = try f.work.commit("swap")
        let r = try Self.diff(f, ["main~1", "main"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout == """
            deployments/churn-prod.yaml: Deployment churn-prod: removed
            deployments/fraud-prod.yaml: Deployment fraud-prod: added
            models/fraud.yaml: Model fraud: added
            . \(f.first.prefix(10))..\(head.prefix(10)): 2 added, 1 removed

            """)
    }

    @Test func aFieldThatWasNotSetShowsAsUnset() throws {
        let f = try GitCLIFixture()
        try f.work.commit("describe", files: ["models/churn/model.yaml": Manifests.model().replacingOccurrences(
            of: "spec:\n", with: "spec:\n  description: Churn in 30 days\n")])
        let text = try Self.diff(f, ["main~1", "main"])
        #expect(text.stdout.contains("models/churn/model.yaml: Model churn: spec.description (unset) → Churn in 30 days\n"), "\(text.stdout)")
        let json = try Self.diff(f, ["main~1", "main", "--format", "json"])
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let change = try #require((doc["changes"] as? [[String: Any]])?.first)
        let field = try #require((change["fields"] as? [[String: Any]])?.first)
        #expect(field["path"] as? String == "spec.description")
        #expect(field["before"] == nil, "before must be absent when the field was not set")
        #expect(field["after"] as? String == "Churn in 30 days")
    }

    @Test func jsonFormat() throws {
        let f = try GitCLIFixture()
        let head = try f.work.commit("retrain", files: [
            "models/churn/model.yaml": Manifests.model(learningRate: "0.05"),
            "data/x.csv": "a,b\n9,9\n",
            "models/fraud.yaml": Manifests.model(name: "fraud"),
        ])
        let r = try Self.diff(f, ["main~1", "main", "--format", "json"])
        #expect(r.status == 0, "\(r.stderr)")
        let doc = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(doc["format_version"] as? Int == 1)
        #expect(doc["repository"] as? String == ".")
        #expect((doc["base"] as? [String: String]) == ["ref": "main~1", "commit": f.first])
        #expect((doc["head"] as? [String: String]) == ["ref": "main", "commit": head])
        let changes = try #require(doc["changes"] as? [[String: Any]])
        #expect(changes.count == 2)
        let churn = try #require(changes.first { $0["name"] as? String == "churn" })
        #expect(churn["kind"] as? String == "Model")
        #expect(churn["file"] as? String == "models/churn/model.yaml")
        #expect(churn["change"] as? String == "modified")
        #expect((churn["fields"] as? [[String: String]]) == [["path": "spec.train.params.learning_rate", "before": "0.1", "after": "0.05"]])
        #expect((churn["changedInputs"] as? [String]) == ["data/x.csv"])
        let fraud = try #require(changes.first { $0["name"] as? String == "fraud" })
        #expect(fraud["change"] as? String == "added")
        #expect(fraud["file"] as? String == "models/fraud.yaml")
        #expect((fraud["fields"] as? [Any])?.isEmpty == true)
    }

    @Test func markdownFormat() throws {
        let f = try GitCLIFixture()
        let head = try f.work.commit("retrain", files: [
            "models/churn/model.yaml": Manifests.model(learningRate: "0.05"),
            "data/x.csv": "a,b\n9,9\n",
        ])
        let r = try Self.diff(f, ["main~1", "main", "--format", "markdown"])
        #expect(r.status == 0)
        #expect(r.stdout.hasPrefix("### Capstan: desired-state changes\n\n"))
        #expect(r.stdout.contains("`main~1` (\(f.first.prefix(10))) → `main` (\(head.prefix(10))): 1 changed, 1 with changed training inputs."))
        #expect(r.stdout.contains("#### ✏️ Model `churn` — modified (`models/churn/model.yaml`)"))
        #expect(r.stdout.contains("| field | before | after |\n|---|---|---|\n| `spec.train.params.learning_rate` | `0.1` | `0.05` |\n"))
        #expect(r.stdout.contains("Training inputs changed: `data/x.csv` (a retrain is due)."))
    }

    @Test func exitCodeTwoOnChangesAndZeroWithout() throws {
        let f = try GitCLIFixture()
        try f.work.commit("lr", files: ["models/churn/model.yaml": Manifests.model(learningRate: "0.05")])
        #expect(try Self.diff(f, ["main~1", "main", "--exit-code"]).status == 2)
        #expect(try Self.diff(f, ["main~1", "main"]).status == 0)
        let same = try Self.diff(f, ["main", "main", "--exit-code"])
        #expect(same.status == 0)
        #expect(same.stdout.hasSuffix(": no changes to the desired state\n"))
    }

    @Test func invalidManifestsAtHeadFailTheDiff() throws {
        let f = try GitCLIFixture()
        try f.work.commit("broken", files: ["models/churn/model.yaml": Manifests.broken])
        let r = try Self.diff(f, ["main~1", "main", "--exit-code"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("capstan: error: "))
        #expect(r.stderr.contains("in the manifests at main; run capstan validate --repo . --ref main"), "\(r.stderr)")
    }

    @Test func anUnknownRefFailsTheDiff() throws {
        let f = try GitCLIFixture()
        let r = try Self.diff(f, ["nope", "main"])
        #expect(r.status == 1)
        #expect(r.stderr.contains("ref 'nope' not found (branches: main)"))
    }

    @Test func aDiffOfARemote() throws {
        let f = try GitCLIFixture()
        let daemon = try f.daemon()
        try f.pushCommit("lr", files: ["models/churn/model.yaml": Manifests.model(learningRate: "0.05")])
        let r = try CLI.run(["diff", "--repo", daemon.url("models.git"), "--state-dir", f.state, "main~1", "main"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.hasPrefix("models/churn/model.yaml: Model churn: spec.train.params.learning_rate 0.1 → 0.05\n"))
        #expect(r.stdout.contains("\(daemon.url("models.git")) \(f.first.prefix(10))"))
    }
}
