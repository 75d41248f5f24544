import Foundation
import CapstanCore
import Testing
@testable import CapstanTestSupport

@testable import CapstanGit

/// `GitRepository.changedPaths`: what differs between the trees of two commits.
struct TreeDiffTests {
    static let long = (1...40).map { "line \($0) of a file long enough for rename detection" }.joined(separator: "\n") + "\n"

    @Test func addModifyDeleteAndRename() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo"))
        let base = try repo.commit("base", files: [
            "a.txt": "a\n", "b.txt": Self.long, "c.txt": "c\n", "dir/keep.txt": "keep\n",
        ])
        try repo.write("a.txt", "a, changed\n")
        try FileManager.default.createDirectory(at: repo.url.appendingPathComponent("moved"), withIntermediateDirectories: true)
        try repo.git("mv", "b.txt", "moved/b.txt")
        try repo.remove("c.txt")
        try repo.write("dir/e.txt", "new\n")
        let head = try repo.commit("head")

        let opened = try await openLocal(repo.path)
        let changes = try await opened.repository.changedPaths(from: try #require(ObjectID(hex: base)), to: try #require(ObjectID(hex: head)))
        #expect(Set(changes) == [
            PathChange(status: .modified, oldPath: "a.txt", newPath: "a.txt"),
            PathChange(status: .renamed, oldPath: "b.txt", newPath: "moved/b.txt"),
            PathChange(status: .deleted, oldPath: "c.txt", newPath: "c.txt"),
            PathChange(status: .added, oldPath: "dir/e.txt", newPath: "dir/e.txt"),
        ])
        #expect(changes.count == 4)
        #expect(changes.first { $0.status == .deleted }?.path == "c.txt")
        #expect(changes.first { $0.status == .renamed }?.path == "moved/b.txt")
    }

    @Test func theSameCommitHasNoChanges() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo"))
        let id = try #require(ObjectID(hex: try repo.commit("one", files: ["a.txt": "a\n"])))
        let opened = try await openLocal(repo.path)
        #expect(try await opened.repository.changedPaths(from: id, to: id).isEmpty)
    }

    @Test func anEmptyCommitHasNoChanges() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo"))
        let a = try #require(ObjectID(hex: try repo.commit("one", files: ["a.txt": "a\n"])))
        let b = try #require(ObjectID(hex: try repo.commit("nothing", allowEmpty: true)))
        #expect(a != b)
        let opened = try await openLocal(repo.path)
        #expect(try await opened.repository.changedPaths(from: a, to: b).isEmpty)
    }

    @Test func anExecutableBitIsAModification() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo"))
        let a = try #require(ObjectID(hex: try repo.commit("one", files: ["run.sh": "echo\n"])))
        try repo.write("run.sh", "echo\n", executable: true)
        let b = try #require(ObjectID(hex: try repo.commit("chmod")))
        let opened = try await openLocal(repo.path)
        #expect(try await opened.repository.changedPaths(from: a, to: b) == [PathChange(status: .modified, oldPath: "run.sh", newPath: "run.sh")])
    }

    @Test func changesAreListedInBothDirections() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo"))
        let a = try #require(ObjectID(hex: try repo.commit("one", files: ["a.txt": "a\n"])))
        let b = try #require(ObjectID(hex: try repo.commit("two", files: ["n/new.txt": "n\n"])))
        let opened = try await openLocal(repo.path)
        #expect(try await opened.repository.changedPaths(from: a, to: b) == [PathChange(status: .added, oldPath: "n/new.txt", newPath: "n/new.txt")])
        #expect(try await opened.repository.changedPaths(from: b, to: a) == [PathChange(status: .deleted, oldPath: "n/new.txt", newPath: "n/new.txt")])
    }
}

