/// A file a manifest source offers: its path relative to the source root (`/`-separated), its size
/// when it is known without extra work (nil otherwise: ask `size(of:)`), and an identity that
/// changes whenever its content does (a Git blob id, or size+mtime for a folder). The loader keys
/// its parse cache by identity.
///
/// A file reached through a symlink inside the repository is offered under its real path. An
/// entry the source will not read (a symlink out of the repository, a FIFO, a name it cannot show)
/// is offered with a `refusal` and its own path (escaped when not printable): the loader reports
/// it and never reads it.
public struct ManifestFile: Hashable, Sendable {
    public var path: String
    public var size: Int?
    public var identity: String
    public var refusal: ManifestRefusal?

    public init(path: String, size: Int?, identity: String) {
        self.path = path
        self.size = size
        self.identity = identity
    }

    /// An entry that is not read, for the reason given.
    public init(refused path: String, _ refusal: ManifestRefusal) {
        self.path = path
        self.size = nil
        self.identity = ""
        self.refusal = refusal
    }
}

/// Why a source does not read something it found below a manifest folder. The same repository
/// gives the same refusals whether it is read from a folder or from a commit.
public enum ManifestRefusal: Hashable, Sendable {
    /// A symlink whose target is absolute, climbs above the root with `..`, or passes through a
    /// hidden name (`.git/config`, `.env`). `target` is the link's own text.
    case symlinkEscapes(target: String)
    /// A symlink to nothing in the repository (dangling, or through something that is not a
    /// folder), or whose target cannot be read as a path.
    case symlinkBroken(target: String)
    /// Symlinks that lead to each other (more than `LinkResolver.maxHops` links).
    case symlinkLoop
    /// A path named in a manifest (an input, a workdir, a manifest folder) that goes through a
    /// symlinked folder (`link`): what is at the exact path is what counts, and there is nothing.
    case symlinkInPath(link: String)
    /// A FIFO, socket or device named like a manifest: reading it could block or never end.
    case notRegularFile(kind: String)
    /// A name that is not UTF-8, or holds a control character (a line break, an escape) or a
    /// bidirectional control: the path is shown escaped.
    case unsafeName
    /// A Git submodule or a nested repository: another repository's files.
    case submodule
}

/// The outcome of reading one file.
public enum ManifestRead: Sendable {
    case bytes([UInt8])
    /// Larger than the limit: not read at all.
    case tooLarge(Int)
    case unreadable(ManifestSourceError)
}

public enum PathKind: Sendable, Equatable {
    case file
    case directory
    case missing
    /// A socket, device, submodule or anything else that is neither a plain file nor a folder.
    case other
    /// Not followed: a symlink out of the repository, a dangling one, a loop, a path through a
    /// symlinked folder, or a name that cannot be shown. A symlink inside the repository at the
    /// path itself is followed (`kind` is its target's).
    case refused(ManifestRefusal)
}

/// Where desired state is read from: a folder on disk, or (next) a commit in a Git repository.
/// Paths are always relative to the source root, `/`-separated, without `.` or `..` parts.
public protocol ManifestSource: Sendable {
    /// How diagnostics and logs name this source ("folder examples/quickstart", "repo@1a2b3c4").
    var displayName: String { get }

    /// Every `*.yaml` / `*.yml` file below `folder` (`""` is the root), sorted by path. Hidden
    /// folders (`.git`, `.github`, …) are skipped. Symlinks inside the repository are followed
    /// (files under their real paths, each once); entries that are not read come with a refusal.
    func yamlFiles(under folder: String) async throws -> [ManifestFile]

    /// The file at `path`, or nil when there is none.
    func file(at path: String) async throws -> ManifestFile?

    /// The bytes of a file listed by this source.
    func read(_ file: ManifestFile) async throws -> [UInt8]

    /// Several files, in order, each refused unread when larger than `limit` bytes. Sources with
    /// a costly round trip per call override this to read them in one go.
    func read(_ files: [ManifestFile], limit: Int) async throws -> [ManifestRead]

    /// The size of a file in bytes (asked only before parsing it, so a huge file is refused
    /// without being read).
    func size(of file: ManifestFile) async throws -> Int

    /// What is at `path` (used to check that inputs, working folders and manifest folders exist).
    /// A symlink at `path` is followed while it stays inside; a path through a symlinked folder
    /// is refused (`symlinkInPath`).
    func kind(of path: String) async throws -> PathKind

    /// What is at each path, in order; sources that can answer in bulk override this.
    func kinds(of paths: [String]) async throws -> [PathKind]

    /// An identity of the whole snapshot (a Git tree id) when the source has one: two loads of
    /// the same identity yield the same desired state, so the loader may reuse its last result.
    var snapshotIdentity: String? { get }
}

extension ManifestSource {
    public var snapshotIdentity: String? { nil }

    public func size(of file: ManifestFile) async throws -> Int { file.size ?? 0 }

    public func read(_ files: [ManifestFile], limit: Int) async throws -> [ManifestRead] {
        var out: [ManifestRead] = []
        for f in files {
            let size = try await size(of: f)
            if size > limit { out.append(.tooLarge(size)); continue }
            do { out.append(.bytes(try await read(f))) } catch let e as ManifestSourceError { out.append(.unreadable(e)) }
        }
        return out
    }

    public func kinds(of paths: [String]) async throws -> [PathKind] {
        var out: [PathKind] = []
        out.reserveCapacity(paths.count)
        for p in paths { out.append(try await kind(of: p)) }
        return out
    }
}

/// A failure of the source itself (not of the manifests in it).
public struct ManifestSourceError: Error, Sendable, CustomStringConvertible {
    public var source: String
    public var path: String?
    public var message: String

    public init(source: String, path: String? = nil, message: String) {
        self.source = source
        self.path = path
        self.message = message
    }

    public var description: String {
        if let path { return "\(source): \(path): \(message)" }
        return "\(source): \(message)"
    }
}
