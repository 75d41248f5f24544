import Foundation

/// Options for reading a repository.
public struct GitSourceOptions: Sendable {
    /// Capstan's state directory; remote mirrors live in `<stateDir>/sources/`.
    public var stateDirectory: String
    public var credentials: GitCredentials
    /// Connect/read/write timeout of a fetch, and the longest a transfer may run.
    public var fetchTimeout: TimeInterval

    public init(stateDirectory: String, credentials: GitCredentials = GitCredentials(), fetchTimeout: TimeInterval = 60) {
        self.stateDirectory = stateDirectory
        self.credentials = credentials
        self.fetchTimeout = fetchTimeout
    }
}

/// A branch that moved to a commit that does not descend from where it was: a force-push.
public struct ForcedUpdate: Sendable, Equatable, Codable {
    public var ref: String
    public var from: ObjectID
    public var to: ObjectID
    public var at: Date
}

/// A repository ready to read: opened in place (a local path) or mirrored and fetched (a remote).
public struct OpenedRepository: Sendable {
    public var repository: GitRepository
    public var location: RepositoryLocation
    /// The bare mirror under the state directory, for remotes.
    public var mirrorPath: String?
    /// Branches that were force-pushed since the last fetch (already recorded in the state directory).
    public var forcedUpdates: [ForcedUpdate]
    /// What the fetch wants the user to know, one sentence each (credentials sent over plain
    /// http:// to another machine). The caller shows them: on stderr, in the log.
    public var warnings: [String] = []
    /// True when the mirror was found damaged (it could not be opened, or its branches point at
    /// objects it cannot read) and was thrown away and cloned again by this `open`.
    public var recreatedDamagedMirror = false
}

/// What bringing a mirror up to date found besides the objects.
public struct MirrorUpdate: Sendable, Equatable {
    /// Branches that were force-pushed since the last fetch (already recorded in the mirror).
    public var forcedUpdates: [ForcedUpdate] = []
    /// The fetch's warnings (see `OpenedRepository.warnings`).
    public var warnings: [String] = []
}

/// A ref resolved to one exact commit.
public struct ResolvedRevision: Sendable, Equatable {
    /// What was asked for (`main`, `v1.2`, a commit id, or `HEAD` for the default).
    public var ref: String
    public var commit: ObjectID
    public var tree: ObjectID
    public var summary: String

    public init(ref: String, commit: ObjectID, tree: ObjectID, summary: String) {
        self.ref = ref
        self.commit = commit
        self.tree = tree
        self.summary = summary
    }
}

/// Why a repository could not be read. Messages name the repository (without credentials) and
/// the ref, and say what to do.
public struct GitSourceError: Error, Sendable, CustomStringConvertible {
    public var repository: String
    public var ref: String?
    public var kind: GitError.Kind
    public var message: String
    /// The operating system's error (`errno`) behind it, when a file operation failed (`ENOSPC`:
    /// the state folder's disk is full).
    public var systemError: Int32?

    public init(repository: String, ref: String? = nil, kind: GitError.Kind, message: String, systemError: Int32? = nil) {
        self.repository = repository
        self.ref = ref
        self.kind = kind
        self.message = message
        self.systemError = systemError
    }

    public var description: String {
        "\(repository)\(ref.map { " @ \($0)" } ?? ""): \(message)"
    }
}

/// Reads desired state from Git: opens local repositories in place; mirrors remotes into the state
/// directory (a bare repository per remote, written atomically, re-created when found broken) and
/// fetches them on every `open`.
public struct GitSource: Sendable {
    public let location: RepositoryLocation
    public let options: GitSourceOptions

    public init(location: RepositoryLocation, options: GitSourceOptions) {
        self.location = location
        self.options = options
    }

