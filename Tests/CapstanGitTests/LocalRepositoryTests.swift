import CapstanCore
import Foundation
import Testing
@testable import CapstanTestSupport

@testable import CapstanGit

/// A repository on this machine, opened in place: refs of every form resolve to exact commits.
struct LocalRepositoryTests {
    /// main: first → second; feature: first → feature-work; tags v1 (light) and v2 (annotated) on first.
    final class History {
        let dir: TempDir
        let repo: GitRepo
        let first: String, second: String, featureWork: String

        init() throws {
            dir = try TempDir()
            repo = try GitRepo(at: dir.sub("repo"))
            try Manifests.write(into: repo)
            first = try repo.commit("first")
            try repo.git("tag", "v1")
            try repo.git("tag", "-a", "v2", "-m", "release two")
            try repo.git("checkout", "-q", "-b", "feature")
            featureWork = try repo.commit("feature work", files: ["data/x.csv": "a,b\n3,4\n"])
            try repo.git("checkout", "-q", "main")
            second = try repo.commit("second", files: ["README.md": "# models, again\n"])
        }
    }

    @Test func theDefaultIsHEADOfAWorkTree() async throws {
        let h = try History()
        let opened = try await openLocal(h.repo.path)
        #expect(opened.mirrorPath == nil)
        #expect(opened.forcedUpdates.isEmpty)
        let head = try await opened.resolve(nil)
        #expect(head.ref == "HEAD")
        #expect(head.commit.hex == h.second)
        #expect(head.tree.hex == (try h.repo.rev("\(h.second)^{tree}")))
        #expect(head.summary == "second")
    }

    @Test(arguments: [
        ("main", "second"), ("feature", "feature work"), ("v1", "first"),
        ("v2", "first"), ("main~1", "first"), ("feature^", "first"), ("refs/heads/feature", "feature work"),
    ])
    func refsResolveToTheirCommit(_ ref: String, _ summary: String) async throws {
        let h = try History()
        let expected = ["first": h.first, "second": h.second, "feature work": h.featureWork][summary]!
        let opened = try await openLocal(h.repo.path)
        let revision = try await opened.resolve(ref)
        #expect(revision.ref == ref)
        #expect(revision.commit.hex == expected)
        #expect(revision.summary == summary)
        #expect(revision.tree.hex == (try h.repo.rev("\(expected)^{tree}")))
    }

    @Test func anAnnotatedTagIsPeeledToItsCommit() async throws {
        let h = try History()
        let tagObject = try h.repo.rev("refs/tags/v2")
        #expect(tagObject != h.first, "v2 must be an annotated tag object for this test to mean anything")
        let revision = try await openLocal(h.repo.path).resolve("v2")
        #expect(revision.commit.hex == h.first)
        #expect(revision.summary == "first")
    }

    @Test func aFullCommitIdResolvesToItself() async throws {
        let h = try History()
        let opened = try await openLocal(h.repo.path)
        let revision = try await opened.resolve(h.featureWork)
        #expect(revision.commit.hex == h.featureWork)
        #expect(revision.summary == "feature work")
    }

    @Test func aBareRepositoryIsReadInPlace() async throws {
        let h = try History()
        let bare = h.dir.sub("bare.git")
        try Shell.run("git", ["clone", "-q", "--bare", h.repo.path, bare.path], environment: GitEnvironment.variables(time: 0))
        let opened = try await openLocal(bare.path)
        #expect(opened.mirrorPath == nil)
        #expect(try await opened.resolve(nil).commit.hex == h.second)
        #expect(try await opened.resolve("v2").commit.hex == h.first)
        #expect(try await opened.resolve("feature").commit.hex == h.featureWork)
        // Nothing was written next to it: a local repository is never mirrored.
        #expect(!FileManager.default.fileExists(atPath: bare.path + "-unused-state"))
    }

    @Test func aMissingRefNamesTheRefAndListsTheBranches() async throws {
        let h = try History()
        let opened = try await openLocal(h.repo.path)
        let error = try #require(await gitSourceError { try await opened.resolve("release-9") })
        #expect(error.kind == .notFound)
        #expect(error.ref == "release-9")
        #expect(error.repository == h.repo.path)
        #expect(error.message.contains("ref 'release-9' not found"))
        #expect(error.message.contains("branches: feature, main"))
        #expect(error.description.hasPrefix("\(h.repo.path) @ release-9: "))
    }

    @Test func anUnknownCommitIdIsNotFound() async throws {
        let h = try History()
        let opened = try await openLocal(h.repo.path)
        let missing = String(repeating: "ab", count: 20)
        let error = try #require(await gitSourceError { try await opened.resolve(missing) })
        #expect(error.kind == .notFound)
        #expect(error.message.contains(missing))
    }

    @Test func aRefToATreeIsNotACommit() async throws {
        let h = try History()
        let opened = try await openLocal(h.repo.path)
        let tree = try h.repo.rev("main^{tree}")
        let error = try #require(await gitSourceError { try await opened.resolve(tree) })
        // A tree cannot be peeled to a commit: refused, with the ref named.
        #expect(error.ref == tree)
        #expect(error.description.contains(tree))
    }

    @Test func anEmptyRepositoryHasNoDefaultBranch() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("empty"))
        let opened = try await openLocal(repo.path)
        let error = try #require(await gitSourceError { try await opened.resolve(nil) })
        #expect(error.kind == .notFound)
        #expect(error.message.contains("no default branch"))
        #expect(error.message.contains("the repository has no branches"))
    }

    @Test func aFolderThatIsNotARepositoryIsRefused() async throws {
        let dir = try TempDir()
        try FileManager.default.createDirectory(at: dir.sub("plain"), withIntermediateDirectories: true)
        let error = try #require(await gitSourceError { try await openLocal(dir.sub("plain").path) })
        #expect(error.kind == .notFound)
        #expect(error.repository == dir.sub("plain").path)
        #expect(error.message.contains("not a Git repository"))
    }

    @Test func aSubfolderOfAWorkTreeIsNotSearchedUpwards() async throws {
        let h = try History()
        let error = try #require(await gitSourceError { try await openLocal(h.repo.path + "/models") })
        #expect(error.kind == .notFound)
        #expect(error.message.contains("give the root of a work tree or a bare repository"))
    }

    @Test func theWorkTreeIsNotRead() async throws {
        // Desired state is what the commit holds, not uncommitted edits.
        let h = try History()
        try h.repo.write("models/churn/model.yaml", Manifests.broken)
        let opened = try await openLocal(h.repo.path)
        let (result, _) = try await loadCommit(opened, "main")
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics)")
        #expect(result.manifests.models.map(\.metadata.name) == ["churn"])
    }
}
