import CapstanCore
import Foundation

/// The `SourceRepository` port over Git: a local repository read in place, or a remote mirrored
/// into the state folder (`GitSource`), read at exact commits.
///
/// Made to live as long as the process (`capstan run` keeps one across passes):
/// - the repository is opened once, on first use, and kept open: `resolve(_:fetch: true)` fetches
///   into the kept mirror, `fetch: false` only resolves; libgit2's caches and the subtree
///   listings of `GitRepository.walk` live on from pass to pass;
/// - the listings of the last `keptListings` trees are kept, so `entries(of:)` and
///   `manifests(at:)` over an unchanged tree read nothing;
/// - a remote's mirror found damaged while reading (an object that cannot be read) is closed,
///   thrown away and cloned again, and the read tried once more; the error is thrown only when
///   that did not cure it. A local repository is never modified: its damage is reported.
///
/// What people should hear about a read (a force-push followed, credentials sent over plain
/// http://, a mirror cloned again) comes back as `SourceRevision.notes` of the next revision
/// `resolve` returns; nothing is printed. Every error is a `ClassifiedError` (`GitSourceError`,
/// `GitError`, `Materializer.MaterializeError`) naming the repository without credentials.
///
/// Operations run one at a time, in the order they were asked (opening, fetching and cloning
/// again must not interleave); libgit2's blocking work runs on the repository's own queue. A
/// `ManifestSource` handed out reads the repository directly, outside that order: after the
/// mirror is cloned again, sources handed out before fail (their repository is closed), so ask
/// for the revision's manifests again.
public actor GitSourceRepository: SourceRepository {
    public nonisolated let displayName: String
    /// Where the repository is and how it is read (a relative local path made absolute).
    public nonisolated let source: GitSource
    private let materializer: Materializer

    /// The repository, opened on first use and kept open.
    private var opened: OpenedRepository?
    /// How many times the repository was opened: once, plus once per mirror cloned again.
    private(set) var opens = 0
    /// Notes for the next revision `resolve` returns (left by fetches, or by cloning a mirror again).
    private var pendingNotes: [SourceNote] = []
    /// The listings of the last trees read, the most recent last.
    private var listings: [TreeListing] = []
    /// How many tree listings are kept: the revision of this pass and of the one before.
    static let keptListings = 2

    /// One operation at a time: true while one runs; the others wait in order.
    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    /// One tree's entries, in the port's form and by path.
    private struct TreeListing {
        var tree: ObjectID
        var entries: [SourceTreeEntry]
        /// The walk itself (pre-order) and every path's position in it, as `GitManifestSource` reads them.
        var walked: [TreeEntry]
        var index: [String: Int]
        /// Whether a name had to be repaired (`TreeEntry.escapedPath`): then two entries may share
        /// a path, and the listing is never patched.
        var hasRepairedNames: Bool
    }

    public init(source: GitSource) {
        if case .local(let path) = source.location, !path.hasPrefix("/") {
            let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
            self.source = GitSource(location: .local(path: absolute), options: source.options)
        } else {
            self.source = source
        }
        displayName = self.source.location.description
        materializer = Materializer(stateDirectory: source.options.stateDirectory)
    }

    // MARK: The port

    public func resolve(_ ref: String?, fetch: Bool) async throws -> SourceRevision {
        await enter()
        defer { leave() }
        _ = try await repository(fetch: fetch)
        let resolved = try await recovering(ref: ref ?? "HEAD") { try await $0.resolve(ref) }
        let revision = SourceRevision(ref: resolved.ref, commit: resolved.commit.hex, tree: resolved.tree.hex,
                                      summary: resolved.summary, notes: pendingNotes)
        pendingNotes = []
        return revision
    }

    /// A `GitManifestSource` over the revision's tree (its listing kept for the next call).
    public func manifests(at revision: SourceRevision) async throws -> any ManifestSource {
        await enter()
        defer { leave() }
        let (commit, tree) = try ids(of: revision)
        let listing = try await listing(of: tree, ref: revision.ref)
        let kept = try await repository(fetch: false)
        return GitManifestSource(repository: kept.repository,
                                 revision: ResolvedRevision(ref: revision.ref, commit: commit, tree: tree, summary: revision.summary),
                                 repositoryName: displayName, entries: listing.walked, index: listing.index)
    }

    public func file(at path: String, of revision: SourceRevision) async throws -> [UInt8]? {
        await enter()
        defer { leave() }
        let (_, tree) = try ids(of: revision)
        let kept = try await repository(fetch: false)
        guard let (id, kind) = try await kept.repository.entry(at: path, in: tree), kind == .blob || kind == .executable else { return nil }
        // The bound of a manifest file (YAMLReader's 1 MiB): a larger one is not read here.
        guard try await kept.repository.blobSize(id) <= 1 << 20 else { return nil }
        return try await kept.repository.blob(id)
    }

    public func commitRecord(_ commit: String) async -> ModelCard.Commit? {
        guard let id = ObjectID(hex: commit), let kept = try? await repository(fetch: false),
              let info = try? await kept.repository.commitInfo(id) else { return nil }
        return ModelCard.Commit(id: commit, author: info.author, time: Int64(info.time.timeIntervalSince1970 * 1000), summary: info.summary)
    }

    /// Compares the two trees (only the subtrees whose ids differ are read); the comparison
    /// is kept, so that reading the new tree's listing afterwards patches the old one.
    public func changes(from old: SourceRevision, to new: SourceRevision) async throws -> SourceChanges? {
        await enter()
        defer { leave() }
        let (_, a) = try ids(of: old)
        let (_, b) = try ids(of: new)
        guard let changed = try await shapeChanges(from: a, to: b, ref: new.ref) else { return nil }
        var files: [String: SourceChanges.Change] = [:]
        for change in changed where change.kind != .tree {
            // A link that leads elsewhere may change what is listed where: read in full.
            if change.kind == .symlink { return nil }
            files[change.path] = SourceChanges.Change(old: change.old.hex, new: change.new.hex)
        }
        return SourceChanges(from: old.tree, to: new.tree, files: files)
    }

    /// The last comparison of two trees (`sameShapeChanges`), nil inside when their shapes differ.
    private var lastComparison: (from: ObjectID, to: ObjectID, changes: [ShapeChange]?)?
    /// Beyond this many changed entries, a tree is walked in full.
    static let patchLimit = 4096

    private func shapeChanges(from a: ObjectID, to b: ObjectID, ref: String) async throws -> [ShapeChange]? {
        if let kept = lastComparison, kept.from == a, kept.to == b { return kept.changes }
        try await requirePresent(a, "tree", ref: ref)
        try await requirePresent(b, "tree", ref: ref)
        let changes = try await recovering(ref: ref) { try await $0.repository.sameShapeChanges(from: a, to: b, limit: Self.patchLimit) }
        lastComparison = (a, b, changes)
        return changes
    }

    public func entries(of revision: SourceRevision) async throws -> [SourceTreeEntry] {
        await enter()
        defer { leave() }
        let (_, tree) = try ids(of: revision)
        return try await listing(of: tree, ref: revision.ref).entries
    }

    /// `<state>/trees/<tree id>` (see `Materializer`: written once, then shared and read-only).
    public func materialize(commit: String) async throws -> String {
        await enter()
        defer { leave() }
        guard let id = ObjectID(hex: commit) else {
            throw GitSourceError(repository: displayName, ref: commit, kind: .notFound,
                                 message: "'\(commit)' is not a commit id (40 lowercase hex digits)")
        }
        try await requirePresent(id, "commit", ref: id.short)
        let materializer = self.materializer
        return try await recovering(ref: id.short) { try await materializer.materialize($0.repository, commit: id).path }
    }

    /// One folder (`<state>/trees/<its tree id>`) or file (`<state>/trees/blobs/<blob id>`) of
    /// `commit`, for a step that needs only that. A symlink, a submodule, or a folder whose links
    /// lead out of it is `.wholeTreeNeeded` (the whole tree resolves them).
    public func materialize(commit: String, path: String) async throws -> MaterializedPath {
        await enter()
        defer { leave() }
        guard let id = ObjectID(hex: commit) else {
            throw GitSourceError(repository: displayName, ref: commit, kind: .notFound,
                                 message: "'\(commit)' is not a commit id (40 lowercase hex digits)")
        }
        if path.isEmpty { return .wholeTreeNeeded }
        try await requirePresent(id, "commit", ref: id.short)
        let materializer = self.materializer
        return try await recovering(ref: id.short) { opened -> MaterializedPath in
            let repository = opened.repository
            let info = try await repository.commitInfo(id)
            guard let (object, kind) = try await repository.entry(at: path, in: info.tree) else { return .absent }
            switch kind {
            case .tree:
                do {
                    return .at(try await materializer.materialize(repository, commit: id, folder: path).path)
                } catch let error as Materializer.MaterializeError where error.kind == .unsafeTree {
                    return .wholeTreeNeeded
                }
            case .blob, .executable:
                return .at(try await materializer.materializeFile(repository, blob: object, executable: kind == .executable))
            case .symlink, .commit:
                return .wholeTreeNeeded
            }
        }
    }

    /// A remote's mirror is closed, thrown away and cloned again (true); a local repository is
    /// left as it is (false). The clone's notes come with the next revision `resolve` returns.
    public func recoverDamagedMirror() async throws -> Bool {
        await enter()
        defer { leave() }
        guard case .remote = source.location else { return false }
        _ = try await recreate()
        return true
    }

    // MARK: The kept repository

    /// The kept repository, opened on first use (fetched first when `fetch`, for a remote); when
    /// already open and `fetch`, a remote's mirror is brought up to date, and cloned again when
    /// the fetch finds it damaged.
    private func repository(fetch: Bool) async throws(GitSourceError) -> OpenedRepository {
        guard let kept = opened else {
            let fresh = try await source.open(fetch: fetch)
            adopt(fresh)
            return fresh
        }
        guard fetch, kept.mirrorPath != nil else { return kept }
        do {
            let update = try await source.update(kept)
            note(Self.notes(forcedUpdates: update.forcedUpdates, warnings: update.warnings))
            return kept
        } catch where error.kind == .corrupt {
            return try await recreate()
        }
    }

    /// Closes the kept mirror (libgit2 caches pack files by path: the new clone must not be served
    /// the damaged ones, whoever still holds the old repository), throws it away and clones the
    /// remote again.
    private func recreate() async throws(GitSourceError) -> OpenedRepository {
        if let kept = opened {
            try? await kept.repository.closeObjects()
        }
        opened = nil
        let fresh = try await source.recreateMirror()
        adopt(fresh)
        return fresh
    }

    private func adopt(_ fresh: OpenedRepository) {
        opened = fresh
        opens += 1
        if fresh.recreatedDamagedMirror {
            note([SourceNote(.note, "the mirror of \(displayName) is damaged; cloning it again")])
        }
        note(Self.notes(forcedUpdates: fresh.forcedUpdates, warnings: fresh.warnings))
    }

    /// Adds notes for the next revision, each once (a warning every fetch repeats is not piled up
    /// while resolving fails).
    private func note(_ notes: [SourceNote]) {
        for note in notes where !pendingNotes.contains(note) {
            pendingNotes.append(note)
        }
    }

    static func notes(forcedUpdates: [ForcedUpdate], warnings: [String]) -> [SourceNote] {
        warnings.map { SourceNote(.warning, $0) }
            + forcedUpdates.map {
                SourceNote(.note, "\($0.ref) was force-pushed (\($0.from.short) → \($0.to.short), not a fast-forward); following the new commit")
            }
    }

    /// Runs `body` on the kept repository; when it finds a remote's mirror damaged, clones the
    /// mirror again and runs `body` once more. Errors come out naming the repository and `ref`.
    private func recovering<T: Sendable>(ref: String, _ body: (OpenedRepository) async throws -> T) async throws -> T {
        let kept = try await repository(fetch: false)
        do {
            return try await body(kept)
        } catch where Self.isDamage(error) && kept.mirrorPath != nil {
            let fresh = try await recreate()
            do {
                return try await body(fresh)
            } catch {
                throw describe(error, ref: ref, afterRecovery: true)
            }
        } catch {
            throw describe(error, ref: ref, afterRecovery: false)
        }
    }

    static func isDamage(_ error: any Error) -> Bool {
        (error as? GitSourceError)?.kind == .corrupt || (error as? GitError)?.kind == .corrupt
    }

    /// `error` as a `GitSourceError` naming the repository and `ref` (a materializer's refusal
    /// stays what it is: it names the commit and the path).
    private func describe(_ error: any Error, ref: String, afterRecovery: Bool) -> any Error {
        var failure: GitSourceError
        switch error {
        case let e as GitSourceError: failure = e
        case let e as GitError:
            failure = GitSourceError(repository: displayName, ref: ref, kind: e.kind, message: source.location.scrub(e.message),
                                     systemError: e.systemError)
        default: return error
        }
        if failure.kind == .corrupt {
            if afterRecovery {
                failure.message = "the mirror is still damaged after cloning it again: \(failure.message); check the remote repository with git fsck"
            } else if case .local = source.location {
                failure.message = "the repository is damaged: \(failure.message); check it with git fsck"
            }
        }
        return failure
    }

    // MARK: Trees

    private func ids(of revision: SourceRevision) throws(GitSourceError) -> (commit: ObjectID, tree: ObjectID) {
        guard let commit = ObjectID(hex: revision.commit), let tree = ObjectID(hex: revision.tree) else {
            throw GitSourceError(repository: displayName, ref: revision.ref, kind: .notFound,
                                 message: "'\(revision.commit)' (tree '\(revision.tree)') is not a revision of this repository: resolve the ref first")
        }
        return (commit, tree)
    }

    /// The listing of `tree`, kept or read (one walk; subtrees unchanged since the last walk are
    /// not read again).
    private func listing(of tree: ObjectID, ref: String) async throws -> TreeListing {
        if let kept = listings.last(where: { $0.tree == tree }) { return kept }
        if let patched = try await patchedListing(of: tree, ref: ref) {
            keep(patched)
            return patched
        }
        try await requirePresent(tree, "tree", ref: ref)
        let walked = try await recovering(ref: ref) { try await $0.repository.walk(tree) }
        var entries: [SourceTreeEntry] = []
        var index: [String: Int] = [:]
        entries.reserveCapacity(walked.count)
        index.reserveCapacity(walked.count)
        for (i, entry) in walked.enumerated() {
            entries.append(SourceTreeEntry(path: entry.path, kind: Self.kind(entry.kind), id: entry.id.hex))
            index[entry.path] = i
        }
        let listing = TreeListing(tree: tree, entries: entries, walked: walked, index: index,
                                  hasRepairedNames: walked.contains { $0.escapedPath != nil })
        keep(listing)
        return listing
    }

    private func keep(_ listing: TreeListing) {
        listings.removeAll { $0.tree == listing.tree }
        listings.append(listing)
        if listings.count > Self.keptListings { listings.removeFirst(listings.count - Self.keptListings) }
    }

    /// The listing of `tree` made from the last one kept, when the two trees hold the same paths
    /// (only contents changed): the changed entries get their new ids, the index of paths is
    /// shared. Nil when there is none to patch (no listing kept, names that had to be repaired,
    /// another shape, too many changes).
    private func patchedListing(of tree: ObjectID, ref: String) async throws -> TreeListing? {
        // A comparison that fails (the last tree pruned since, an object that cannot be read)
        // leaves the walk to read the tree, or to say why it cannot.
        guard var listing = listings.last, !listing.hasRepairedNames,
              let changes = try? await shapeChanges(from: listing.tree, to: tree, ref: ref) else { return nil }
        for change in changes {
            guard let i = listing.index[change.path], listing.walked[i].path == change.path else { return nil }
            listing.walked[i].id = change.new
            listing.entries[i].id = change.new.hex
        }
        listing.tree = tree
        return listing
    }

    /// Throws `.notFound` when the repository does not hold `id` at all: asked for by id (a
    /// revision or commit from an earlier pass, since force-pushed away and pruned), it is
    /// missing, not damaged, and cloning the mirror again would not bring it back.
    private func requirePresent(_ id: ObjectID, _ what: String, ref: String) async throws {
        let kept = try await repository(fetch: false)
        let present: Bool
        do {
            present = try await kept.repository.withRepository { try $0.contains(id) }
        } catch {
            throw describe(error, ref: ref, afterRecovery: false)
        }
        guard present else {
            throw GitSourceError(repository: displayName, ref: ref, kind: .notFound,
                                 message: "\(what) \(id.short) is not in the repository (no branch or tag reaches it any more?); resolve the ref again")
        }
    }

    static func kind(_ kind: EntryKind) -> SourceTreeEntry.Kind {
        switch kind {
        case .blob: return .file
        case .executable: return .executable
        case .symlink: return .symlink
        case .tree: return .folder
        case .commit: return .submodule
        }
    }

    // MARK: One at a time

    private func enter() async {
        guard busy else {
            busy = true
            return
        }
        // `leave` hands the turn over: `busy` stays true.
        await withCheckedContinuation { waiting.append($0) }
    }

    private func leave() {
        if waiting.isEmpty {
            busy = false
        } else {
            waiting.removeFirst().resume()
        }
    }
}
