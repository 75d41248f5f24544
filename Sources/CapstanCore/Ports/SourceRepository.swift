/// Where the desired state comes from: a Git repository (local, or a mirror of a remote),
/// read at one exact commit (DESIGN.md §4, step 1). Implemented by CapstanGit over libgit2. A
/// long-lived process (the controller) keeps one open and reuses what it read.
public protocol SourceRepository: Sendable {
    /// The repository as people name it, without credentials (`https://git.example.com/ml/models.git`,
    /// or an absolute local path).
    var displayName: String { get }

    /// Fetches (a remote's mirror; when `fetch`) and resolves `ref` (nil: the default branch or
    /// HEAD) to a commit. Throws a classified `.sourceUnavailable` failure when it cannot.
    func resolve(_ ref: String?, fetch: Bool) async throws -> SourceRevision

    /// The manifest files of `revision`'s tree (Git blob ids as identities).
    func manifests(at revision: SourceRevision) async throws -> any ManifestSource

    /// Every entry of `revision`'s tree, pre-order (a folder's entries follow it, contiguously).
    func entries(of revision: SourceRevision) async throws -> [SourceTreeEntry]

    /// A folder holding the files of `commit` (40 hex digits), shared and read-only: a step copies
    /// what it needs from it. Written once per tree.
    func materialize(commit: String) async throws -> String

    /// One path of `commit` on its own, shared and read-only (a folder written once per tree id,
    /// a file once per blob): what a step needs without writing the whole commit out.
    func materialize(commit: String, path: String) async throws -> MaterializedPath

    /// Called when reading `revision` found an object that cannot be read: a remote's mirror is
    /// thrown away and cloned again (true); a local repository is left as it is (false).
    func recoverDamagedMirror() async throws -> Bool
}

/// A ref resolved to a commit.
public struct SourceRevision: Hashable, Sendable {
    /// The ref as resolved (`main`, `refs/heads/main`, `HEAD`).
    public var ref: String
    /// 40 hex digits.
    public var commit: String
    public var tree: String
    /// The commit's subject line.
    public var summary: String
    /// What people should hear about the read (a force-push followed, a token sent over plain
    /// http); free of credentials.
    public var notes: [SourceNote]

    public init(ref: String, commit: String, tree: String, summary: String = "", notes: [SourceNote] = []) {
        self.ref = ref
        self.commit = commit
        self.tree = tree
        self.summary = summary
        self.notes = notes
    }

    /// The first 10 characters of the commit, for people.
    public var shortCommit: String { String(commit.prefix(10)) }
}

public struct SourceNote: Hashable, Sendable {
    public enum Kind: Hashable, Sendable { case warning, note }
    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
}

/// One entry of a recursively walked tree.
public struct SourceTreeEntry: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        case file
        case executable
        case symlink
        case folder
        /// A submodule (a commit inside the tree).
        case submodule

        /// Git's mode of the kind (`100644`, `040000`…), part of folder identities.
        public var gitMode: String {
            switch self {
            case .file: return "100644"
            case .executable: return "100755"
            case .symlink: return "120000"
            case .submodule: return "160000"
            case .folder: return "040000"
            }
        }
    }

    public var path: String
    public var kind: Kind
    /// The Git object id (40 hex digits).
    public var id: String

    public init(path: String, kind: Kind, id: String) {
        self.path = path
        self.kind = kind
        self.id = id
    }
}

/// Where one path of a commit was written (`SourceRepository.materialize(commit:path:)`).
public enum MaterializedPath: Hashable, Sendable {
    /// A read-only copy of the folder or file, at this location.
    case at(String)
    /// The commit holds nothing at the path.
    case absent
    /// The path cannot be written on its own (a symlink, a submodule, a link leading out of the
    /// folder): copy it from the whole tree (`materialize(commit:)`).
    case wholeTreeNeeded
}

extension SourceRepository {
    /// A source that cannot write single paths: steps copy from the whole tree.
    public func materialize(commit: String, path: String) async throws -> MaterializedPath { .wholeTreeNeeded }
}
