import Foundation
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
