import CapstanCore
import Foundation
import Testing
@testable import CapstanTestSupport

@testable import CapstanGit

/// Every test that fetches. They run one at a time: the fetch timeout is process-wide in
/// libgit2 (see CCapstanGitStream), so a fetch with a 1s timeout running next to one with 20s
/// would otherwise pick up whichever was set last.
@Suite(.serialized) enum Remote {}

extension Remote {
    /// Mirrors over git:// (a real `git daemon`) and file://.
    @Suite struct Mirrors {
        @Test func theFirstOpenCreatesAMirrorWithItsMarker() async throws {
            let f = try RemoteFixture()
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let url = daemon.url("models.git")
            let opened = try await f.source(url).open()
            let mirror = try #require(opened.mirrorPath)
            #expect(mirror.hasPrefix(f.stateDirectory + "/sources/"))
            #expect(mirror.hasSuffix(".git"))
            #expect(f.sourcesEntries == [(mirror as NSString).lastPathComponent], "no temporary folders are left behind")
            let marker = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: mirror + "/capstan-mirror.json"))) as? [String: String]
            #expect(marker?["url"] == url)
            #expect(marker?["created"] != nil)
            #expect(opened.forcedUpdates.isEmpty)
            let head = try await opened.resolve(nil)
            #expect(head.commit.hex == f.first)
            #expect(try await opened.resolve("main").commit.hex == f.first)
            // A real bare repository: git itself can read it.
            let log = try Shell.run("git", ["--git-dir", mirror, "log", "--format=%H", "main"])
            #expect(log.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == f.first)
        }

        @Test func theSecondOpenFetchesNewCommits() async throws {
            let f = try RemoteFixture()
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let source = f.source(daemon.url("models.git"))
            let before = try await source.open()
            #expect(try await before.resolve("main").commit.hex == f.first)
            let second = try f.pushCommit("second", files: ["data/x.csv": "a,b\n5,6\n"])
            let after = try await source.open()
            #expect(after.mirrorPath == before.mirrorPath)
            #expect(try await after.resolve("main").commit.hex == second)
            #expect(try await after.resolve("main~1").commit.hex == f.first)
            // A fast-forward is not a force-push.
            #expect(after.forcedUpdates.isEmpty)
            #expect(!FileManager.default.fileExists(atPath: after.mirrorPath! + "/capstan-events.jsonl"))
        }

        @Test func openWithoutFetchReadsTheLastFetchedState() async throws {
            let f = try RemoteFixture()
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let source = f.source(daemon.url("models.git"))
            _ = try await source.open()
            try f.pushCommit("second", files: ["README.md": "# second\n"])
            let stale = try await source.open(fetch: false)
            #expect(try await stale.resolve("main").commit.hex == f.first)
        }

        @Test func theMirrorConfigHoldsNoRemoteAndNoCredentials() async throws {
            let f = try RemoteFixture()
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            var credentials = GitCredentials(environment: ["CAPSTAN_GIT_TOKEN": "tok-do-not-store-8812"])
            credentials.tokenEnv = "CAPSTAN_GIT_TOKEN"
            let source = f.source(daemon.url("models.git"), credentials: credentials)
            let opened = try await source.open()
            try f.pushCommit("second", files: ["README.md": "# second\n"])
            _ = try await source.open()
            let config = try String(contentsOfFile: opened.mirrorPath! + "/config", encoding: .utf8)
            #expect(!config.contains("[remote"))
            #expect(!config.contains("url"))
            #expect(!config.contains("127.0.0.1"))
            #expect(!config.contains("tok-do-not-store-8812"))
            #expect(config.contains("bare = true"))
        }

        @Test func tagsAreFetched() async throws {
            let f = try RemoteFixture()
            try f.work.git("tag", "-a", "v1", "-m", "one")
            try f.work.push(to: f.served.path, ["v1"])
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let opened = try await f.source(daemon.url("models.git")).open()
            #expect(try await opened.resolve("v1").commit.hex == f.first)
        }

        @Test func theDefaultBranchIsTheRemotesHEAD() async throws {
            let f = try RemoteFixture()
            try f.work.git("checkout", "-q", "-b", "trunk")
            let trunk = try f.work.commit("on trunk", files: ["README.md": "# trunk\n"])
            try f.work.push(to: f.served.path, ["trunk"])
            let served = GitRepo(existing: f.served)
            try served.git("symbolic-ref", "HEAD", "refs/heads/trunk")
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let opened = try await f.source(daemon.url("models.git")).open()
            #expect(try await opened.resolve(nil).commit.hex == trunk)
            #expect(try await opened.resolve("main").commit.hex == f.first)
        }

        @Test func aDeletedBranchDisappearsAfterTheNextFetch() async throws {
            let f = try RemoteFixture()
            try f.work.git("checkout", "-q", "-b", "experiment")
            try f.work.commit("experiment", files: ["README.md": "# try\n"])
            try f.work.push(to: f.served.path, ["experiment"])
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let source = f.source(daemon.url("models.git"))
            let first = try await source.open()
            #expect(try await first.repository.referenceTarget("refs/heads/experiment") != nil)
            try f.work.push(to: f.served.path, [":experiment"])
            let second = try await source.open()
            #expect(try await second.repository.referenceTarget("refs/heads/experiment") == nil)
            let error = try #require(await gitSourceError { try await second.resolve("experiment") })
            #expect(error.kind == .notFound)
            #expect(error.message.contains("branches: main"))
        }

        @Test func aForcePushIsReportedRecordedAndFollowed() async throws {
            let f = try RemoteFixture()
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let source = f.source(daemon.url("models.git"))
            let original = try f.pushCommit("lr 0.2", files: ["models/churn/model.yaml": Manifests.model(learningRate: "0.2")])
            let before = try await source.open()
            #expect(try await before.resolve("main").commit.hex == original)

            // Rewrite history: drop the commit, commit something else, force-push.
            try f.work.git("reset", "-q", "--hard", "HEAD~1")
            let rewritten = try f.work.commit("lr 0.3", files: ["models/churn/model.yaml": Manifests.model(learningRate: "0.3")])
            try f.work.push(to: f.served.path, ["main"], force: true)

            let after = try await source.open()
            #expect(after.forcedUpdates.count == 1)
            let forced = try #require(after.forcedUpdates.first)
            #expect(forced.ref == "refs/heads/main")
            #expect(forced.from.hex == original)
            #expect(forced.to.hex == rewritten)
            #expect(try await after.resolve("main").commit.hex == rewritten)

            let events = try String(contentsOfFile: after.mirrorPath! + "/capstan-events.jsonl", encoding: .utf8)
            let lines = events.split(separator: "\n")
            #expect(lines.count == 1)
            let event = try #require(try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: String])
            #expect(event["event"] == "forced-update")
            #expect(event["ref"] == "refs/heads/main")
            #expect(event["from"] == original)
            #expect(event["to"] == rewritten)
            #expect(event["at"].flatMap { ISO8601DateFormatter().date(from: $0) } != nil)

            // Reported once: the next fetch sees nothing new.
            let again = try await source.open()
            #expect(again.forcedUpdates.isEmpty)
            let eventsAgain = try String(contentsOfFile: after.mirrorPath! + "/capstan-events.jsonl", encoding: .utf8)
            #expect(eventsAgain == events)
        }

        @Test func overFileURLsTheMirrorIsCreatedAndUpdated() async throws {
            let f = try RemoteFixture()
            let source = f.source(f.fileURL)
            let first = try await source.open()
            let mirror = try #require(first.mirrorPath)
            #expect(FileManager.default.fileExists(atPath: mirror + "/capstan-mirror.json"))
            #expect(mirror != f.served.path)
            #expect(try await first.resolve(nil).commit.hex == f.first)
            let second = try f.pushCommit("second", files: ["README.md": "# two\n"])
            try f.work.git("checkout", "-q", "-b", "gone")
            try f.work.push(to: f.served.path, ["gone"])
            let updated = try await source.open()
            #expect(try await updated.resolve("main").commit.hex == second)
            #expect(try await updated.repository.referenceTarget("refs/heads/gone") != nil)
            try f.work.push(to: f.served.path, [":gone"])
            let pruned = try await source.open()
            #expect(try await pruned.repository.referenceTarget("refs/heads/gone") == nil)
        }

        @Test func twoRemotesGetTwoMirrors() async throws {
            let f = try RemoteFixture()
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let a = try await f.source(daemon.url("models.git")).open()
            let b = try await f.source(f.fileURL).open()
            #expect(a.mirrorPath != b.mirrorPath)
            #expect(f.sourcesEntries.count == 2)
        }
    }
}
