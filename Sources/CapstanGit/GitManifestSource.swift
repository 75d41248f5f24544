import CapstanCore
import Foundation

/// The manifests of one commit, read straight from the object database: no working tree is
/// written. File identity is the blob id, so a parse cache keyed by it re-parses only what changed.
///
/// Symlinks are resolved inside the commit's tree exactly as `DirectoryManifestSource` resolves
/// them on disk (`LinkResolver`): one that stays inside is followed (its file offered under its
/// real path, once); one that is absolute, climbs out, leads into a hidden path, dangles or loops
/// is refused, whatever its name. Submodules and names that are not printable UTF-8 are refused
/// too, so a commit and its checkout give the same diagnostics.
public struct GitManifestSource: ManifestSource {
    public let repository: GitRepository
    public let revision: ResolvedRevision
    public let displayName: String
    /// The commit's tree, walked in pre-order: the entries below a folder follow it, contiguously.
    let entries: [TreeEntry]
    /// Every path of the tree → its position in `entries`.
    let index: [String: Int]
    /// Whether the tree holds a symlink anywhere (paths are resolved through links only then).
    let hasSymlinks: Bool
    /// Whether a name of the tree had to be repaired (`TreeEntry.escapedPath`): only then may
    /// two entries share a path.
    let hasRepairedNames: Bool

    /// Reads the commit's whole tree once (paths and ids only; blobs are read on demand).
    public init(repository: GitRepository, revision: ResolvedRevision, repositoryName: String) async throws {
        self.repository = repository
        self.revision = revision
        self.displayName = "\(repositoryName) @ \(revision.commit.short)"
        let entries = try await repository.walk(revision.tree)
        var index: [String: Int] = [:]
        index.reserveCapacity(entries.count)
        for (i, entry) in entries.enumerated() { index[entry.path] = i }
        self.entries = entries
        self.index = index
        hasSymlinks = entries.contains { $0.kind == .symlink }
        hasRepairedNames = entries.contains { $0.escapedPath != nil }
    }

    /// A source over a walk already made (`GitSourceRepository` keeps the last trees' listings).
    init(repository: GitRepository, revision: ResolvedRevision, repositoryName: String,
         entries: [TreeEntry], index: [String: Int]) {
        self.repository = repository
        self.revision = revision
        self.displayName = "\(repositoryName) @ \(revision.commit.short)"
        self.entries = entries
        self.index = index
        hasSymlinks = entries.contains { $0.kind == .symlink }
        hasRepairedNames = entries.contains { $0.escapedPath != nil }
    }

    private func entryAt(_ path: String) -> TreeEntry? {
        index[path].map { entries[$0] }
    }

    /// The tree id: the same tree means the same desired state.
    public var snapshotIdentity: String? { revision.tree.hex }

    public func yamlFiles(under folder: String) async throws -> [ManifestFile] {
        let files = try await repository.withRepository { r -> [ManifestFile] in
            var links = LinkTargets()
            var listing = Listing()
            switch resolve(folder, r, &links) {
            case .found(let real, .directory):
                list(real, r, &links, &listing)
            case .found(_, .submodule):
                listing.out.append(ManifestFile(refused: folder, .submodule))
            case .refused(let refusal):
                listing.out.append(ManifestFile(refused: folder, refusal))
            case .found, .missing:
                break
            }
            return listing.out
        }
        var seen = Set<String>()
        return files.filter { seen.insert($0.path).inserted }.sorted { $0.path < $1.path }
    }

    private struct Listing {
        var out: [ManifestFile] = []
        var folders = Set<String>()
    }

    /// The entries below the real folder `folder`, symlinks resolved, into `listing`.
    private func list(_ folder: String, _ r: Repository, _ links: inout LinkTargets, _ listing: inout Listing) {
        guard listing.folders.insert(folder).inserted else { return }
        let prefix = folder.isEmpty ? "" : folder + "/"
        var i = folder.isEmpty ? 0 : (index[folder] ?? entries.count) + 1
        while i < entries.count, entries[i].path.utf8.starts(with: prefix.utf8) {
            let entry = entries[i]
            let path = entry.path
            i += 1
            let relative = path.utf8.dropFirst(prefix.utf8.count)
            if Self.isHidden(relative) { continue }
            // A repaired name that collides with another (only a tree with repaired names has one).
            if hasRepairedNames, index[path] != i - 1 { continue }
            let name = path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path
            let yaml = Self.isYAML(name)
            if let shown = entry.escapedPath {
                // Below a refused name: not listed. The refused name itself: when it could hold manifests.
                let parentShown = shown.split(separator: "/").dropLast()
                let parent = path.split(separator: "/").dropLast()
                guard parentShown.elementsEqual(parent) else { continue }
                if entry.kind == .tree || entry.kind == .symlink || yaml {
                    listing.out.append(ManifestFile(refused: shown, .unsafeName))
                }
                continue
            }
            switch entry.kind {
            case .blob, .executable:
                // The size is read from the object header only when the file must be parsed.
                if yaml { listing.out.append(ManifestFile(path: path, size: nil, identity: entry.id.hex)) }
            case .commit:
                listing.out.append(ManifestFile(refused: path, .submodule))
            case .tree:
                continue  // its entries follow in this range
            case .symlink:
                switch resolve(path, r, &links) {
                case .found(let real, _) where !SafeText.isPrintable(real):
                    listing.out.append(ManifestFile(refused: path, .unsafeName))
                case .found(let real, .file):
                    if yaml, let target = entryAt(real) { listing.out.append(ManifestFile(path: real, size: nil, identity: target.id.hex)) }
                case .found(let real, .directory):
                    list(real, r, &links, &listing)
                case .found(_, .submodule):
                    listing.out.append(ManifestFile(refused: path, .submodule))
                case .found(_, .special(let kind)):
                    if yaml { listing.out.append(ManifestFile(refused: path, .notRegularFile(kind: kind))) }
                case .refused(let refusal):
                    listing.out.append(ManifestFile(refused: path, refusal))
                case .found, .missing:
                    listing.out.append(ManifestFile(refused: path, .symlinkBroken(target: "")))
                }
            }
        }
    }

