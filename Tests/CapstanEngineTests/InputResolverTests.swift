import CapstanCore
import CapstanEngine
import CapstanManifests
import CapstanStore
import Foundation
import GRDB
import Synchronization
import Testing
@testable import CapstanTestSupport

@testable import CapstanGit

/// Input identities at real commits of real repositories, and the content-hash cache of inputs
/// under data roots in a real state database.
struct InputResolverTests {
    /// A repository with the shared desired state (`models/churn` holds its own `model.yaml`), a
    /// data root and a state folder.
    final class Fixture {
        let dir: TempDir
        let repo: GitRepo
        let dataRoot: String
        let store: SQLiteStateStore
        var database: StateDatabase { store.database }
        var clock: Clock

        /// A clock for `checked_at`: starts at the real time and moves on a millisecond per call.
        final class Clock: Sendable {
            let next: Mutex<Int64>
            init() { next = Mutex(StoreTime.systemMilliseconds()) }
            func now() -> Int64 { next.withLock { $0 += 1; return $0 } }
        }

        init() throws {
            dir = try TempDir()
            repo = try GitRepo(at: dir.sub("repo"))
            dataRoot = dir.sub("data").path
            try FileManager.default.createDirectory(atPath: dataRoot, withIntermediateDirectories: true)
            try Manifests.write(into: repo)
            try repo.commit("first")
            store = try SQLiteStateStore(stateDirectory: dir.sub("state").path)
            clock = Clock()
        }

        func resolver(_ source: any SourceRepository) -> InputResolver {
            InputResolver(source: source)
        }

        func hasher() -> ExternalInputHasher {
            let clock = self.clock
            return ExternalInputHasher(store: store, now: { clock.now() })
        }

        /// Opens the repository and loads `ref`'s manifests.
        func load(_ ref: String = "main") async throws -> (GitSourceRepository, SourceRevision, LoadResult) {
            let source = GitSourceRepository(source: GitSource(location: .local(path: repo.path),
                                                               options: GitSourceOptions(stateDirectory: dir.sub("git-state").path,
                                                                                         credentials: GitCredentials(environment: [:]))))
            let revision = try await source.resolve(ref, fetch: false)
            let result = try await ManifestLoader(source: try await source.manifests(at: revision)).load()
            #expect(result.diagnostics.filter { $0.severity == .error }.isEmpty, "\(result.diagnostics.map(\.message))")
            return (source, revision, result)
        }

        /// The identities of `inputs` at `ref`.
        func identities(_ inputs: [TrainInput], at ref: String = "main") async throws -> [String] {
            let (source, revision, result) = try await load(ref)
            return try await resolver(source).identities(
                of: [inputs], revision: revision, manifestFiles: result.manifestFiles, dataRoots: [dataRoot], hasher: hasher())[0]
                .map(\.identity)
        }

        /// The desired model `churn` at `ref`.
        func churn(at ref: String = "main") async throws -> DesiredModel {
            let (source, revision, result) = try await load(ref)
            let clock = self.clock
            let models = try await resolver(source).desiredModels(result, revision: revision, store: store, now: { clock.now() })
            return try #require(models.first { $0.name == "churn" })
        }

        func data(_ relative: String) -> String { dataRoot + "/" + relative }

        func writeData(_ relative: String, _ text: String, mtime: Int? = 1_600_000_000) throws {
            let path = data(relative)
            try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            if let mtime { try setMTime(path, seconds: mtime) }
        }

        /// Cached row of `path`: (digest, checked_at).
        func cacheRow(_ path: String) throws -> (digest: String, checkedAt: Int64)? {
            try database.pool.read { db in
                try Row.fetchOne(db, sql: "SELECT digest, checked_at FROM input_hashes WHERE path = ?", arguments: [path])
                    .map { (digest: $0["digest"] as String, checkedAt: $0["checked_at"] as Int64) }
            }
        }

        func cachedPaths() throws -> [String] {
            try database.pool.read { db in try String.fetchAll(db, sql: "SELECT path FROM input_hashes ORDER BY path") }
        }
    }

    static func setMTime(_ path: String, seconds: Int, nanoseconds: Int = 123_456_789) throws {
        var times = [timespec(tv_sec: seconds, tv_nsec: nanoseconds), timespec(tv_sec: seconds, tv_nsec: nanoseconds)]
        guard utimensat(AT_FDCWD, path, &times, AT_SYMLINK_NOFOLLOW) == 0 else { throw FixtureError("utimensat \(path): \(errno)") }
    }

    static func status(_ path: String) throws -> stat {
        var info = stat()
        guard lstat(path, &info) == 0 else { throw FixtureError("lstat \(path): \(errno)") }
        return info
    }

