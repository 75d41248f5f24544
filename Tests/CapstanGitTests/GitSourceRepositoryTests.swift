import CapstanCore
import CapstanManifests
import Foundation
import Testing
@testable import CapstanTestSupport

@testable import CapstanGit

/// Runs `body`, which must fail with a `ClassifiedError`, and returns its failure.
func classifiedFailure<T>(sourceLocation: Testing.SourceLocation = #_sourceLocation,
                          _ body: () async throws -> T) async -> ReconcileFailure? {
    do {
        let value = try await body()
        Issue.record("expected a classified failure, got \(value)", sourceLocation: sourceLocation)
    } catch let error as any ClassifiedError {
        return error.failure
    } catch {
        Issue.record("expected a ClassifiedError, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

/// Loads the desired state of `revision` as the engine does: the loader over the port's source.
func load(_ repository: GitSourceRepository, _ revision: SourceRevision) async throws -> LoadResult {
    try await ManifestLoader(source: try await repository.manifests(at: revision)).load()
}

/// Overwrites the middle of `object`'s compressed data in the pack of the bare repository at
/// `gitDir`: that object can no longer be read, everything else still can. The object must be
/// stored whole in the pack, not as a delta.
func damageObject(_ object: String, inPackOf gitDir: String) throws {
    let packDir = gitDir + "/objects/pack"
    let indexes = try FileManager.default.contentsOfDirectory(atPath: packDir).filter { $0.hasSuffix(".idx") }
    guard indexes.count == 1 else { throw FixtureError("expected one pack in \(packDir), found \(indexes)") }
    let listing = try Shell.run("git", ["verify-pack", "-v", packDir + "/" + indexes[0]])
    // `<id> <type> <size> <size in pack> <offset>` (a delta has two more fields).
    guard let line = listing.stdout.split(separator: "\n").first(where: { $0.hasPrefix(object + " ") }) else {
        throw FixtureError("\(object) is not in the pack of \(gitDir)")
    }
    let fields = line.split(separator: " ", omittingEmptySubsequences: true)
    guard fields.count == 5, let stored = UInt64(fields[3]), let offset = UInt64(fields[4]) else {
        throw FixtureError("\(object) is not stored whole in the pack: \(line)")
    }
    let pack = packDir + "/" + indexes[0].replacingOccurrences(of: ".idx", with: ".pack")
    chmod(pack, 0o644)
    guard let handle = FileHandle(forWritingAtPath: pack) else { throw FixtureError("cannot open \(pack) for writing") }
    try handle.seek(toOffset: offset + stored / 2)
    handle.write(Data(repeating: 0xA5, count: 8))
    try handle.close()
}

/// A repository on this machine with the small desired state committed, and a state folder.
final class LocalFixture {
    let dir: TempDir
    let repo: GitRepo
    let state: String
    let first: String

    init() throws {
        dir = try TempDir()
        repo = try GitRepo(at: dir.sub("repo"))
        try Manifests.write(into: repo)
        first = try repo.commit("first")
        state = dir.sub("state").path
    }

    func repository(_ path: String? = nil) -> GitSourceRepository {
        GitSourceRepository(source: GitSource(location: .local(path: path ?? repo.path), options: GitSourceOptions(stateDirectory: state)))
    }
}

/// The SourceRepository port over a repository read in place.
struct GitSourceRepositoryTests {
    @Test func aRelativePathIsShownAbsoluteAndTheRevisionCarriesTheCommit() async throws {
        let f = try LocalFixture()
        // The repository's path relative to the current folder, whatever that is.
        let up = String(repeating: "../", count: FileManager.default.currentDirectoryPath.split(separator: "/").count)
        let repository = f.repository(up + f.repo.path.dropFirst())
        #expect(repository.displayName == f.repo.path)
        let revision = try await repository.resolve(nil, fetch: false)
        #expect(revision == SourceRevision(ref: "HEAD", commit: f.first, tree: try f.repo.rev("HEAD^{tree}"), summary: "first"))
        let source = try await repository.manifests(at: revision)
        #expect(source.displayName == "\(f.repo.path) @ \(f.first.prefix(10))")
        #expect(source.snapshotIdentity == revision.tree)
        let result = try await ManifestLoader(source: source).load()
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics.map(\.message))")
        #expect(result.fileCount == 3)
    }

    /// One handle for the life of the process: new commits, and a `git gc` that packs the
    /// objects the handle had read loose, are seen without opening the repository again.
    @Test func aKeptLocalRepositorySeesNewCommitsAndRepacks() async throws {
        let f = try LocalFixture()
        let repository = f.repository()
        let first = try await repository.resolve("main", fetch: false)
        #expect(try await load(repository, first).fileCount == 3)
        let second = try f.repo.commit("second", files: ["models/churn/model.yaml": Manifests.model(learningRate: "0.05")])
        // Fetching a local repository is reading it in place.
        #expect(try await repository.resolve("main", fetch: true).commit == second)
        let third = try f.repo.commit("third", files: ["README.md": "# third\n"])
        try f.repo.git("gc", "-q", "--prune=now")
        #expect(try f.repo.git("count-objects").hasPrefix("0 objects"), "the objects are expected in a pack now")
        let revision = try await repository.resolve("main", fetch: false)
        #expect(revision.commit == third)
        let result = try await load(repository, revision)
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics.map(\.message))")
        #expect(result.manifests.models.first?.spec.train?.params["learning_rate"] == .double(0.05))
        #expect(await repository.opens == 1)
        #expect(try await repository.recoverDamagedMirror() == false)
        #expect(await repository.opens == 1)
    }

    @Test func entriesListEveryKindInPreOrderAsGitDoes() async throws {
        let dir = try TempDir()
        let repo = try GitRepo(at: dir.sub("repo"))
        try repo.write("README.md", "# r\n")
        try repo.write("bin/run.sh", "#!/bin/sh\necho hi\n", executable: true)
        try repo.symlink("bin/latest", to: "run.sh")
        try repo.write("data/a/b/c.csv", "x,y\n")
        try repo.write("data/z.csv", "z\n")
        try repo.git("add", "-A")
        // A submodule is a commit inside the tree (a gitlink); its commit need not exist here.
        let submodule = "0123456789abcdef0123456789abcdef01234567"
        try repo.git("update-index", "--add", "--cacheinfo", "160000,\(submodule),vendor/lib")
        try repo.git("commit", "-q", "-m", "every kind")
        let repository = GitSourceRepository(source: GitSource(location: .local(path: repo.path),
                                                               options: GitSourceOptions(stateDirectory: dir.sub("state").path)))
        let entries = try await repository.entries(of: try await repository.resolve(nil, fetch: false))

        // `git ls-tree -r -t`: every entry, a folder before what it holds.
        var modes: [String: String] = [:]
        let expected = try repo.git("ls-tree", "-r", "-t", "HEAD").split(separator: "\n").map { line -> SourceTreeEntry in
            let parts = line.split(separator: "\t", maxSplits: 1)
            let meta = parts[0].split(separator: " ")
            let path = String(parts[1])
            modes[path] = String(meta[0])
            let kinds: [Substring: SourceTreeEntry.Kind] = ["100644": .file, "100755": .executable, "120000": .symlink,
                                                            "040000": .folder, "160000": .submodule]
            return SourceTreeEntry(path: path, kind: kinds[meta[0]]!, id: String(meta[2]))
        }
        #expect(entries == expected)
        #expect(entries.map(\.path) == ["README.md", "bin", "bin/latest", "bin/run.sh", "data", "data/a", "data/a/b", "data/a/b/c.csv",
                                        "data/z.csv", "vendor", "vendor/lib"])
        #expect(Set(entries.map(\.kind)) == [.file, .executable, .symlink, .folder, .submodule])
        #expect(entries.last == SourceTreeEntry(path: "vendor/lib", kind: .submodule, id: submodule))
        for entry in entries {
            #expect(entry.kind.gitMode == modes[entry.path], "\(entry.path)")
        }
    }

    /// The listing of a tree already read is kept: another commit with the same tree is listed,
    /// and its manifests offered, without reading an object (the repository's objects are closed
    /// here, so any read would fail).
    @Test func anUnchangedTreeIsListedWithoutReadingTheRepository() async throws {
        let f = try LocalFixture()
        let repository = f.repository()
        let first = try await repository.resolve("main", fetch: false)
        let listed = try await repository.entries(of: first)
        let empty = try f.repo.commit("nothing changed", allowEmpty: true)
        let same = try await repository.resolve("main", fetch: false)
        #expect(same.commit == empty && same.tree == first.tree)
        let changed = try f.repo.commit("changed", files: ["README.md": "# changed\n"])
        let other = SourceRevision(ref: "main", commit: changed, tree: try f.repo.rev("\(changed)^{tree}"))

        let kept = try #require(try await repository.manifests(at: first) as? GitManifestSource).repository
        try await kept.closeObjects()
        #expect(try await repository.entries(of: same) == listed)
        let source = try await repository.manifests(at: same)
        #expect(try await source.yamlFiles(under: "").map(\.path) == ["capstan.yaml", "deployments/churn-prod.yaml", "models/churn/model.yaml"])
        #expect(source.displayName.hasSuffix("@ \(empty.prefix(10))"))
        // A tree not listed yet has to be read: the closed repository cannot.
        let failure = try #require(await classifiedFailure { try await repository.entries(of: other) })
        #expect(failure.failureClass == .transient)
        #expect(failure.reason == .sourceUnavailable)
        #expect(failure.message.hasPrefix("\(f.repo.path) @ main: "), "\(failure.message)")
    }

    @Test func materializeReturnsTheCommitsTreeWrittenOnce() async throws {
        let f = try LocalFixture()
        let repository = f.repository()
        let path = try await repository.materialize(commit: f.first)
        #expect(path == f.state + "/trees/" + (try f.repo.rev("\(f.first)^{tree}")))
        #expect(f.dir.files(under: URL(fileURLWithPath: path)) == ["README.md", "capstan.yaml", "data/x.csv", "deployments/churn-prod.yaml",
                                                                   "models/churn/model.yaml", "models/churn/serve.py", "models/churn/train.py"])
        #expect(try String(contentsOfFile: path + "/models/churn/model.yaml", encoding: .utf8) == Manifests.model())
        #expect(try FileManager.default.attributesOfItem(atPath: path + "/models/churn/train.py")[.posixPermissions] as? Int == 0o755)
        #expect(try FileManager.default.attributesOfItem(atPath: path + "/README.md")[.posixPermissions] as? Int == 0o644)
        // Another commit with the same tree gets the same folder, as it was: not written again.
        let inode = try FileManager.default.attributesOfItem(atPath: path + "/README.md")[.systemFileNumber] as? Int
        let same = try f.repo.commit("nothing changed", allowEmpty: true)
        #expect(try await repository.materialize(commit: same) == path)
        #expect(try FileManager.default.attributesOfItem(atPath: path + "/README.md")[.systemFileNumber] as? Int == inode)
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.state + "/trees") == [(path as NSString).lastPathComponent])

        let failure = try #require(await classifiedFailure { try await repository.materialize(commit: "main") })
        #expect(failure.message.contains("'main' is not a commit id"))
    }

    /// One path of a commit on its own (what a training step gets): a folder written once per
    /// tree id, a file once per blob (read-only, its executable bit kept), nothing for a path the
    /// commit does not hold, and the whole tree for what cannot be written alone.
    @Test func onePathIsWrittenOnItsOwn() async throws {
        let f = try LocalFixture()
        try f.repo.symlink("models/link", to: "churn")
        try f.repo.symlink("models/out/up", to: "../../data")
        try f.repo.write("models/out/train.py", "print(1)\n")
        let commit = try f.repo.commit("links")
        let repository = f.repository()

        let folder = try await repository.materialize(commit: commit, path: "models/churn")
        #expect(folder == .at(f.state + "/trees/" + (try f.repo.rev("\(commit):models/churn"))))
        if case .at(let path) = folder {
            #expect(f.dir.files(under: URL(fileURLWithPath: path)) == ["model.yaml", "serve.py", "train.py"])
        }
        let file = try await repository.materialize(commit: commit, path: "models/churn/train.py")
        #expect(file == .at(f.state + "/trees/blobs/" + (try f.repo.rev("\(commit):models/churn/train.py")) + "-x"))
        if case .at(let path) = file {
            #expect(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int == 0o555)
            #expect(try String(contentsOfFile: path, encoding: .utf8) == (try String(contentsOfFile: f.repo.path + "/models/churn/train.py", encoding: .utf8)))
        }
        let data = try await repository.materialize(commit: commit, path: "data/x.csv")
        if case .at(let path) = data {
            #expect(try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int == 0o444)
        } else {
            Issue.record("data/x.csv: \(data)")
        }
        #expect(try await repository.materialize(commit: commit, path: "data/nothing.csv") == .absent)
        #expect(try await repository.materialize(commit: commit, path: "models/link") == .wholeTreeNeeded)
        #expect(try await repository.materialize(commit: commit, path: "models/out") == .wholeTreeNeeded)
        #expect(try await repository.materialize(commit: commit, path: "") == .wholeTreeNeeded)
        // The commit's whole tree was never written.
        let trees = try FileManager.default.contentsOfDirectory(atPath: f.state + "/trees")
        #expect(!trees.contains(try f.repo.rev("\(commit)^{tree}")), "\(trees)")
    }

    @Test func aTreeThatCannotBeWrittenSafelyIsStalled() async throws {
        let f = try LocalFixture()
        try f.repo.symlink("models/churn/escape", to: "../../../etc/passwd")
        let commit = try f.repo.commit("escape")
        let failure = try #require(await classifiedFailure { try await f.repository().materialize(commit: commit) })
        #expect(failure.failureClass == .stalled)
        #expect(failure.reason == .inputUnresolvable)
        #expect(failure.message.contains("symlink 'models/churn/escape' points outside the tree"), "\(failure.message)")
        let trees = (try? FileManager.default.contentsOfDirectory(atPath: f.state + "/trees")) ?? []
        #expect(trees.isEmpty, "left behind: \(trees)")
    }

    /// A ref that does not exist is transient (the next fetch may bring it), and says what exists.
    @Test func aMissingRefIsTransientAndListsTheBranches() async throws {
        let f = try LocalFixture()
        let failure = try #require(await classifiedFailure { try await f.repository().resolve("release", fetch: true) })
        #expect(failure.failureClass == .transient)
        #expect(failure.reason == .sourceUnavailable)
        #expect(failure.message == "\(f.repo.path) @ release: ref 'release' not found (branches: main); pass a branch, a tag or a full commit id")
    }

    /// A repository read in place is never repaired: its damage is reported, transient, and
    /// the objects are left as they are.
    @Test func aDamagedLocalRepositoryIsReportedAndLeftAlone() async throws {
        let f = try LocalFixture()
        let file = try f.repo.looseObjectPath(f.first)
        chmod(file.path, 0o644)
        try Data("not zlib at all".utf8).write(to: file)
        let repository = f.repository()
        let failure = try #require(await classifiedFailure { try await repository.resolve("main", fetch: false) })
        #expect(failure.failureClass == .transient)
        #expect(failure.reason == .sourceUnavailable)
        #expect(failure.message.hasPrefix("\(f.repo.path) @ main: the repository is damaged: "), "\(failure.message)")
        #expect(failure.message.hasSuffix("check it with git fsck"))
        #expect(try await repository.recoverDamagedMirror() == false)
        #expect(try Data(contentsOf: file) == Data("not zlib at all".utf8))
    }

    /// A branch whose commit is gone from the object database is damage, not a missing ref.
    @Test func aBranchWhoseCommitIsMissingIsDamageNotAMissingRef() async throws {
        let f = try LocalFixture()
        try FileManager.default.removeItem(at: try f.repo.looseObjectPath(f.first))
        let failure = try #require(await classifiedFailure { try await f.repository().resolve("main", fetch: false) })
        #expect(failure.failureClass == .transient)
        #expect(failure.message.hasPrefix("\(f.repo.path) @ main: the repository is damaged: main points at \(f.first.prefix(10)), which cannot be read ("),
                "\(failure.message)")
        #expect(failure.message.hasSuffix("objects are missing; check it with git fsck"), "\(failure.message)")
    }

    /// The state folder's disk is full while a tree is written: transient DiskFull, and nothing
    /// half-written is left to be taken for a tree.
    @Test(.enabled(if: TestMount.available, "\(TestMount.unavailable ?? "")"))
    func materializingOntoAFullDiskIsTransientDiskFull() async throws {
        let f = try LocalFixture()
        var big = [UInt8](repeating: 0, count: 256 * 1024)
        for i in big.indices { big[i] = UInt8.random(in: 0...255) }
        try f.repo.write("data/big.bin", bytes: big)
        let commit = try f.repo.commit("big")
        let mount = try TestMount(tmpfsKiB: 128)
        let repository = GitSourceRepository(source: GitSource(location: .local(path: f.repo.path),
                                                               options: GitSourceOptions(stateDirectory: mount.path + "/state")))
        let failure = try #require(await classifiedFailure { try await repository.materialize(commit: commit) })
        #expect(failure.failureClass == .transient)
        #expect(failure.reason == .diskFull, "\(failure)")
        #expect(failure.message.contains("No space left on device") && failure.message.contains("free space"), "\(failure.message)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: mount.path + "/state/trees").isEmpty)
    }
}