/// `GitRepository.sameShapeChanges` and what `GitSourceRepository` builds on it: a commit that
/// only edits files is followed by patching the last listing, not by walking the new tree.
struct SameShapeTests {
    @Test func anEditListsTheFileAndTheFoldersAboveIt() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo"))
        let a = try repo.commit("one", files: ["models/a/model.yaml": "a\n", "models/b/model.yaml": "b\n", "README.md": "r\n"])
        let b = try repo.commit("two", files: ["models/b/model.yaml": "b, edited\n"])
        let opened = try await openLocal(repo.path)
        let treeA = try #require(ObjectID(hex: try repo.rev("\(a)^{tree}")))
        let treeB = try #require(ObjectID(hex: try repo.rev("\(b)^{tree}")))
        let changes = try #require(try await opened.repository.sameShapeChanges(from: treeA, to: treeB, limit: 100))
        #expect(changes.map(\.path) == ["models", "models/b", "models/b/model.yaml"])
        #expect(changes.map(\.kind) == [.tree, .tree, .blob])
        #expect(changes[2].old.hex == (try repo.rev("\(a):models/b/model.yaml")))
        #expect(changes[2].new.hex == (try repo.rev("\(b):models/b/model.yaml")))
        #expect(try await opened.repository.sameShapeChanges(from: treeA, to: treeA, limit: 100) == [])
        // Beyond the limit: nil, read in full.
        #expect(try await opened.repository.sameShapeChanges(from: treeA, to: treeB, limit: 2) == nil)
    }

    @Test func anotherShapeIsNil() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo"))
        let base = try repo.commit("one", files: ["a/x.yaml": "x\n", "run.sh": "echo\n"])
        let added = try repo.commit("add", files: ["a/y.yaml": "y\n"])
        try repo.remove("a/y.yaml")
        try repo.write("run.sh", "echo\n", executable: true)
        let chmod = try repo.commit("chmod")
        try repo.remove("a/x.yaml")
        try repo.write("a/w.yaml", "x\n")
        let renamed = try repo.commit("rename")
        let opened = try await openLocal(repo.path)
        func tree(_ commit: String) throws -> ObjectID { try #require(ObjectID(hex: try repo.rev("\(commit)^{tree}"))) }
        #expect(try await opened.repository.sameShapeChanges(from: try tree(base), to: try tree(added), limit: 100) == nil)
        #expect(try await opened.repository.sameShapeChanges(from: try tree(added), to: try tree(base), limit: 100) == nil)
        #expect(try await opened.repository.sameShapeChanges(from: try tree(base), to: try tree(chmod), limit: 100) == nil)
        #expect(try await opened.repository.sameShapeChanges(from: try tree(chmod), to: try tree(renamed), limit: 100) == nil)
    }

    /// The listing after an edit is patched from the last one, and equals a fresh walk of the
    /// new tree; `changes(from:to:)` names the edited files with their old and new blob ids.
    @Test func aPatchedListingEqualsAFreshOne() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo"))
        var files: [String: String] = ["capstan.yaml": "apiVersion: capstan.dev/v1\n", "bin/run.sh": "echo\n"]
        for i in 0..<20 { files["models/m\(i)/model.yaml"] = "m\(i)\n" }
        _ = try repo.commit("one", files: files)
        let following = GitSourceRepository(source: GitSource(location: .local(path: repo.path),
                                                              options: GitSourceOptions(stateDirectory: dir.sub("state").path)))
        let first = try await following.resolve("main", fetch: false)
        _ = try await following.entries(of: first)
        _ = try repo.commit("two", files: ["models/m7/model.yaml": "m7, edited\n", "bin/run.sh": "echo edited\n"])
        let second = try await following.resolve("main", fetch: false)

        let changes = try #require(try await following.changes(from: first, to: second))
        #expect(changes.from == first.tree && changes.to == second.tree)
        #expect(changes.files == [
            "models/m7/model.yaml": SourceChanges.Change(old: try repo.rev("\(first.commit):models/m7/model.yaml"),
                                                         new: try repo.rev("\(second.commit):models/m7/model.yaml")),
            "bin/run.sh": SourceChanges.Change(old: try repo.rev("\(first.commit):bin/run.sh"), new: try repo.rev("\(second.commit):bin/run.sh")),
        ])
        #expect(changes.touches("models/m7") && changes.touches("models") && changes.touches("") && changes.touches("bin/run.sh"))
        #expect(!changes.touches("models/m1") && !changes.touches("models/m7/model.yaml.bak") && !changes.touches("bin/run"))

        let patched = try await following.entries(of: second)
        let fresh = GitSourceRepository(source: GitSource(location: .local(path: repo.path),
                                                          options: GitSourceOptions(stateDirectory: dir.sub("state2").path)))
        #expect(patched == (try await fresh.entries(of: try await fresh.resolve("main", fetch: false))))
        let manifests = try await following.manifests(at: second)
        let edited = try #require(try await manifests.file(at: "models/m7/model.yaml"))
        #expect(String(decoding: try await manifests.read(edited), as: UTF8.self) == "m7, edited\n")
    }

    /// The last tree listed may be gone (a force-push, then `git gc`): the new tree is walked.
    @Test func aPrunedLastTreeLeavesTheWalk() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo"))
        let base = try repo.commit("one", files: ["a.yaml": "a\n"])
        let gone = try repo.commit("two", files: ["a.yaml": "a, soon gone\n"])
        let source = GitSourceRepository(source: GitSource(location: .local(path: repo.path),
                                                           options: GitSourceOptions(stateDirectory: dir.sub("state").path)))
        let listed = try await source.resolve("main", fetch: false)
        #expect(listed.commit == gone)
        _ = try await source.entries(of: listed)
        try repo.git("reset", "-q", "--hard", base)
        _ = try repo.commit("three", files: ["a.yaml": "a, edited again\n"])
        try repo.git("reflog", "expire", "--expire=now", "--all")
        try repo.git("gc", "-q", "--prune=now")
        #expect((try? repo.git("cat-file", "-e", listed.tree)) == nil, "the listed tree is pruned")
        let now = try await source.resolve("main", fetch: false)
        let entries = try await source.entries(of: now)
        #expect(entries.map(\.path) == ["a.yaml"])
        #expect(entries.first?.id == (try repo.rev("\(now.commit):a.yaml")))
    }

    /// A file added is another shape: no changes, the new tree is walked.
    @Test func anAddedFileHasNoChanges() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo"))
        _ = try repo.commit("one", files: ["a.yaml": "a\n"])
        let source = GitSourceRepository(source: GitSource(location: .local(path: repo.path),
                                                           options: GitSourceOptions(stateDirectory: dir.sub("state").path)))
        let first = try await source.resolve("main", fetch: false)
        _ = try await source.entries(of: first)
        _ = try repo.commit("two", files: ["b.yaml": "b\n"])
        let second = try await source.resolve("main", fetch: false)
        #expect(try await source.changes(from: first, to: second) == nil)
        #expect(try await source.entries(of: second).map(\.path) == ["a.yaml", "b.yaml"])
    }

    /// A symlink that now leads elsewhere may change what is listed where: no changes.
    @Test func aRetargetedSymlinkHasNoChanges() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo"))
        _ = try repo.commit("one", files: ["a/x.yaml": "x\n", "b/y.yaml": "y\n"])
        try FileManager.default.createSymbolicLink(atPath: repo.url.appendingPathComponent("link").path, withDestinationPath: "a")
        try repo.git("add", "-A")
        try repo.git("commit", "-q", "-m", "link")
        let source = GitSourceRepository(source: GitSource(location: .local(path: repo.path),
                                                           options: GitSourceOptions(stateDirectory: dir.sub("state").path)))
        let first = try await source.resolve("main", fetch: false)
        try FileManager.default.removeItem(atPath: repo.url.appendingPathComponent("link").path)
        try FileManager.default.createSymbolicLink(atPath: repo.url.appendingPathComponent("link").path, withDestinationPath: "b")
        try repo.git("add", "-A")
        try repo.git("commit", "-q", "-m", "relink")
        let second = try await source.resolve("main", fetch: false)
        #expect(first.tree != second.tree)
        #expect(try await source.changes(from: first, to: second) == nil)
    }
}
