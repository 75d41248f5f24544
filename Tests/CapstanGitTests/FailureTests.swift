import CapstanCore
import CapstanManifests
import Foundation
import Testing
@testable import CapstanTestSupport

@testable import CapstanGit

extension Remote {
    /// Remotes that cannot be reached, stall, or whose mirror is damaged.
    @Suite struct Failures {
        @Test func aRefusedConnectionIsANetworkErrorNamingTheRepository() async throws {
            let f = try RemoteFixture()
            let port = try Ports.free()
            let url = "git://127.0.0.1:\(port)/models.git"
            let error = try #require(await gitSourceError { try await f.source(url).open() })
            #expect(error.kind == .network)
            #expect(error.repository == url)
            #expect(error.description.hasPrefix(url + ": "))
            #expect(error.message.contains("cannot fetch"))
            #expect(error.message.contains("127.0.0.1:\(port)"))
            // A failed first clone leaves nothing behind: no mirror, no temporary folder.
            #expect(f.sourcesEntries.isEmpty, "\(f.sourcesEntries)")
        }

        @Test func whenTheRemoteGoesAwayTheLastFetchedStateIsKept() async throws {
            let f = try RemoteFixture()
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let source = f.source(daemon.url("models.git"))
            let opened = try await source.open()
            daemon.stop()
            let error = try #require(await gitSourceError { try await source.open() })
            #expect(error.kind == .network)
            #expect(error.repository == daemon.url("models.git"))
            #expect(error.message.contains("cannot fetch"))
            #expect(error.message.contains("the last fetched state is kept"))
            // The mirror is intact and still readable without the network.
            #expect(FileManager.default.fileExists(atPath: opened.mirrorPath! + "/capstan-mirror.json"))
            let offline = try await source.open(fetch: false)
            #expect(try await offline.resolve("main").commit.hex == f.first)
        }

        /// A server that accepts the connection and never sends a byte: the fetch gives up after
        /// the timeout. The test is bounded by its own deadline so a regression fails, not hangs.
        @Test(.timeLimit(.minutes(1)), arguments: ["git", "http"])
        func aStalledServerTimesOutInsteadOfHanging(_ scheme: String) async throws {
            let f = try RemoteFixture()
            let server = try PythonServer(script: PythonServer.silent)
            defer { server.stop() }
            let url = "\(scheme)://127.0.0.1:\(server.port)/models.git"
            let source = f.source(url, timeout: 1)
            let outcome = await withDeadline(seconds: 30) { () -> GitSourceError? in
                do throws(GitSourceError) {
                    _ = try await source.open()
                    return nil
                } catch {
                    return error
                }
            }
            let returned = try #require(outcome, "the fetch from a silent server did not return")
            let error = try #require(returned, "a fetch from a server that never answers succeeded")
            #expect(error.kind == .network)
            #expect(error.repository == url)
            #expect(error.message.contains("timed out"))
            #expect(f.sourcesEntries.isEmpty, "\(f.sourcesEntries)")
        }

        /// A server that keeps sending a byte now and then but never finishes: no single read
        /// times out, yet the fetch must end after about the fetch timeout ("the longest a
        /// transfer may run", GitSourceOptions.fetchTimeout).
        @Test(.timeLimit(.minutes(1)))
        func aTricklingServerIsCutOffAfterTheTimeout() async throws {
            let f = try RemoteFixture()
            let server = try PythonServer(script: PythonServer.trickle)
            let url = "git://127.0.0.1:\(server.port)/models.git"
            let source = f.source(url, timeout: 1)
            let outcome = await withDeadline(seconds: 6) { () -> GitSourceError? in
                do throws(GitSourceError) {
                    _ = try await source.open()
                    return nil
                } catch {
                    return error
                }
            }
            // Stop the server either way, so a fetch still running ends (with a closed connection).
            server.stop()
            let returned = try #require(outcome, "the fetch was still running 6s after its 1s timeout")
            let error = try #require(returned, "a fetch from a server that never finishes succeeded")
            #expect(error.kind == .network)
        }

        @Test func aHalfWrittenMirrorIsDiscardedAndRecreated() async throws {
            let f = try RemoteFixture()
            let source = f.source(f.fileURL)
            let mirror = source.mirrorPath
            // What an interrupted first clone leaves: a folder, some files, no marker.
            try FileManager.default.createDirectory(atPath: mirror + "/objects", withIntermediateDirectories: true)
            try "leftover".write(toFile: mirror + "/leftover", atomically: false, encoding: .utf8)
            let opened = try await source.open()
            #expect(opened.mirrorPath == mirror)
            #expect(FileManager.default.fileExists(atPath: mirror + "/capstan-mirror.json"))
            #expect(!FileManager.default.fileExists(atPath: mirror + "/leftover"))
            #expect(try await opened.resolve("main").commit.hex == f.first)
            #expect(f.sourcesEntries == [(mirror as NSString).lastPathComponent])
        }