extension Remote {
    /// The SourceRepository port over a remote's mirror (`git daemon` on 127.0.0.1, file://,
    /// `git http-backend`).
    @Suite struct SourceRepositoryPort {
        @Test func resolveFetchesIntoTheKeptMirrorAndPicksUpANewCommit() async throws {
            let f = try RemoteFixture()
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let url = daemon.url("models.git")
            let repository = GitSourceRepository(source: f.source(url))
            #expect(repository.displayName == url)
            let first = try await repository.resolve("main", fetch: true)
            #expect(first == SourceRevision(ref: "main", commit: f.first, tree: try f.work.rev("main^{tree}"), summary: "first"))
            let second = try f.pushCommit("second", files: ["models/churn/model.yaml": Manifests.model(learningRate: "0.3")])
            // Without fetching: the mirror as last fetched.
            #expect(try await repository.resolve("main", fetch: false).commit == f.first)
            let fetched = try await repository.resolve("main", fetch: true)
            #expect(fetched.commit == second)
            #expect(fetched.summary == "second")
            #expect(try await repository.resolve(nil, fetch: false).commit == second, "the remote's default branch")
            let result = try await load(repository, fetched)
            #expect(result.manifests.models.first?.spec.train?.params["learning_rate"] == .double(0.3))
            #expect(await repository.opens == 1)
            #expect(f.sourcesEntries.count == 1)
        }

