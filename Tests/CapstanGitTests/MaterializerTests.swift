import Foundation
import Testing
@testable import CapstanTestSupport

@testable import CapstanGit

/// Commit trees written to `<state>/trees/<tree id>`.
struct MaterializerTests {
    final class Fixture {
        let dir: TempDir
        let repo: GitRepo
        let state: String
        let materializer: Materializer

        init() throws {
            dir = try TempDir()
            repo = try GitRepo(at: dir.sub("repo"))
            try Manifests.write(into: repo)
            state = dir.sub("state").path
            materializer = Materializer(stateDirectory: state)
        }

        var trees: String { state + "/trees" }

        /// Everything in `<state>/trees`, hidden temporary folders included.
        var treeEntries: [String] { ((try? FileManager.default.contentsOfDirectory(atPath: trees)) ?? []).sorted() }

        func materialize(_ commit: String, folder: String = "") async throws -> URL {
            let opened = try await openLocal(repo.path)
            return try await materializer.materialize(opened.repository, commit: try #require(ObjectID(hex: commit)), folder: folder)
        }
    }

    static func permissions(_ path: String) throws -> Int {
        try #require((try FileManager.default.attributesOfItem(atPath: path))[.posixPermissions] as? Int)
    }

    static func text(_ url: URL, _ path: String) throws -> String {
        try String(contentsOf: url.appendingPathComponent(path), encoding: .utf8)
    }