        @Test func aMirrorWhoseMarkerIsGoneIsRecreated() async throws {
            let f = try RemoteFixture()
            let source = f.source(f.fileURL)
            let mirror = try #require(try await source.open().mirrorPath)
            try "mine".write(toFile: mirror + "/sentinel", atomically: false, encoding: .utf8)
            try FileManager.default.removeItem(atPath: mirror + "/capstan-mirror.json")
            let second = try f.pushCommit("second", files: ["README.md": "# 2\n"])
            let opened = try await source.open()
            #expect(!FileManager.default.fileExists(atPath: mirror + "/sentinel"))
            #expect(FileManager.default.fileExists(atPath: mirror + "/capstan-mirror.json"))
            #expect(try await opened.resolve("main").commit.hex == second)
        }

        /// Damage that stops the mirror from opening at all: it is re-created from the remote.
        @Test(arguments: ["garbage config", "objects removed", "HEAD removed"])
        func aMirrorThatCannotBeOpenedIsRecreated(_ damage: String) async throws {
            let f = try RemoteFixture()
            let source = f.source(f.fileURL)
            let mirror = try #require(try await source.open().mirrorPath)
            try "mine".write(toFile: mirror + "/sentinel", atomically: false, encoding: .utf8)
            switch damage {
            case "garbage config": try "[[[ not a config".write(toFile: mirror + "/config", atomically: false, encoding: .utf8)
            case "objects removed": try FileManager.default.removeItem(atPath: mirror + "/objects")
            default: try FileManager.default.removeItem(atPath: mirror + "/HEAD")
            }
            let opened = try await source.open()
            #expect(!FileManager.default.fileExists(atPath: mirror + "/sentinel"), "the damaged mirror was kept")
            #expect(try await opened.resolve("main").commit.hex == f.first)
            let (result, _) = try await loadCommit(opened, "main")
            #expect(result.diagnostics.isEmpty)
            #expect(result.fileCount == 3)
        }

        /// Damage inside the object database (a pack file truncated, deleted or overwritten),
        /// with and without a new commit to fetch. `open` does not look at objects, so the damage
        /// shows while reading; callers (the CLI) then discard the mirror and clone it again. For
        /// that, every failure must be recognisable as damage: the commit reads normally, or it
        /// fails with kind .corrupt (a `GitSourceError` or a `GitError`), or the unreadable file
        /// is a file-unreadable diagnostic. Never "not found": the branch and its objects exist.
        @Test(arguments: ["truncated", "deleted", "overwritten"], [false, true])
        func aDamagedPackInTheMirrorIsReadOrReportedAsDamage(_ damage: String, newCommit: Bool) async throws {
            let f = try RemoteFixture()
            let source = f.source(f.fileURL)
            let mirror = try #require(try await source.open().mirrorPath)
            try #require(try damagePacks(inMirror: mirror, damage) > 0, "the mirror's objects are expected in a pack")
            let expected = newCommit ? try f.pushCommit("second", files: ["README.md": "# 2\n"]) : f.first
            do {
                let opened = try await source.open()
                let (result, _) = try await loadCommit(opened, "main")
                let unreadable = result.diagnostics.filter { $0.code == .fileUnreadable }
                if unreadable.isEmpty {
                    #expect(try await opened.resolve("main").commit.hex == expected)
                    #expect(result.diagnostics.isEmpty, "\(result.diagnostics.map(\.message))")
                    #expect(result.fileCount == 3)
                }
            } catch let error as GitSourceError {
                #expect(error.kind == .corrupt, "a damaged mirror reported as: \(error)")
            } catch let error as GitError {
                #expect(error.kind == .corrupt, "a damaged mirror reported as: \(error)")
            }
        }

        @Test func discardMirrorMakesTheNextOpenCloneAgain() async throws {
            let f = try RemoteFixture()
            let source = f.source(f.fileURL)
            let mirror = try #require(try await source.open().mirrorPath)
            try "mine".write(toFile: mirror + "/sentinel", atomically: false, encoding: .utf8)
            source.discardMirror()
            #expect(!FileManager.default.fileExists(atPath: mirror))
            #expect(f.sourcesEntries.isEmpty, "\(f.sourcesEntries)")
            let opened = try await source.open()
            #expect(!FileManager.default.fileExists(atPath: mirror + "/sentinel"))
            #expect(try await opened.resolve("main").commit.hex == f.first)
        }
    }
}