        /// Opened once for the life of the process: every resolve, fetching or not, and every
        /// source handed out, use the one repository handle.
        @Test func theRepositoryIsOpenedOnceAcrossManyResolves() async throws {
            let f = try RemoteFixture()
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let repository = GitSourceRepository(source: f.source(daemon.url("models.git")))
            var handles: [GitRepository] = []
            var latest = f.first
            for i in 0..<6 {
                let revision = try await repository.resolve("main", fetch: i % 3 != 2)
                #expect(revision.commit == latest)
                handles.append(try #require(try await repository.manifests(at: revision) as? GitManifestSource).repository)
                _ = try await repository.entries(of: revision)
                _ = try await repository.materialize(commit: revision.commit)
                if i % 3 != 1 { latest = try f.pushCommit("commit \(i)", files: ["README.md": "# \(i)\n"]) }
            }
            #expect(await repository.opens == 1)
            #expect(handles.allSatisfy { $0 === handles[0] }, "a resolve opened the repository again")
        }

        /// Resolves that arrive together, before anything is open, open (and clone) once.
        @Test func resolvesAtOnceOpenTheRepositoryOnce() async throws {
            let f = try RemoteFixture()
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let repository = GitSourceRepository(source: f.source(daemon.url("models.git")))
            let commits = try await withThrowingTaskGroup(of: String.self) { group in
                for _ in 0..<6 { group.addTask { try await repository.resolve("main", fetch: true).commit } }
                return try await group.reduce(into: [String]()) { $0.append($1) }
            }
            #expect(commits == Array(repeating: f.first, count: 6))
            #expect(await repository.opens == 1)
            #expect(f.sourcesEntries.count == 1)
        }

        @Test func aForcePushIsANoteOfTheNextRevisionOnly() async throws {
            let f = try RemoteFixture()
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let repository = GitSourceRepository(source: f.source(daemon.url("models.git")))
            let original = try f.pushCommit("lr 0.2", files: ["models/churn/model.yaml": Manifests.model(learningRate: "0.2")])
            #expect(try await repository.resolve("main", fetch: true).commit == original)
            try f.work.git("reset", "-q", "--hard", "HEAD~1")
            let rewritten = try f.work.commit("lr 0.3", files: ["models/churn/model.yaml": Manifests.model(learningRate: "0.3")])
            try f.work.push(to: f.served.path, ["main"], force: true)

            let after = try await repository.resolve("main", fetch: true)
            #expect(after.commit == rewritten)
            #expect(after.notes == [SourceNote(.note, "refs/heads/main was force-pushed (\(original.prefix(10)) → \(rewritten.prefix(10)), not a fast-forward); following the new commit")])
            #expect(try await repository.resolve("main", fetch: true).notes.isEmpty)
            #expect(await repository.opens == 1)
        }

        @Test(.enabled(if: NonLoopbackAddress.ipv4 != nil, "this machine has no non-loopback IPv4 address"))
        func aTokenOverPlainHTTPIsAWarningOfEveryResolveThatFetches() async throws {
            let address = try #require(NonLoopbackAddress.ipv4)
            let remote = try RemoteFixture()
            let token = "capstan-port-token-51c0d2a7e4"
            let server = try PythonServer.gitHTTP(root: remote.dir.sub("served").path, user: "x-access-token", password: token,
                                                  options: ["bind": address])
            let url = "http://\(address):\(server.port)/models.git"
            let repository = GitSourceRepository(source: remote.source(url, credentials: GitCredentials(environment: ["CAPSTAN_GIT_TOKEN": token])))
            let first = try await repository.resolve("main", fetch: true)
            #expect(first.commit == remote.first)
            #expect(first.notes.count == 1, "\(first.notes)")
            let note = try #require(first.notes.first)
            #expect(note.kind == .warning)
            #expect(note.message.contains("$CAPSTAN_GIT_TOKEN") && note.message.contains("plain http://") && note.message.contains(url),
                    "\(note.message)")
            #expect(!note.message.contains(token))
            // A fetch into the kept mirror sends the token again, and says so; a resolve that does
            // not fetch sends nothing.
            #expect(try await repository.resolve("main", fetch: true).notes == first.notes)
            #expect(try await repository.resolve("main", fetch: false).notes.isEmpty)
            #expect(await repository.opens == 1)
        }