    @Test func aCommitsTreeIsWrittenWithItsFilesAndModes() async throws {
        let f = try Fixture()
        let commit = try f.repo.commit("one")
        let url = try await f.materialize(commit)
        #expect(url.path == f.trees + "/" + (try f.repo.rev("\(commit)^{tree}")))
        #expect(try Self.text(url, "models/churn/model.yaml") == Manifests.model())
        #expect(try Self.text(url, "data/x.csv") == "a,b\n1,2\n")
        #expect(try Self.permissions(url.appendingPathComponent("models/churn/train.py").path) == 0o755)
        #expect(try Self.permissions(url.appendingPathComponent("models/churn/serve.py").path) == 0o644)
        let files = f.dir.files(under: url)
        #expect(files == ["README.md", "capstan.yaml", "data/x.csv", "deployments/churn-prod.yaml",
                          "models/churn/model.yaml", "models/churn/serve.py", "models/churn/train.py"])
        // Nothing else in trees/: no temporary folder left.
        #expect(f.treeEntries == [url.lastPathComponent])
    }

    @Test func aFolderIsWrittenUnderItsOwnTreeId() async throws {
        let f = try Fixture()
        let commit = try f.repo.commit("one")
        let url = try await f.materialize(commit, folder: "models/churn")
        #expect(url.lastPathComponent == (try f.repo.rev("\(commit):models/churn")))
        #expect(f.dir.files(under: url) == ["model.yaml", "serve.py", "train.py"])
        #expect(try Self.permissions(url.appendingPathComponent("train.py").path) == 0o755)
    }

    @Test(arguments: ["models/nope", "models/churn/train.py"])
    func aFolderThatIsNotOneIsRefused(_ folder: String) async throws {
        let f = try Fixture()
        let commit = try f.repo.commit("one")
        do {
            _ = try await f.materialize(commit, folder: folder)
            Issue.record("materialized '\(folder)'")
        } catch let error as Materializer.MaterializeError {
            #expect(error.message.contains("has no folder '\(folder)'"))
        }
        #expect(f.treeEntries.isEmpty)
    }

    @Test func aSecondCallReusesTheTreeWithoutRewritingIt() async throws {
        let f = try Fixture()
        let commit = try f.repo.commit("one")
        let first = try await f.materialize(commit)
        // A file only this test wrote, and an old modification date.
        try "mine".write(to: first.appendingPathComponent("marker"), atomically: false, encoding: .utf8)
        let old = Date(timeIntervalSince1970: 1_000_000_000)
        try FileManager.default.setAttributes([.modificationDate: old], ofItemAtPath: first.path)
        let second = try await f.materialize(commit)
        #expect(second.path == first.path)
        #expect(second == first, "the first call returned \(first.absoluteString), the second \(second.absoluteString)")
        #expect(FileManager.default.fileExists(atPath: second.appendingPathComponent("marker").path), "the tree was rewritten")
        // Marked as used, for garbage collection.
        let modified = try #require((try FileManager.default.attributesOfItem(atPath: second.path))[.modificationDate] as? Date)
        #expect(modified > old)
    }

    @Test func twoCallsAtOnceAgreeOnOneTree() async throws {
        let f = try Fixture()
        let commit = try #require(ObjectID(hex: try f.repo.commit("one")))
        let a = try await openLocal(f.repo.path).repository, b = try await openLocal(f.repo.path).repository
        let materializer = f.materializer
        async let x = materializer.materialize(a, commit: commit)
        async let y = materializer.materialize(b, commit: commit)
        let (u, v) = try await (x, y)
        #expect(u == v)
        #expect(f.treeEntries == [u.lastPathComponent])
        #expect(try Self.text(u, "data/x.csv") == "a,b\n1,2\n")
    }

    @Test func aSymlinkInsideTheTreeIsKept() async throws {
        let f = try Fixture()
        try f.repo.symlink("models/current", to: "churn")
        try f.repo.symlink("models/churn/data.csv", to: "../../data/x.csv")
        let commit = try f.repo.commit("links")
        let url = try await f.materialize(commit)
        let fm = FileManager.default
        #expect(try fm.destinationOfSymbolicLink(atPath: url.appendingPathComponent("models/current").path) == "churn")
        #expect(try fm.destinationOfSymbolicLink(atPath: url.appendingPathComponent("models/churn/data.csv").path) == "../../data/x.csv")
        #expect(try Self.text(url, "models/churn/data.csv") == "a,b\n1,2\n")
    }

    @Test(arguments: [
        ("escape", "../../etc/passwd"), ("escape", "/etc/passwd"), ("escape", ".."), ("escape", "../"),
        ("models/churn/escape", "../../../etc/passwd"), ("models/churn/escape", "/tmp"), ("models/escape", "churn/../../.."),
    ])
    func aSymlinkPointingOutsideIsRefusedAndNothingIsWritten(_ link: String, _ destination: String) async throws {
        let f = try Fixture()
        try f.repo.symlink(link, to: destination)
        let commit = try f.repo.commit("escape")
        do {
            let url = try await f.materialize(commit)
            Issue.record("materialized a tree with a symlink to '\(destination)' at \(url.path)")
        } catch let error as Materializer.MaterializeError {
            #expect(error.message.contains("symlink '\(link)' points outside the tree"))
            #expect(error.message.contains("'\(destination)'"))
            #expect(error.message.contains(String(commit.prefix(10))))
        }
        #expect(f.treeEntries.isEmpty, "left behind: \(f.treeEntries)")
    }

    @Test func aSymlinkOutOfAMaterializedFolderIsRefused() async throws {
        let f = try Fixture()
        try f.repo.symlink("models/churn/data.csv", to: "../../data/x.csv")
        let commit = try f.repo.commit("link")
        // Inside the repository, but outside the folder being written.
        await #expect(throws: Materializer.MaterializeError.self) { try await f.materialize(commit, folder: "models/churn") }
        #expect(f.treeEntries.isEmpty)
        _ = try await f.materialize(commit)
    }

    /// Each link checked on its own looks inside; followed one through the other, they leave the
    /// tree: `a/up -> ..` is the tree's root, `a/out -> up/..` its parent.
    @Test func symlinksThatLeaveTheTreeThroughEachOtherAreRefused() async throws {
        let f = try Fixture()
        try f.repo.symlink("a/up", to: "..")
        try f.repo.symlink("a/out", to: "up/..")
        let commit = try f.repo.commit("chain")
        do {
            let url = try await f.materialize(commit)
            let root = url.resolvingSymlinksInPath().path
            let resolved = url.appendingPathComponent("a/out").resolvingSymlinksInPath().path
            #expect(resolved == root || resolved.hasPrefix(root + "/"),
                    "a/out resolves to \(resolved), outside the materialized tree \(root)")
        } catch is Materializer.MaterializeError {
            // Refused: what should happen.
        }
    }

    /// The same chain with a final target that does not exist: on disk nothing resolves, so only
    /// resolving against the tree itself sees that a write through `a/out` lands two folders
    /// above it. Refused before anything is written.
    @Test(arguments: [
        ("a/out", "up/../../escaped-file"), ("a/out", "up/a/up/../../y"), ("a/out", "deep/../up/../../x"),
    ])
    func aDanglingChainOutOfTheTreeIsRefused(_ link: String, _ destination: String) async throws {
        let f = try Fixture()
        try f.repo.symlink("a/up", to: "..")
        try f.repo.symlink(link, to: destination)
        let commit = try f.repo.commit("dangling chain")
        let error = await #expect(throws: Materializer.MaterializeError.self) { try await f.materialize(commit) }
        #expect(error?.message.contains("symlink '\(link)' points outside the tree ('\(destination)', through other links)") == true,
                "\(String(describing: error))")
        #expect(f.treeEntries.isEmpty, "left behind: \(f.treeEntries)")
    }

    /// Chains that stay inside are kept, dangling or not; a loop is refused by name.
    @Test func chainsInsideTheTreeAreKeptAndLoopsRefused() async throws {
        let f = try Fixture()
        try f.repo.symlink("a/up", to: "..")
        try f.repo.symlink("a/data", to: "up/data/x.csv")
        try f.repo.symlink("a/later", to: "up/models/not-yet/../../new-file")
        let commit = try f.repo.commit("inside")
        let url = try await f.materialize(commit)
        #expect(try Self.text(url, "a/data") == "a,b\n1,2\n")

        let loop = try Fixture()
        try loop.repo.symlink("l1", to: "l2")
        try loop.repo.symlink("l2", to: "l1")
        let looped = try loop.repo.commit("loop")
        let error = await #expect(throws: Materializer.MaterializeError.self) { try await loop.materialize(looped) }
        #expect(error?.message.contains("does not resolve within 40 links") == true, "\(String(describing: error))")
    }

    @Test(arguments: [
        ("a/x", ["a/x": "../b"], Materializer.Resolution.inside), ("a/x", ["a/x": "../../b"], .outside),
        ("a/x", ["a/x": "/b"], .outside), ("a/x", ["a/x": "y/../../../b", "a/y": "c/d"], .inside),
        ("a/x", ["a/x": "y/../b", "a/y": ".."], .outside), ("a/x", ["a/x": "y/z/../..", "a/y": "../c"], .inside),
        ("a/x", ["a/x": "y/..", "a/y": "../c/d/../.."], .outside),
    ])
    func resolutionFollowsLinksAgainstTheTree(_ path: String, _ links: [String: String], _ expected: Materializer.Resolution) {
        #expect(Materializer.resolve(path, links: links) == expected)
    }

    @Test func garbageCollectionRemovesOldUnusedTreesAndKeepsListedOnes() async throws {
        let f = try Fixture()
        let a = try f.repo.commit("a")
        let b = try f.repo.commit("b", files: ["README.md": "# b\n"])
        let urlA = try await f.materialize(a)
        let urlB = try await f.materialize(b)
        let twoDaysAgo = Date().addingTimeInterval(-2 * 86_400)
        for url in [urlA, urlB] {
            try FileManager.default.setAttributes([.modificationDate: twoDaysAgo], ofItemAtPath: url.path)
        }
        let c = try f.repo.commit("c", files: ["README.md": "# c\n"])
        let urlC = try await f.materialize(c)
        // What an interrupted run leaves, two hours old.
        let leftover = f.trees + "/.\(String(repeating: "0", count: 40)).tmp-1-2"
        try FileManager.default.createDirectory(atPath: leftover, withIntermediateDirectories: true)
        try FileManager.default.setAttributes([.modificationDate: Date().addingTimeInterval(-7200)], ofItemAtPath: leftover)

        let keep: Set<ObjectID> = [try #require(ObjectID(hex: urlB.lastPathComponent))]
        let removed = f.materializer.collectGarbage(keep: keep, unusedSince: Date().addingTimeInterval(-86_400))
        #expect(removed == 2)
        #expect(!FileManager.default.fileExists(atPath: urlA.path))
        #expect(FileManager.default.fileExists(atPath: urlB.path))
        #expect(FileManager.default.fileExists(atPath: urlC.path))
        #expect(!FileManager.default.fileExists(atPath: leftover))
        // A removed tree comes back on demand.
        #expect(try await f.materialize(a) == urlA)
        #expect(try Self.text(urlA, "README.md") == "# models\n")
    }

    @Test func garbageCollectionWithoutTreesRemovesNothing() {
        let materializer = Materializer(stateDirectory: "/nonexistent/capstan-state")
        #expect(materializer.collectGarbage(unusedSince: Date()) == 0)
    }
}