    static let mirrorMarker = "capstan-mirror.json"
    static let refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]

    var mirrorPath: String {
        (options.stateDirectory as NSString).appendingPathComponent("sources/\(location.mirrorName).git")
    }

    func error(_ kind: GitError.Kind, _ message: String, ref: String? = nil, systemError: Int32? = nil) -> GitSourceError {
        GitSourceError(repository: location.description, ref: ref, kind: kind, message: location.scrub(message), systemError: systemError)
    }

    /// Opens the repository; for a remote, brings the mirror up to date first.
    public func open(fetch: Bool = true) async throws(GitSourceError) -> OpenedRepository {
        switch location {
        case .local(let path):
            do {
                let repo = try await GitRepository.open(at: path)
                return OpenedRepository(repository: repo, location: location, mirrorPath: nil, forcedUpdates: [])
            } catch {
                throw self.error(.notFound, "not a Git repository (\(describe(error))); give the root of a work tree or a bare repository")
            }
        case .remote(let url):
            return try await openMirror(url: url, fetch: fetch)
        }
    }

    private func describe(_ error: any Error) -> String {
        (error as? GitError)?.message ?? "\(error)"
    }

    private func openMirror(url: String, fetch: Bool) async throws(GitSourceError) -> OpenedRepository {
        let path = mirrorPath
        let fm = FileManager.default
        if fm.fileExists(atPath: path), !fm.fileExists(atPath: path + "/" + Self.mirrorMarker) {
            // Left half-written by an interrupted first clone, or not ours: never trust it.
            discard(path)
        }
        if !fm.fileExists(atPath: path) {
            guard fetch else {
                throw self.error(.notFound, "there is no mirror of this remote in \(options.stateDirectory) yet; run once without --no-fetch")
            }
            let warnings = try await createMirror(url: url, at: path)
            let repo = try await openExisting(path)
            return OpenedRepository(repository: repo, location: location, mirrorPath: path, forcedUpdates: [], warnings: warnings)
        }
        var repo: GitRepository?
        do {
            repo = try await GitRepository.open(at: path)
        } catch {
            discard(path)
            let warnings = try await createMirror(url: url, at: path)
            return OpenedRepository(repository: try await openExisting(path), location: location, mirrorPath: path, forcedUpdates: [],
                                    warnings: warnings, recreatedDamagedMirror: true)
        }
        do throws(GitSourceError) {
            let update = try await self.update(repo!, url: url, mirror: path, fetch: fetch)
            return OpenedRepository(repository: repo!, location: location, mirrorPath: path, forcedUpdates: update.forcedUpdates,
                                    warnings: update.warnings)
        } catch let e where e.kind == .corrupt {
            // A damaged mirror is re-created from the remote, not repaired in place. The old
            // repository is closed first: libgit2 caches pack files by path.
            try? await repo?.closeObjects()
            repo = nil
            return try await recreateMirror()
        }
    }

    /// Brings the mirror of an opened remote up to date (fetches it), as `open` does: returns the
    /// branches that were force-pushed (recorded in the mirror) and the fetch's warnings. A local
    /// repository is read in place: nothing to do. Throws kind `.corrupt` when the mirror turns
    /// out damaged (its branches point at objects it cannot read); the caller then closes every
    /// handle on it (`GitRepository.closeObjects`) and calls `recreateMirror`.
    public func update(_ opened: OpenedRepository) async throws(GitSourceError) -> MirrorUpdate {
        guard case .remote(let url) = location, let mirror = opened.mirrorPath else { return MirrorUpdate() }
        return try await update(opened.repository, url: url, mirror: mirror, fetch: true)
    }

    /// Throws the mirror of a remote away and clones it again (found damaged). Every handle on the
    /// old mirror must be closed first (`GitRepository.closeObjects`): libgit2 caches pack files by
    /// path, and the new clone must not be served the old ones. A local repository is never
    /// touched: it is opened again in place.
    public func recreateMirror() async throws(GitSourceError) -> OpenedRepository {
        guard case .remote(let url) = location else { return try await open(fetch: false) }
        let path = mirrorPath
        discard(path)
        let warnings = try await createMirror(url: url, at: path)
        return OpenedRepository(repository: try await openExisting(path), location: location, mirrorPath: path, forcedUpdates: [],
                                warnings: warnings, recreatedDamagedMirror: true)
    }

    /// Fetches (when `fetch`) and checks that every branch can be read; records force-pushes.
    private func update(_ repo: GitRepository, url: String, mirror: String, fetch: Bool) async throws(GitSourceError) -> MirrorUpdate {
        var update = MirrorUpdate()
        var fetchError: GitSourceError?
        if fetch {
            do throws(GitSourceError) {
                (update.forcedUpdates, update.warnings) = try await self.fetch(repo, url: url)
            } catch {
                fetchError = error
            }
        }
        // Refs that point at objects the mirror cannot read mean lost or damaged packs (a
        // fetch over such a mirror fails in odd ways: "object not found", "no branches").
        let broken: String?? = try? await repo.withRepository({ $0.firstUnreadableBranch() })
        if let name = broken ?? nil {
            throw self.error(.corrupt, "the mirror cannot read \(name)")
        }
        if let fetchError { throw fetchError }
        if !update.forcedUpdates.isEmpty { record(update.forcedUpdates, mirror: mirror) }
        return update
    }

    private func openExisting(_ path: String) async throws(GitSourceError) -> GitRepository {
        do { return try await GitRepository.open(at: path) } catch {
            throw self.error(.corrupt, "the mirror at \(path) cannot be opened: \(describe(error))")
        }
    }

    /// Fetches into an existing mirror; returns the branches that were force-pushed, and the
    /// fetch's warnings.
    private func fetch(_ repo: GitRepository, url: String) async throws(GitSourceError) -> ([ForcedUpdate], [String]) {
        let credentials = options.credentials, timeout = options.fetchTimeout
        do {
            return try await repo.withRepository { r throws -> ([ForcedUpdate], [String]) in
                let before = try r.references(under: "refs/heads/")
                let fetched = try r.fetch(url: url, refspecs: Self.refspecs, credentials: credentials, timeout: timeout)
                if let head = fetched.defaultBranch { try r.setSymbolicReference("HEAD", to: head) }
                let after = try r.references(under: "refs/heads/")
                var forced: [ForcedUpdate] = []
                for (name, old) in before.sorted(by: { $0.key < $1.key }) {
                    guard let new = after[name], new != old else { continue }
                    if try !r.isDescendant(new, of: old) {
                        forced.append(ForcedUpdate(ref: name, from: old, to: new, at: Date()))
                    }
                }
                return (forced, fetched.warnings)
            }
        } catch let e as GitError {
            throw self.error(e.kind, fetchAdvice(e), systemError: e.systemError)
        } catch {
            throw self.error(.other, "\(error)")
        }
    }

    private func fetchAdvice(_ e: GitError) -> String {
        switch e.kind {
        case .network: return "cannot fetch: \(e.message); check that the remote is reachable (the last fetched state is kept)"
        case .authentication: return "cannot fetch: \(e.message)"
        case .hostKey: return "cannot fetch: \(e.message)"
        case .notFound: return "cannot fetch: \(e.message); check the repository URL"
        case .corrupt: return "the mirror is damaged: \(e.message)"
        case .other: return "cannot fetch: \(e.message)\(stateAdvice(e.systemError))"
        }
    }

    /// What to do when writing into the state directory failed for want of space.
    private func stateAdvice(_ systemError: Int32?) -> String {
        guard SystemError.isDiskFull(systemError) else { return "" }
        return "; the file system of \(options.stateDirectory) is full: free space there (mirrors are under sources/, materialized trees under trees/) or give it more"
    }

    /// Clones the remote into a new mirror at `path`; returns the fetch's warnings.
    private func createMirror(url: String, at path: String) async throws(GitSourceError) -> [String] {
        let fm = FileManager.default
        let parent = (path as NSString).deletingLastPathComponent
        let temporary = "\(path).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        do {
            try fm.createDirectory(atPath: parent, withIntermediateDirectories: true)
        } catch {
            throw self.error(.other, "cannot create \(parent): \(SystemError.describe(error))\(stateAdvice(SystemError.code(of: error)))",
                             systemError: SystemError.code(of: error))
        }
        let credentials = options.credentials, timeout = options.fetchTimeout
        let executor = DispatchQueueExecutor(label: "capstan.git.clone")
        let result: Result<[String], GitError> = await withCheckedContinuation { continuation in
            executor.queue.async {
                do {
                    let r = try Repository.initBare(at: temporary)
                    let fetched = try r.fetch(url: url, refspecs: Self.refspecs, credentials: credentials, timeout: timeout)
                    if let head = fetched.defaultBranch { try r.setSymbolicReference("HEAD", to: head) }
                    continuation.resume(returning: .success(fetched.warnings))
                } catch let e as GitError {
                    continuation.resume(returning: .failure(e))
                } catch {
                    continuation.resume(returning: .failure(GitError(kind: .other, function: "capstan", message: "\(error)")))
                }
            }
        }
        let warnings: [String]
        switch result {
        case .success(let fetched): warnings = fetched
        case .failure(let e):
            try? fm.removeItem(atPath: temporary)
            throw self.error(e.kind, fetchAdvice(e), systemError: e.systemError)
        }
        let marker = ["url": location.description, "created": ISO8601DateFormatter().string(from: Date())]
        do {
            let data = try JSONSerialization.data(withJSONObject: marker, options: [.sortedKeys])
            try data.write(to: URL(fileURLWithPath: temporary + "/" + Self.mirrorMarker))
        } catch {
            try? fm.removeItem(atPath: temporary)
            throw self.error(.other, "cannot write the mirror at \(temporary): \(SystemError.describe(error))\(stateAdvice(SystemError.code(of: error)))",
                             systemError: SystemError.code(of: error))
        }
        if rename(temporary, path) != 0 {
            let code = errno
            try? fm.removeItem(atPath: temporary)
            // Another process finished the same mirror first: use theirs.
            if !(code == ENOTEMPTY || code == EEXIST) || !fm.fileExists(atPath: path + "/" + Self.mirrorMarker) {
                throw self.error(.other, "cannot move the new mirror into place at \(path): \(String(cString: strerror(code)))\(stateAdvice(code))",
                                 systemError: code)
            }
        }
        return warnings
    }

    /// Throws away the mirror of a remote (found damaged while reading it); the next `open`
    /// clones it again. Does nothing for a local repository.
    public func discardMirror() {
        guard case .remote = location else { return }
        discard(mirrorPath)
    }

    private func discard(_ path: String) {
        let aside = "\(path).broken-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        if rename(path, aside) == 0 {
            try? FileManager.default.removeItem(atPath: aside)
        } else {
            try? FileManager.default.removeItem(atPath: path)
        }
    }

    /// Appends force-pushes to `<mirror>/capstan-events.jsonl`.
    private func record(_ forced: [ForcedUpdate], mirror: String) {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        var lines = Data()
        for f in forced {
            struct Event: Encodable { var event = "forced-update"; var ref: String; var from: String; var to: String; var at: Date }
            if let data = try? encoder.encode(Event(ref: f.ref, from: f.from.hex, to: f.to.hex, at: f.at)) {
                lines.append(data)
                lines.append(0x0A)
            }
        }
        let path = mirror + "/capstan-events.jsonl"
        if let handle = FileHandle(forWritingAtPath: path) {
            handle.seekToEndOfFile()
            handle.write(lines)
            try? handle.close()
        } else {
            _ = FileManager.default.createFile(atPath: path, contents: lines)
        }
    }
}

