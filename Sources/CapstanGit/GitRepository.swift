import Dispatch
import Foundation

/// Runs an actor's jobs on its own serial dispatch queue, so blocking libgit2 calls never occupy
/// a thread of the cooperative pool.
final class DispatchQueueExecutor: SerialExecutor {
    let queue: DispatchQueue

    init(label: String) {
        queue = DispatchQueue(label: label)
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        let executor = asUnownedSerialExecutor()
        queue.async { unowned.runSynchronously(on: executor) }
    }

    func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }
}

/// A Git repository, used from async code. All libgit2 work runs on the repository's own serial
/// queue; results come back as Swift values.
public actor GitRepository {
    private let executor: DispatchQueueExecutor
    let repository: Repository
    public nonisolated let path: String

    public nonisolated var unownedExecutor: UnownedSerialExecutor {
        executor.asUnownedSerialExecutor()
    }

    init(repository: Repository, executor: DispatchQueueExecutor) {
        self.repository = repository
        self.executor = executor
        self.path = repository.path
    }

    /// Opens the repository at `path` (a work tree or a bare repository), off the cooperative pool.
    public static func open(at path: String) async throws -> GitRepository {
        let executor = DispatchQueueExecutor(label: "capstan.git")
        let repository: Repository = try await withCheckedThrowingContinuation { continuation in
            executor.queue.async {
                do { continuation.resume(returning: try Repository.open(at: path)) } catch { continuation.resume(throwing: error) }
            }
        }
        return GitRepository(repository: repository, executor: executor)
    }

    public func resolveCommit(_ spec: String) throws -> ObjectID {
        try repository.resolveCommit(spec)
    }

    public func commitInfo(_ id: ObjectID) throws -> CommitInfo {
        try repository.commitInfo(id)
    }

    /// Subtree listings of the last walk, by tree id.
    private var walkCache: [ObjectID: [TreeEntry]] = [:]

    /// Every entry below `tree`; subtrees unchanged since the last walk are not read again.
    public func walk(_ tree: ObjectID) throws -> [TreeEntry] {
        var visited: [ObjectID: [TreeEntry]] = [:]
        let entries = try repository.walk(tree, cache: walkCache, visited: &visited)
        walkCache = visited
        return entries
    }

    /// The entries whose ids differ between two trees holding the same paths (each of the same
    /// kind), folders included; nil when the shapes differ or more than `limit` entries differ.
    public func sameShapeChanges(from old: ObjectID, to new: ObjectID, limit: Int) throws -> [ShapeChange]? {
        try repository.sameShapeChanges(from: old, to: new, limit: limit)
    }

    public func entry(at path: String, in tree: ObjectID) throws -> (ObjectID, EntryKind)? {
        try repository.entry(at: path, in: tree)
    }

    public func blob(_ id: ObjectID) throws -> [UInt8] {
        try repository.blob(id)
    }

    public func blobSize(_ id: ObjectID) throws -> Int {
        try repository.blobSize(id)
    }

    /// Paths that differ between the trees of two commits.
    public func changedPaths(from base: ObjectID, to head: ObjectID) throws -> [PathChange] {
        let baseTree = try repository.commitInfo(base).tree
        let headTree = try repository.commitInfo(head).tree
        return try repository.diff(from: baseTree, to: headTree)
    }

    public func isDescendant(_ commit: ObjectID, of ancestor: ObjectID) throws -> Bool {
        try repository.isDescendant(commit, of: ancestor)
    }

    public func referenceTarget(_ name: String) throws -> ObjectID? {
        try repository.referenceTarget(name)
    }

    /// Stops reading objects: every later read fails (as a missing object, reported as damage).
    /// For a damaged mirror about to be cloned again (`Repository.closeObjects`).
    func closeObjects() throws {
        walkCache = [:]
        try repository.closeObjects()
    }

    /// Runs `body` with the underlying repository on its queue (for adapters in this module).
    func withRepository<T: Sendable>(_ body: (Repository) throws -> T) throws -> T {
        try body(repository)
    }
}
