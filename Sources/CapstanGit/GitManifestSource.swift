import CapstanCore
import Foundation

/// The manifests of one commit, read straight from the object database: no working tree is
/// written. File identity is the blob id, so a parse cache keyed by it re-parses only what changed.
public struct GitManifestSource: ManifestSource {
    public let repository: GitRepository
    public let revision: ResolvedRevision
    public let displayName: String
    /// Every path of the commit's tree → what it is.
    let index: [String: (kind: EntryKind, id: ObjectID)]

    /// Reads the commit's whole tree once (paths and ids only; blobs are read on demand).
    public init(repository: GitRepository, revision: ResolvedRevision, repositoryName: String) async throws {
        self.repository = repository
        self.revision = revision
        self.displayName = "\(repositoryName) @ \(revision.commit.short)"
        var index: [String: (kind: EntryKind, id: ObjectID)] = [:]
        for entry in try await repository.walk(revision.tree) {
            index[entry.path] = (entry.kind, entry.id)
        }
        self.index = index
    }

    /// A source over an index already built (`GitSourceRepository` keeps the last trees' indexes).
    init(repository: GitRepository, revision: ResolvedRevision, repositoryName: String,
         index: [String: (kind: EntryKind, id: ObjectID)]) {
        self.repository = repository
        self.revision = revision
        self.displayName = "\(repositoryName) @ \(revision.commit.short)"
        self.index = index
    }

    /// The tree id: the same tree means the same desired state.
    public var snapshotIdentity: String? { revision.tree.hex }

    public func yamlFiles(under folder: String) async throws -> [ManifestFile] {
        var out: [ManifestFile] = []
        for (path, entry) in index where entry.kind == .blob || entry.kind == .executable {
            guard path.hasSuffix(".yaml") || path.hasSuffix(".yml"), RepoPath.isInside(path, folder) else { continue }
            let relative = folder.isEmpty ? path : String(path.dropFirst(folder.count + 1))
            if relative.split(separator: "/").contains(where: { $0.hasPrefix(".") }) { continue }
            // The size is read from the object header only when the file must be parsed.
            out.append(ManifestFile(path: path, size: nil, identity: entry.id.hex))
        }
        return out.sorted { $0.path < $1.path }
    }

    public func file(at path: String) async throws -> ManifestFile? {
        guard let entry = index[path], entry.kind == .blob || entry.kind == .executable else { return nil }
        return ManifestFile(path: path, size: nil, identity: entry.id.hex)
    }

    public func read(_ file: ManifestFile) async throws -> [UInt8] {
        guard let id = ObjectID(hex: file.identity) else {
            throw ManifestSourceError(source: displayName, path: file.path, message: "not a blob of this commit")
        }
        do {
            return try await repository.blob(id)
        } catch let e as GitError {
            throw ManifestSourceError(source: displayName, path: file.path, message: "cannot read blob \(id.short): \(e.message)")
        }
    }

    public func size(of file: ManifestFile) async throws -> Int {
        if let size = file.size { return size }
        guard let id = ObjectID(hex: file.identity) else { return 0 }
        return try await repository.blobSize(id)
    }

    public func kinds(of paths: [String]) async throws -> [PathKind] {
        paths.map(lookup)
    }

    public func kind(of path: String) async throws -> PathKind {
        lookup(path)
    }

    /// Reads many blobs in one trip to the repository's queue, refusing any over `limit` bytes
    /// by its header before inflating it.
    public func read(_ files: [ManifestFile], limit: Int) async throws -> [ManifestRead] {
        let name = displayName
        return try await repository.withRepository { r in
            files.map { file -> ManifestRead in
                guard let id = ObjectID(hex: file.identity) else {
                    return .unreadable(ManifestSourceError(source: name, path: file.path, message: "not a blob of this commit"))
                }
                do {
                    let size = try r.blobSize(id)
                    if size > limit { return .tooLarge(size) }
                    return .bytes(try r.blob(id))
                } catch {
                    let message = (error as? GitError)?.message ?? "\(error)"
                    return .unreadable(ManifestSourceError(source: name, path: file.path, message: "cannot read blob \(id.short): \(message)"))
                }
            }
        }
    }

    private func lookup(_ path: String) -> PathKind {
        if path.isEmpty { return .directory }
        switch index[path]?.kind {
        case .blob?, .executable?: return .file
        case .tree?: return .directory
        case nil: return .missing
        case .symlink?, .commit?: return .other
        }
    }
}