extension OpenedRepository {
    /// Resolves a branch, tag, commit id or expression; `nil` means the default branch (HEAD).
    public func resolve(_ ref: String?) async throws(GitSourceError) -> ResolvedRevision {
        let spec = ref ?? "HEAD"
        do {
            let commit = try await repository.resolveCommit(spec)
            let info = try await repository.commitInfo(commit)
            return ResolvedRevision(ref: spec, commit: commit, tree: info.tree, summary: info.summary)
        } catch let e as GitError where e.kind == .notFound || e.code == -3 || e.message.contains("not found") || e.message.contains("revspec") {
            // The ref exists but its commit does not: objects are missing (lost packs), not the ref.
            if let target = try? await repository.withRepository({ $0.referencedObject(spec) }) {
                throw GitSourceError(repository: location.description, ref: spec, kind: .corrupt,
                                     message: "\(spec) points at \(target.short), which cannot be read (\(e.message)); objects are missing")
            }
            let branches = (try? await repository.withRepository { try $0.references(under: "refs/heads/") })?.keys
                .map { $0.replacingOccurrences(of: "refs/heads/", with: "") }.sorted() ?? []
            let hint = branches.isEmpty ? "the repository has no branches" : "branches: " + branches.prefix(10).joined(separator: ", ")
            throw GitSourceError(repository: location.description, ref: spec, kind: .notFound,
                                 message: ref == nil ? "the repository has no default branch (HEAD); pass --ref (\(hint))"
                                                     : "ref '\(spec)' not found (\(hint)); pass a branch, a tag or a full commit id")
        } catch let e as GitError {
            throw GitSourceError(repository: location.description, ref: spec, kind: e.kind, message: e.message, systemError: e.systemError)
        } catch {
            throw GitSourceError(repository: location.description, ref: spec, kind: .other, message: "\(error)")
        }
    }
}