/// Damaged objects in a repository read in place (no mirror to re-create).
struct LocalCorruptionTests {
    final class Damaged {
        let dir: TempDir
        let repo: GitRepo

        init() throws {
            dir = try TempDir()
            repo = try GitRepo(at: dir.sub("repo"))
            try Manifests.write(into: repo)
            try repo.commit("one")
        }

        /// Replaces a loose object's file with `bytes`.
        func damage(_ spec: String, with bytes: (Data) -> Data) throws {
            let file = try repo.looseObjectPath(try repo.rev(spec))
            let original = try Data(contentsOf: file)
            chmod(file.path, 0o644)
            try bytes(original).write(to: file)
        }
    }

    @Test func aDamagedCommitIsACorruptErrorNamingTheRepositoryAndRef() async throws {
        let d = try Damaged()
        try d.damage("HEAD") { _ in Data("not zlib at all".utf8) }
        let opened = try await openLocal(d.repo.path)
        let error = try #require(await gitSourceError { try await opened.resolve("main") })
        #expect(error.kind == .corrupt)
        #expect(error.description.hasPrefix("\(d.repo.path) @ main: "))
        #expect(error.message.contains("inflate"))
    }

    @Test func aDamagedTreeFailsTheLoadAsCorrupt() async throws {
        let d = try Damaged()
        try d.damage("HEAD:models") { _ in Data("not zlib at all".utf8) }
        let opened = try await openLocal(d.repo.path)
        let revision = try await opened.resolve("main")
        do {
            _ = try await GitManifestSource(repository: opened.repository, revision: revision, repositoryName: d.repo.path)
            Issue.record("a damaged tree was read")
        } catch let error as GitError {
            #expect(error.kind == .corrupt)
        }
    }

    /// The blob's header still inflates but the rest of its stream is damaged: one
    /// file-unreadable diagnostic on that file, and the rest of the repository is still checked.
    @Test func aManifestBlobDamagedAfterItsHeaderIsOneDiagnosticOnItsFile() async throws {
        let d = try Damaged()
        try d.damage("HEAD:models/churn/model.yaml") { original in
            let keep = original.count / 2
            return original.prefix(keep) + Data(original.dropFirst(keep).map { $0 ^ 0x5A })
        }
        let opened = try await openLocal(d.repo.path)
        let outcome = await withDeadline(seconds: 20) { try? await loadCommit(opened, "main").0 }
        let loaded = try #require(outcome, "reading a damaged blob did not return")
        let result = try #require(loaded)
        let unreadable = result.diagnostics.filter { $0.code == .fileUnreadable }
        #expect(unreadable.map(\.location.file) == ["models/churn/model.yaml"])
        #expect(unreadable.first?.message.contains("cannot read blob") == true)
        // The deployment was still read.
        #expect(result.manifests.deployments.map(\.metadata.name) == ["churn-prod"])
    }

    /// libgit2 1.5 inflates a truncated loose object forever (libgit2/libgit2#7342, fixed upstream
    /// by #7346); Capstan checks loose objects before libgit2 reads them. Bounded so that a
    /// regression fails instead of hanging.
    @Test(.timeLimit(.minutes(1)))
    func aTruncatedManifestBlobFailsInsteadOfHanging() async throws {
        let d = try Damaged()
        try d.damage("HEAD:models/churn/model.yaml") { $0.prefix($0.count / 2) }
        let opened = try await openLocal(d.repo.path)
        let outcome = await withDeadline(seconds: 10) { () -> [String]? in
            guard let (result, _) = try? await loadCommit(opened, "main") else { return nil }
            return result.diagnostics.filter { $0.code == .fileUnreadable }.map(\.location.file)
        }
        let returned = try #require(outcome, "reading a truncated blob did not return")
        #expect(returned == ["models/churn/model.yaml"])
    }

    /// A blob whose object is garbage from the first byte: the failure must say which file of
    /// which repository is damaged.
    @Test func aGarbledManifestBlobIsReportedWithItsPath() async throws {
        let d = try Damaged()
        try d.damage("HEAD:models/churn/model.yaml") { _ in Data("garbage garbage".utf8) }
        let opened = try await openLocal(d.repo.path)
        do {
            let (result, _) = try await loadCommit(opened, "main")
            let unreadable = result.diagnostics.filter { $0.code == .fileUnreadable }
            #expect(unreadable.map(\.location.file) == ["models/churn/model.yaml"])
        } catch {
            #expect("\(error)".contains("models/churn/model.yaml"), "the error names neither the file nor the repository: \(error)")
        }
    }
}
