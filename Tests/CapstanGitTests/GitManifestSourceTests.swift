import CapstanCore
import CapstanManifests
import Foundation
import Testing
@testable import CapstanTestSupport

@testable import CapstanGit

/// The manifests of a commit, read from Git objects, through the loader and its parse cache.
struct GitManifestSourceTests {
    final class Fixture {
        let dir: TempDir
        let repo: GitRepo
        let first: String

        init() throws {
            dir = try TempDir()
            repo = try GitRepo(at: dir.sub("repo"))
            try Manifests.write(into: repo)
            first = try repo.commit("first")
        }

        func opened() async throws -> OpenedRepository { try await openLocal(repo.path) }
    }

    @Test func aCommitLoadsLikeTheFolderItHolds() async throws {
        let f = try Fixture()
        let (result, source) = try await loadCommit(try await f.opened(), "main")
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics.map(\.message))")
        #expect(result.fileCount == 3)
        #expect(result.parsedFileCount == 3)
        #expect(result.manifests.models.map(\.metadata.name) == ["churn"])
        #expect(result.manifests.deployments.map(\.metadata.name) == ["churn-prod"])
        #expect(result.manifestFiles == ["capstan.yaml", "models/churn/model.yaml", "deployments/churn-prod.yaml"])
        #expect(source.displayName == "\(f.repo.path) @ \(String(f.first.prefix(10)))")
        #expect(source.snapshotIdentity == (try f.repo.rev("main^{tree}")))
    }

    @Test func aPassOverTheSameCommitParsesNothing() async throws {
        let f = try Fixture()
        let opened = try await f.opened()
        let cache = ParseCache()
        let (first, _) = try await loadCommit(opened, "main", cache: cache)
        #expect(first.parsedFileCount == 3)
        let (again, _) = try await loadCommit(opened, "main", cache: cache)
        #expect(again.parsedFileCount == 0)
        #expect(again.fileCount == 3)
        #expect(again.manifests == first.manifests)
        // The whole result was reused: the very same manifest objects.
        #expect(again.manifests.models.first === first.manifests.models.first)
        #expect(again.diagnostics == first.diagnostics)
    }

    @Test func aCommitThatChangesOneManifestParsesOneFile() async throws {
        let f = try Fixture()
        let opened = try await f.opened()
        let cache = ParseCache()
        _ = try await loadCommit(opened, "main", cache: cache)
        try f.repo.commit("lr", files: ["models/churn/model.yaml": Manifests.model(learningRate: "0.05")])
        let (result, _) = try await loadCommit(opened, "main", cache: cache)
        #expect(result.parsedFileCount == 1)
        #expect(result.fileCount == 3)
        #expect(result.manifests.models.first?.spec.train?.params["learning_rate"] != nil)
        #expect(result.diagnostics.isEmpty)
    }

    @Test(arguments: ["README.md", "data/x.csv", "models/churn/train.py"])
    func aCommitThatOnlyTouchesOtherFilesParsesNothing(_ path: String) async throws {
        let f = try Fixture()
        let opened = try await f.opened()
        let cache = ParseCache()
        let (before, _) = try await loadCommit(opened, "main", cache: cache)
        try f.repo.commit("touch \(path)", files: [path: "changed\n"])
        let (after, source) = try await loadCommit(opened, "main", cache: cache)
        // A new tree (the snapshot cannot be reused) whose manifest blobs are all unchanged.
        #expect(source.snapshotIdentity != (try f.repo.rev("main~1^{tree}")))
        #expect(after.parsedFileCount == 0)
        #expect(after.fileCount == 3)
        #expect(after.manifests == before.manifests)
        #expect(cache.count == 3)
    }

    @Test func theCacheKeepsOnlyWhatTheLastLoadUsed() async throws {
        let f = try Fixture()
        let opened = try await f.opened()
        let cache = ParseCache()
        _ = try await loadCommit(opened, f.first, cache: cache)
        try f.repo.commit("lr", files: ["models/churn/model.yaml": Manifests.model(learningRate: "0.05")])
        #expect(try await loadCommit(opened, "main", cache: cache).0.parsedFileCount == 1)
        // The cache keeps what the last load used: the old model.yaml was dropped.
        #expect(cache.count == 3)
        #expect(try await loadCommit(opened, f.first, cache: cache).0.parsedFileCount == 1)
    }

    @Test func diagnosticsNameTheRepositoryPathOfTheFile() async throws {
        let f = try Fixture()
        try f.repo.commit("broken", files: ["models/churn/model.yaml": Manifests.broken])
        let opened = try await f.opened()
        let (result, _) = try await loadCommit(opened, "main")
        let unknown = try #require(result.diagnostics.first { $0.code == .unknownField })
        #expect(unknown.summary == "error unknown-field models/churn/model.yaml:7:5")
        // The text is kept for caret snippets, under the same path.
        #expect(result.sourceLine(file: "models/churn/model.yaml", line: 7) == "    comand: [python3, train.py]")
        let (prefixed, _) = try await loadCommit(opened, "main", displayPrefix: "models-repo/")
        #expect(prefixed.diagnostics.contains { $0.summary == "error unknown-field models-repo/models/churn/model.yaml:7:5" })
    }

    /// The parse cache keys files by blob id and path; a load with another display prefix must
    /// still name files with its own prefix.
    @Test func aSharedCacheNamesFilesWithTheCurrentDisplayPrefix() async throws {
        let f = try Fixture()
        try f.repo.commit("broken", files: ["models/churn/model.yaml": Manifests.broken])
        let opened = try await f.opened()
        let cache = ParseCache()
        let (a, _) = try await loadCommit(opened, "main", cache: cache, displayPrefix: "a/")
        #expect(a.diagnostics.contains { $0.location.file == "a/models/churn/model.yaml" })
        let (b, _) = try await loadCommit(opened, "main", cache: cache, displayPrefix: "b/")
        let files = Set(b.diagnostics.map(\.location.file))
        #expect(files.contains("b/models/churn/model.yaml"), "diagnostics name \(files)")
        #expect(!files.contains("a/models/churn/model.yaml"), "diagnostics name \(files)")
    }

    @Test func filesOutsideTheManifestFoldersAreNeverRead() async throws {
        let f = try Fixture()
        var binary = [UInt8](repeating: 0, count: 4096)
        for i in binary.indices { binary[i] = UInt8(truncatingIfNeeded: i &* 131 &+ 7) }
        try f.repo.write("data/weights.bin", bytes: binary)
        try f.repo.write("data/latin1.yaml", bytes: Array("name: caf".utf8) + [0xE9, 0x0A])
        try f.repo.write("docs/example.yaml", "kind: [unclosed\n")
        // Not YAML, inside a manifest folder: not read either.
        try f.repo.write("models/churn/model.pkl", bytes: binary)
        try f.repo.commit("noise")
        let (result, _) = try await loadCommit(try await f.opened(), "main")
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics.map(\.summary))")
        #expect(result.fileCount == 3)
    }

    @Test func aNonUTF8ManifestIsReportedAsNotUTF8() async throws {
        let f = try Fixture()
        try f.repo.write("models/latin1.yaml", bytes: Array("apiVersion: capstan/v1\nkind: Model\nmetadata: {name: caf".utf8) + [0xE9] + Array("}\n".utf8))
        try f.repo.commit("latin-1")
        let (result, _) = try await loadCommit(try await f.opened(), "main")
        #expect(result.diagnostics.map(\.code) == [.notUTF8])
        #expect(result.diagnostics.first?.location.file == "models/latin1.yaml")
        #expect(result.fileCount == 4)
    }

    @Test func hiddenFoldersAreSkipped() async throws {
        let f = try Fixture()
        try f.repo.write("models/.github/workflows/ci.yaml", "on: [push\n")
        try f.repo.write("models/churn/.hidden.yaml", "kind: [broken\n")
        try f.repo.commit("hidden")
        let (result, _) = try await loadCommit(try await f.opened(), "main")
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics.map(\.summary))")
        #expect(result.fileCount == 3)
    }

    @Test func withoutAConfigEveryYAMLFileOutsideHiddenFoldersIsLoaded() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo"))
        try repo.write(".github/workflows/ci.yaml", "on: [push\n")
        try repo.write("m/churn.yml", """
            apiVersion: capstan/v1
            kind: Model
            metadata: {name: churn}
            spec:
              train: {command: [python3, train.py]}

            """)
        try repo.commit("one")
        let (result, source) = try await loadCommit(try await openLocal(repo.path), "main")
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics.map(\.summary))")
        #expect(result.manifestFiles == ["m/churn.yml"])
        #expect(try await source.yamlFiles(under: "").map(\.path) == ["m/churn.yml"])
    }

    @Test func yamlFilesCarryTheirBlobIdAsIdentity() async throws {
        let f = try Fixture()
        let source = try await loadCommit(try await f.opened(), "main").1
        let files = try await source.yamlFiles(under: "models")
        #expect(files.map(\.path) == ["models/churn/model.yaml"])
        #expect(files.first?.identity == (try f.repo.rev("main:models/churn/model.yaml")))
        let file = try #require(try await source.file(at: "models/churn/model.yaml"))
        #expect(try await source.read(file) == Array(Manifests.model().utf8))
        #expect(try await source.size(of: file) == Manifests.model().utf8.count)
        #expect(try await source.file(at: "models") == nil)
        #expect(try await source.file(at: "nope.yaml") == nil)
    }

    @Test func kindOfPaths() async throws {
        let f = try Fixture()
        try f.repo.symlink("models/link", to: "churn")
        try f.repo.symlink("models/out", to: "../../etc")
        try f.repo.git("add", "-A")
        // A submodule: a commit inside the tree (staged directly; there is no work tree for it).
        try f.repo.git("update-index", "--add", "--cacheinfo", "160000,\(f.first),vendor/lib")
        try f.repo.git("commit", "-q", "-m", "link and submodule")
        let source = try await loadCommit(try await f.opened(), "main").1
        #expect(try await source.kind(of: "") == .directory)
        #expect(try await source.kind(of: "models") == .directory)
        #expect(try await source.kind(of: "models/churn") == .directory)
        #expect(try await source.kind(of: "models/churn/train.py") == .file)  // executable
        #expect(try await source.kind(of: "data/x.csv") == .file)
        #expect(try await source.kind(of: "data/nope.csv") == .missing)
        #expect(try await source.kind(of: "nope") == .missing)
        // A symlink inside the tree is followed; one out of it is refused, unread.
        #expect(try await source.kind(of: "models/link") == .directory)
        // A path through a symlinked folder identifies nothing at that exact path.
        #expect(try await source.kind(of: "models/link/train.py") == .refused(.symlinkInPath(link: "models/link")))
        #expect(try await source.kind(of: "models/out") == .refused(.symlinkEscapes(target: "../../etc")))
        #expect(try await source.kind(of: "vendor/lib") == .other)
        #expect(try await source.kind(of: "vendor") == .directory)
        #expect(try await source.file(at: "models/link") == nil)
        #expect(try await source.kinds(of: ["models", "data/x.csv", "gone", "models/link"]) == [.directory, .file, .missing, .directory])
    }

    @Test func aMissingInputAtTheCommitIsReported() async throws {
        let f = try Fixture()
        try f.repo.remove("data/x.csv")
        try f.repo.commit("drop data")
        let (result, _) = try await loadCommit(try await f.opened(), "main")
        let missing = try #require(result.diagnostics.first { $0.code == .pathNotFound })
        #expect(missing.message == "input 'data/x.csv' does not exist in the repository")
        #expect(missing.location.file == "models/churn/model.yaml")
        #expect(missing.location.line == 8)
    }
}