    /// Overwrites the start of the file in place (same inode, same size) and puts its mtime back.
    static func overwriteInPlace(_ path: String, _ text: String, keepingMTimeOf info: stat) throws {
        let handle = try #require(FileHandle(forWritingAtPath: path))
        try handle.seek(toOffset: 0)
        try handle.write(contentsOf: Data(text.utf8))
        try handle.close()
        var times = [info.st_atim, info.st_mtim]
        guard utimensat(AT_FDCWD, path, &times, 0) == 0 else { throw FixtureError("utimensat \(path): \(errno)") }
    }

    // MARK: Inputs in the repository

    @Test func aFileIsItsBlobAndAFolderItsTree() async throws {
        let f = try Fixture()
        try f.repo.commit("more data", files: ["data/y.csv": "c,d\n", "data/sub/z.csv": "e\n"])
        let ids = try await f.identities([.repository("data/x.csv"), .repository("data"), .repository("data/sub/"),
                                          .repository("./models/churn/train.py"), .repository("data/nope.csv"), .repository("nope")])
        #expect(ids == [
            "git-blob:" + (try f.repo.rev("HEAD:data/x.csv")),
            "git-tree:" + (try f.repo.rev("HEAD:data")),
            "git-tree:" + (try f.repo.rev("HEAD:data/sub")),
            "git-blob:" + (try f.repo.rev("HEAD:models/churn/train.py")),
            InputIdentity.missing,
            InputIdentity.missing,
        ])
    }

    @Test func aFolderHoldingManifestsLeavesThemOut() async throws {
        let f = try Fixture()
        let ids = try await f.identities([.repository("models/churn"), .repository("models"), .repository(".")])
        for id in ids {
            #expect(id.hasPrefix("tree-without-manifests:"))
            #expect(id.utf8.count == "tree-without-manifests:".utf8.count + 64)
        }
        #expect(Set(ids).count == 3)
    }

    @Test func aCommentInAnUnrelatedFileChangesNothing() async throws {
        let f = try Fixture()
        let inputs: [TrainInput] = [.repository("models/churn"), .repository("data/x.csv"), .repository("data")]
        let before = try await f.identities(inputs)
        let churn = try await f.churn()
        try f.repo.commit("comments", files: [
            "README.md": "# models\n\n<!-- a comment -->\n",
            "deployments/churn-prod.yaml": "# serves the champion\n" + Manifests.deployment,
        ])
        #expect(try await f.identities(inputs) == before)
        #expect(try await f.churn().fingerprint == churn.fingerprint)
    }

    @Test func anAliasPinChangedInTheModelsOwnFolderChangesNothing() async throws {
        let f = try Fixture()
        let inputs: [TrainInput] = [.repository("models/churn"), .repository("models")]
        let before = try await f.identities(inputs)
        let churn = try await f.churn()
        let treeBefore = try f.repo.rev("HEAD:models/churn")
        try f.repo.commit("promote", files: ["models/churn/model.yaml": Manifests.model(champion: "3")])
        // The folder's Git tree did change: the manifest is in it.
        #expect(try f.repo.rev("HEAD:models/churn") != treeBefore)
        #expect(try await f.identities(inputs) == before)
        let promoted = try await f.churn()
        #expect(promoted.manifest.spec.alias(named: "champion")?.target == .version(3))
        #expect(promoted.fingerprint == churn.fingerprint)
        #expect(promoted.training == churn.training)
    }

    @Test(arguments: ["edit", "add", "remove", "chmod", "rename"])
    func anyOtherChangeInThatFolderChangesIt(_ change: String) async throws {
        let f = try Fixture()
        let before = try await f.identities([.repository("models/churn"), .repository("models")])
        let churn = try await f.churn()
        switch change {
        case "edit": try f.repo.write("models/churn/train.py", "print('training harder')\n", executable: true)
        case "add": try f.repo.write("models/churn/features/extra.py", "X = 1\n")
        case "remove": try f.repo.remove("models/churn/serve.py")
        case "chmod": try f.repo.write("models/churn/serve.py", "print('serving')\n", executable: true)
        default:
            try f.repo.remove("models/churn/serve.py")
            try f.repo.write("models/churn/server.py", "print('serving')\n")
        }
        try f.repo.commit(change)
        let after = try await f.identities([.repository("models/churn"), .repository("models")])
        #expect(after[0] != before[0])
        #expect(after[1] != before[1])
        let changed = try await f.churn()
        #expect(changed.fingerprint != churn.fingerprint)
        #expect(changed.training.differences(from: churn.training)
                == [.inputChanged(input: "models/churn", from: before[0], to: after[0])])
    }

    @Test func aNewManifestFileInTheFolderChangesNothing() async throws {
        let f = try Fixture()
        let before = try await f.identities([.repository("models/churn")])
        try f.repo.commit("a second model next to the first", files: [
            "models/churn/shadow.yaml": Manifests.model(name: "churn-shadow"),
        ])
        #expect(try await f.identities([.repository("models/churn")]) == before)
    }

    @Test func oneResolverFollowsTheCommitsItIsGiven() async throws {
        // What a controller does: one resolver, pass after pass, the commit moving back and forth.
        let f = try Fixture()
        let (source, first, firstLoad) = try await f.load()
        let resolver = f.resolver(source)
        let inputs: [[TrainInput]] = [[.repository("models/churn"), .repository("data/x.csv")], [.repository("models/churn")]]
        func resolve(_ revision: SourceRevision, _ load: LoadResult) async throws -> [[String]] {
            try await resolver.identities(of: inputs, revision: revision, manifestFiles: load.manifestFiles, dataRoots: [],
                                          hasher: f.hasher())
                .map { $0.map(\.identity) }
        }
        let atFirst = try await resolve(first, firstLoad)
        #expect(atFirst[0][0] == atFirst[1][0])
        #expect(try await resolve(first, firstLoad) == atFirst)
        try f.repo.commit("train", files: ["models/churn/train.py": "print('again')\n", "data/x.csv": "a,b\n3,4\n"])
        let (_, second, secondLoad) = try await f.load()
        let atSecond = try await resolve(second, secondLoad)
        #expect(atSecond[0][0] != atFirst[0][0] && atSecond[0][1] != atFirst[0][1])
        #expect(atSecond[1][0] == atSecond[0][0])
        #expect(try await resolve(first, firstLoad) == atFirst)
        #expect(try await resolve(second, secondLoad) == atSecond)
        // The same tree with another set of manifest files is another index.
        let none = try await resolver.identities(of: inputs, revision: second, manifestFiles: [], dataRoots: [], hasher: f.hasher())
        #expect(none[0][0].identity == "git-tree:" + (try f.repo.rev("HEAD:models/churn")))
    }

    @Test func aYAMLFileThatIsNotLoadedCountsAsData() async throws {
        // `data/` is not a manifest folder: its YAML is training data like any other file.
        let f = try Fixture()
        try f.repo.commit("params", files: ["data/params.yaml": "lr: 0.1\n"])
        let before = try await f.identities([.repository("data")])
        #expect(before[0].hasPrefix("git-tree:"))
        try f.repo.commit("params", files: ["data/params.yaml": "lr: 0.2\n"])
        #expect(try await f.identities([.repository("data")]) != before)
    }

    @Test func onlyTheTrainingPartOfAModelMakesItsFingerprint() async throws {
        let f = try Fixture()
        func model(_ extra: String = "", timeout: String = "1h", params: String = "{learning_rate: 0.1}",
                   champion: String = "latest", serve: String = "[python3, serve.py]") -> String {
            """
            apiVersion: capstan/v1
            kind: Model
            metadata:
              name: churn
              labels: {team: growth}
            spec:
              description: Predicts churn.\(extra)
              train:
                command: [python3, train.py]
                workdir: models/churn
                inputs: [models/churn, data/x.csv]
                params: \(params)
                timeout: \(timeout)
              validate:
                metrics:
                  accuracy: {min: 0.9}
              serve:
                command: \(serve)
                workdir: models/churn
              aliases:
                champion: \(champion)
              retention: {keepVersions: 10}

            """
        }
        try f.repo.commit("full model", files: ["models/churn/model.yaml": model()])
        let first = try await f.churn()
        let unchanged: [(String, String)] = [
            ("timeout", model(timeout: "2h")),
            ("validate", model().replacingOccurrences(of: "min: 0.9", with: "min: 0.95")),
            ("aliases", model(champion: "1")),
            ("serve", model(serve: "[python3, serve.py, --port-from-env]")),
            ("description", model(" Now with more words.")),
            ("labels", model().replacingOccurrences(of: "team: growth", with: "team: retention")),
            ("retention", model().replacingOccurrences(of: "keepVersions: 10", with: "keepVersions: 3")),
        ]
        for (what, text) in unchanged {
            try f.repo.commit(what, files: ["models/churn/model.yaml": text])
            #expect(try await f.churn().fingerprint == first.fingerprint, "\(what)")
        }
        try f.repo.commit("lr", files: ["models/churn/model.yaml": model(params: "{learning_rate: 0.05}")])
        let retrains = try await f.churn()
        #expect(retrains.fingerprint != first.fingerprint)
        #expect(retrains.training.differences(from: first.training)
                == [.paramChanged(name: "learning_rate", from: .double(0.1), to: .double(0.05))])
    }

    @Test func desiredModelsCarryTheDescriptionAndItsFingerprint() async throws {
        let f = try Fixture()
        let churn = try await f.churn()
        #expect(churn.training.inputs == [
            InputIdentity(input: "models/churn", identity: try await f.identities([.repository("models/churn")])[0]),
            InputIdentity(input: "data/x.csv", identity: "git-blob:" + (try f.repo.rev("HEAD:data/x.csv"))),
        ])
        #expect(churn.training.command == ["python3", "train.py"])
        #expect(churn.training.params == ["learning_rate": .double(0.1), "epochs": .int(10)])
        #expect(churn.fingerprint == Fingerprint.of(churn.training))
    }

    // MARK: Inputs under a data root

    @Test func aFileIsItsContentHash() async throws {
        let f = try Fixture()
        try f.writeData("events.csv", "a,b\n1,2\n")
        let ids = try await f.identities([.external(f.data("events.csv")), .uri("s3://bucket/events/", version: "2026-11-01")])
        #expect(ids == ["sha256:" + Hex.sha256(Array("a,b\n1,2\n".utf8)), "version:2026-11-01"])
    }

    @Test func anUnchangedFileIsNotReadAgain() async throws {
        let f = try Fixture()
        let path = f.data("events.csv")
        try f.writeData("events.csv", "old content\n")
        let hasher = f.hasher()
        let first = try await hasher.identities(of: [path])[path]
        #expect(first == "sha256:" + Hex.sha256(Array("old content\n".utf8)))
        let row = try #require(try f.cacheRow(path))

        // Same size, same mtime, same inode, other bytes: only a read could notice.
        let info = try Self.status(path)
        try Self.overwriteInPlace(path, "new content\n", keepingMTimeOf: info)
        let now = try Self.status(path)
        #expect(now.st_ino == info.st_ino && now.st_size == info.st_size)
        #expect(now.st_mtim.tv_sec == info.st_mtim.tv_sec && now.st_mtim.tv_nsec == info.st_mtim.tv_nsec)

        #expect(try await hasher.identities(of: [path])[path] == first)
        #expect(try f.cacheRow(path)?.checkedAt == row.checkedAt)
    }

    @Test func aChangedMTimeReadsTheFileAgain() async throws {
        let f = try Fixture()
        let path = f.data("events.csv")
        try f.writeData("events.csv", "old content\n", mtime: 1_600_000_000)
        let hasher = f.hasher()
        let first = try await hasher.identities(of: [path])[path]
        let row = try #require(try f.cacheRow(path))
        // Same size, same inode, new bytes and a new mtime.
        let info = try Self.status(path)
        try Self.overwriteInPlace(path, "new content\n", keepingMTimeOf: info)
        try Self.setMTime(path, seconds: 1_600_000_100)
        let second = try await hasher.identities(of: [path])[path]
        #expect(second != first)
        #expect(second == "sha256:" + Hex.sha256(Array("new content\n".utf8)))
        let updated = try #require(try f.cacheRow(path))
        #expect(updated.checkedAt > row.checkedAt)
        #expect("sha256:" + updated.digest == second)
    }

    @Test func aReplacedFileIsReadAgainEvenWithTheSameSizeAndMTime() async throws {
        let f = try Fixture()
        let path = f.data("events.csv")
        try f.writeData("events.csv", "old content\n")
        let hasher = f.hasher()
        let first = try await hasher.identities(of: [path])[path]
        let info = try Self.status(path)
        // A new file (new inode) renamed over the old one, with the old one's mtime.
        try f.writeData("events.csv.tmp", "new content\n", mtime: nil)
        try Self.overwriteInPlace(f.data("events.csv.tmp"), "new content\n", keepingMTimeOf: info)
        #expect(rename(f.data("events.csv.tmp"), path) == 0)
        #expect(try Self.status(path).st_ino != info.st_ino)
        #expect(try await hasher.identities(of: [path])[path] == "sha256:" + Hex.sha256(Array("new content\n".utf8)))
        #expect(first != "sha256:" + Hex.sha256(Array("new content\n".utf8)))
    }

    @Test func aFileWrittenJustBeforeItWasHashedIsReadAgain() async throws {
        // Its mtime is within the racy window of the hashing: a write in the same clock tick
        // would not change the mtime, so the digest is not trusted yet.
        // The clock reads 1 ms, then 2 ms, after the file's mtime: both hashings are inside the
        // window whatever the machine's load (a real clock would leave it on a busy machine).
        let f = try Fixture()
        let path = f.data("fresh.csv")
        try f.writeData("fresh.csv", "x\n", mtime: nil)
        let info = try Self.status(path)
        let mtime = Int64(info.st_mtim.tv_sec) * 1_000 + Int64(info.st_mtim.tv_nsec) / 1_000_000
        let ticks = Atomic<Int64>(0)
        let hasher = ExternalInputHasher(store: f.store, now: { mtime + ticks.add(1, ordering: .sequentiallyConsistent).newValue })
        _ = try await hasher.identities(of: [path])
        let row = try #require(try f.cacheRow(path))
        _ = try await hasher.identities(of: [path])
        #expect(try #require(try f.cacheRow(path)).checkedAt > row.checkedAt)
        #expect(ExternalInputHasher.racyWindow > 2)
    }

    @Test func aFolderIsTheHashOfItsFiles() async throws {
        let f = try Fixture()
        try f.writeData("events/2026/a.csv", "a\n")
        try f.writeData("events/2026/b.csv", "b\n")
        try f.writeData("events/c.csv", "c\n")
        let folder = f.data("events")
        let hasher = f.hasher()
        let first = try #require(try await hasher.identities(of: [folder])[folder])
        #expect(first.hasPrefix("sha256:"))
        #expect(try f.cachedPaths() == [folder + "/2026/a.csv", folder + "/2026/b.csv", folder + "/c.csv"])
        #expect(try await hasher.identities(of: [folder])[folder] == first)

        // An empty folder does not count; a file does, and so does its name.
        try FileManager.default.createDirectory(atPath: folder + "/empty", withIntermediateDirectories: true)
        #expect(try await hasher.identities(of: [folder])[folder] == first)
        try FileManager.default.moveItem(atPath: folder + "/c.csv", toPath: folder + "/d.csv")
        let renamed = try #require(try await hasher.identities(of: [folder])[folder])
        #expect(renamed != first)
        // The row of the file that went away is dropped.
        #expect(try f.cachedPaths() == [folder + "/2026/a.csv", folder + "/2026/b.csv", folder + "/d.csv"])
        try f.writeData("events/2026/a.csv", "A\n", mtime: 1_600_000_500)
        #expect(try await hasher.identities(of: [folder])[folder] != renamed)
    }

    @Test func aMissingInputIsMissing() async throws {
        let f = try Fixture()
        let path = f.data("events.csv")
        try f.writeData("events.csv", "a\n")
        #expect(try await f.identities([.external(path)]) != [InputIdentity.missing])
        try FileManager.default.removeItem(atPath: path)
        try f.writeData("other.csv", "b\n")
        #expect(try await f.identities([.external(path), .external(f.data("no/such/folder")), .external(f.data("other.csv/below-a-file"))])
                == [InputIdentity.missing, InputIdentity.missing, InputIdentity.missing])
        #expect(try f.cachedPaths().isEmpty)
    }

    @Test func aSymlinkUnderADataRootIsRefused() async throws {
        let f = try Fixture()
        try f.writeData("real/events.csv", "a\n")
        try FileManager.default.createSymbolicLink(atPath: f.data("link.csv"), withDestinationPath: f.data("real/events.csv"))
        try FileManager.default.createSymbolicLink(atPath: f.data("real/inner.csv"), withDestinationPath: "events.csv")
        for (input, culprit) in [(f.data("link.csv"), f.data("link.csv")), (f.data("real"), f.data("real/inner.csv"))] {
            let error = await #expect(throws: InputResolverError.self) { try await f.identities([.external(input)]) }
            #expect(error?.code == .symlink)
            #expect(error?.path == culprit)
            #expect(error?.message.contains("'\(culprit)' is a symlink") == true)
        }
    }

    @Test func anInputOutsideTheDataRootsIsRefused() async throws {
        let f = try Fixture()
        let outside = f.dir.sub("elsewhere.csv").path
        try Data("a\n".utf8).write(to: URL(fileURLWithPath: outside))
        let error = await #expect(throws: InputResolverError.self) { try await f.identities([.external(outside)]) }
        #expect(error?.code == .outsideDataRoots)
        #expect(error?.path == outside)
    }

    @Test func aSpecialFileIsRefused() async throws {
        let f = try Fixture()
        #expect(mkfifo(f.data("pipe"), 0o644) == 0)
        let error = await #expect(throws: InputResolverError.self) { try await f.identities([.external(f.data("pipe"))]) }
        #expect(error?.code == .unsupportedEntry)
    }
}