    /// Whether a name of the relative path `relative` starts with a dot.
    static func isHidden(_ relative: Substring.UTF8View) -> Bool {
        var atStart = true
        for byte in relative {
            if atStart && byte == UInt8(ascii: ".") { return true }
            atStart = byte == UInt8(ascii: "/")
        }
        return false
    }

    static func isYAML(_ name: String) -> Bool {
        name.count > 5 && (name.hasSuffix(".yaml") || name.hasSuffix(".yml"))
    }

    public func file(at path: String) async throws -> ManifestFile? {
        try await repository.withRepository { r -> ManifestFile? in
            var links = LinkTargets()
            switch resolve(path, r, &links) {
            case .found(let real, .file):
                guard SafeText.isPrintable(real), let entry = entryAt(real) else { return ManifestFile(refused: path, .unsafeName) }
                return ManifestFile(path: real, size: nil, identity: entry.id.hex)
            case .refused(let refusal):
                return ManifestFile(refused: path, refusal)
            case .found, .missing:
                return nil
            }
        }
    }

    public func read(_ file: ManifestFile) async throws -> [UInt8] {
        guard file.refusal == nil, let id = ObjectID(hex: file.identity) else {
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
        // Without a symlink in the tree a path is what the tree holds there (the common case:
        // answered from the index, with no trip to the repository).
        if !hasSymlinks {
            let plain = paths.map(plainKind)
            if !plain.contains(nil) { return plain.map { $0! } }
        }
        return try await repository.withRepository { r in
            var links = LinkTargets()
            return paths.map { resolve($0, r, &links, throughLinks: false).pathKind }
        }
    }

    public func kind(of path: String) async throws -> PathKind {
        try await kinds(of: [path])[0]
    }

    /// Reads many blobs in one trip to the repository's queue, refusing any over `limit` bytes
    /// by its header before inflating it.
    public func read(_ files: [ManifestFile], limit: Int) async throws -> [ManifestRead] {
        let name = displayName
        return try await repository.withRepository { r in
            files.map { file -> ManifestRead in
                guard file.refusal == nil, let id = ObjectID(hex: file.identity) else {
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

    /// What the tree holds at `path`, for a tree without symlinks; nil for a path that is not
    /// plain (`.`, `..` or empty names: the resolver decides).
    private func plainKind(_ path: String) -> PathKind? {
        if path.isEmpty { return .directory }
        guard RepoPath.isNormalized(path) else { return nil }
        guard let entry = entryAt(path) else { return .missing }
        switch entry.kind {
        case .blob, .executable: return .file
        case .tree: return .directory
        case .commit: return .other
        case .symlink: return nil
        }
    }

    // MARK: Symlinks

    /// Link texts read during one call (a link blob is read once).
    private struct LinkTargets {
        var texts: [ObjectID: String?] = [:]
    }

    private func resolve(_ path: String, _ r: Repository, _ links: inout LinkTargets, throughLinks: Bool = true) -> LinkResolver.Outcome {
        LinkResolver.resolve(path, throughLinks: throughLinks) { node($0, r, &links) }
    }

    /// What the tree holds at `path`, without following it.
    private func node(_ path: String, _ r: Repository, _ links: inout LinkTargets) -> LinkResolver.Node {
        if path.isEmpty { return .directory }
        guard let entry = entryAt(path) else { return .missing }
        switch entry.kind {
        case .blob, .executable: return .file
        case .tree: return .directory
        case .commit: return .submodule
        case .symlink:
            if let known = links.texts[entry.id] { return .symlink(target: known) }
            let text: String?
            if let size = try? r.blobSize(entry.id), size <= LinkResolver.maxTargetBytes, let bytes = try? r.blob(entry.id) {
                text = String(validating: bytes, as: UTF8.self)
            } else {
                text = nil
            }
            links.texts[entry.id] = .some(text)
            return .symlink(target: text)
        }
    }
}