        /// What the engine does when a load reports an unreadable blob: it asks the port to
        /// recover, resolves again and loads a clean mirror. The source of the damaged load is
        /// still held meanwhile (an engine may keep its last source): the new clone must not be
        /// served its pack files (libgit2 caches packs by path, and the new pack has the same name).
        @Test func aMirrorWithADamagedBlobIsRecoveredByCloningItAgain() async throws {
            let f = try RemoteFixture()
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let url = daemon.url("models.git")
            let repository = GitSourceRepository(source: f.source(url))
            let revision = try await repository.resolve("main", fetch: true)
            let mirror = repository.source.mirrorPath
            try damageObject(try f.work.rev("main:models/churn/model.yaml"), inPackOf: mirror)

            let damagedSource = try await repository.manifests(at: revision)
            let damaged = try await ManifestLoader(source: damagedSource).load()
            let unreadable = damaged.diagnostics.filter { $0.code == .fileUnreadable }
            #expect(unreadable.map(\.location.file) == ["models/churn/model.yaml"])
            #expect(unreadable.first?.message.contains("cannot read blob") == true, "\(unreadable.map(\.message))")

            #expect(try await repository.recoverDamagedMirror())
            #expect(await repository.opens == 2)
            let again = try await repository.resolve("main", fetch: false)
            #expect(again.commit == revision.commit)
            #expect(again.notes == [SourceNote(.note, "the mirror of \(url) is damaged; cloning it again")])
            let result = try await load(repository, again)
            #expect(result.diagnostics.isEmpty, "\(result.diagnostics.map(\.message))")
            #expect(result.fileCount == 3)
            #expect(try await repository.resolve("main", fetch: true).notes.isEmpty)
            // The source handed out before the clone reads nothing any more.
            let old = try #require(damagedSource as? GitManifestSource)
            let file = try #require(try await old.file(at: "capstan.yaml"))
            guard case .unreadable = try await old.read([file], limit: 1 << 20)[0] else {
                Issue.record("a source of the damaged mirror still reads")
                return
            }
        }

        /// A mirror damaged while no Capstan ran (its packs lost) is cloned again by the first
        /// resolve, which says so.
        @Test func aMirrorFoundDamagedOnFirstUseIsClonedAgainWithANote() async throws {
            let f = try RemoteFixture()
            let source = f.source(f.fileURL)
            do {
                _ = try await GitSourceRepository(source: source).resolve("main", fetch: true)
            }
            try damagePacks(inMirror: source.mirrorPath, "deleted")
            let repository = GitSourceRepository(source: source)
            let revision = try await repository.resolve("main", fetch: false)
            #expect(revision.commit == f.first)
            #expect(revision.notes == [SourceNote(.note, "the mirror of \(f.fileURL) is damaged; cloning it again")])
            #expect(try await load(repository, revision).diagnostics.isEmpty)
            #expect(await repository.opens == 1)
        }

        /// A commit or tree asked for by id that the mirror does not hold (force-pushed away
        /// and pruned, say) is missing, not damage: the mirror is not cloned again for it.
        @Test func anObjectTheMirrorDoesNotHoldIsMissingNotDamage() async throws {
            let f = try RemoteFixture()
            let repository = GitSourceRepository(source: f.source(f.fileURL))
            _ = try await repository.resolve("main", fetch: true)
            let gone = String(repeating: "e", count: 40)
            let materialized = try #require(await classifiedFailure { try await repository.materialize(commit: gone) })
            #expect(materialized.failureClass == .transient)
            #expect(materialized.reason == .sourceUnavailable)
            #expect(materialized.message == "\(f.fileURL) @ eeeeeeeeee: commit eeeeeeeeee is not in the repository (no branch or tag reaches it any more?); resolve the ref again")
            let listed = try #require(await classifiedFailure {
                try await repository.entries(of: SourceRevision(ref: "old", commit: gone, tree: gone))
            })
            #expect(listed.message.hasPrefix("\(f.fileURL) @ old: tree eeeeeeeeee is not in the repository"), "\(listed.message)")
            #expect(await repository.opens == 1)
        }

        @Test func anUnreachableRemoteIsTransientAndNamesTheRepositoryNotTheCredentials() async throws {
            let f = try RemoteFixture()
            let port = try Ports.free()
            let url = "http://127.0.0.1:\(port)/models.git"
            let token = "capstan-unreachable-token-93be7c"
            let repository = GitSourceRepository(source: f.source(url, credentials: GitCredentials(environment: ["CAPSTAN_GIT_TOKEN": token])))
            let failure = try #require(await classifiedFailure { try await repository.resolve("main", fetch: true) })
            #expect(failure.failureClass == .transient)
            #expect(failure.reason == .sourceUnavailable)
            #expect(failure.message.hasPrefix(url + ": cannot fetch: "), "\(failure.message)")
            #expect(failure.message.contains("127.0.0.1:\(port)"))
            #expect(failure.message.contains("check that the remote is reachable"))
            #expect(!failure.message.contains(token))
            #expect(f.sourcesEntries.isEmpty, "\(f.sourcesEntries)")
        }

        /// The remote goes away after the first fetch: a fetching resolve fails (transient), and
        /// the kept mirror still answers without fetching.
        @Test func whenTheRemoteGoesAwayTheKeptMirrorStillResolves() async throws {
            let f = try RemoteFixture()
            let daemon = try GitDaemon(base: f.dir.sub("served"))
            let url = daemon.url("models.git")
            let repository = GitSourceRepository(source: f.source(url))
            _ = try await repository.resolve("main", fetch: true)
            daemon.stop()
            let failure = try #require(await classifiedFailure { try await repository.resolve("main", fetch: true) })
            #expect(failure.failureClass == .transient)
            #expect(failure.reason == .sourceUnavailable)
            #expect(failure.message.hasPrefix(url + ": cannot fetch: "), "\(failure.message)")
            #expect(failure.message.contains("the last fetched state is kept"))
            #expect(try await repository.resolve("main", fetch: false).commit == f.first)
            #expect(await repository.opens == 1)
        }

        @Test(.timeLimit(.minutes(1)))
        func aStalledRemoteIsTransient() async throws {
            let f = try RemoteFixture()
            let server = try PythonServer(script: PythonServer.silent)
            defer { server.stop() }
            let url = "git://127.0.0.1:\(server.port)/models.git"
            let repository = GitSourceRepository(source: f.source(url, timeout: 1))
            let failure = try #require(await classifiedFailure { try await repository.resolve(nil, fetch: true) })
            #expect(failure.failureClass == .transient)
            #expect(failure.reason == .sourceUnavailable)
            #expect(failure.message.hasPrefix(url + ": ") && failure.message.contains("timed out"), "\(failure.message)")
        }

        @Test func refusedCredentialsAreTransientAndNameTheVariable() async throws {
            let remote = try RemoteFixture()
            let server = try PythonServer.gitHTTP(root: remote.dir.sub("served").path, user: "x-access-token", password: "the-right-one-6d1f")
            let url = "http://127.0.0.1:\(server.port)/models.git"
            let wrong = "capstan-wrong-token-2a9c11"
            let repository = GitSourceRepository(source: remote.source(url, credentials: GitCredentials(environment: ["CAPSTAN_GIT_TOKEN": wrong])))
            let failure = try #require(await classifiedFailure { try await repository.resolve("main", fetch: true) })
            #expect(failure.failureClass == .transient)
            #expect(failure.reason == .sourceUnavailable)
            #expect(failure.message.contains("refused the credentials from $CAPSTAN_GIT_TOKEN"), "\(failure.message)")
            #expect(!failure.message.contains(wrong) && !failure.message.contains("the-right-one-6d1f"))
        }

        /// The state folder's disk fills up while the mirror is cloned: transient DiskFull.
        @Test(.enabled(if: TestMount.available, "\(TestMount.unavailable ?? "")"))
        func cloningOntoAFullDiskIsTransientDiskFull() async throws {
            let f = try RemoteFixture()
            var big = [UInt8](repeating: 0, count: 256 * 1024)
            for i in big.indices { big[i] = UInt8.random(in: 0...255) }
            try f.work.write("data/big.bin", bytes: big)
            try f.work.commit("big")
            try f.work.push(to: f.served.path)
            let mount = try TestMount(tmpfsKiB: 128)
            let state = mount.path + "/state"
            let repository = GitSourceRepository(source: GitSource(location: .remote(url: f.fileURL),
                                                                   options: GitSourceOptions(stateDirectory: state, fetchTimeout: 20)))
            let failure = try #require(await classifiedFailure { try await repository.resolve("main", fetch: true) })
            #expect(failure.failureClass == .transient)
            #expect(failure.reason == .diskFull, "\(failure)")
            #expect(failure.message.hasPrefix(f.fileURL + ": "), "\(failure.message)")
            #expect(failure.message.contains("is full"), "\(failure.message)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: state + "/sources").isEmpty)
        }
    }
}
