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

    /// What differs between the trees of two revisions when both hold the same paths, each of the
    /// same kind: only contents changed (the common commit that edits a few files). Nil when the
    /// shapes differ (a path added, removed or changed in kind, or a symlink's target changed),
    /// or too much changed to be worth following: then the new revision is read in full. A
    /// long-lived reader uses it to redo only what the changed files touch.
    func changes(from old: SourceRevision, to new: SourceRevision) async throws -> SourceChanges?

    /// A folder holding the files of `commit` (40 hex digits), shared and read-only: a step copies
    /// what it needs from it. Written once per tree.
    func materialize(commit: String) async throws -> String

    /// One path of `commit` on its own, shared and read-only (a folder written once per tree id,
    /// a file once per blob): what a step needs without writing the whole commit out.
    func materialize(commit: String, path: String) async throws -> MaterializedPath

    /// Called when reading `revision` found an object that cannot be read: a remote's mirror is
    /// thrown away and cloned again (true); a local repository is left as it is (false).
    func recoverDamagedMirror() async throws -> Bool

    /// Who made `commit` (40 hex digits), when, and its title; nil when the repository does not
    /// have it (model cards).
    func commitRecord(_ commit: String) async -> ModelCard.Commit?

    /// The bytes of the regular file at `path` (relative to the root) of `revision`, read on its
    /// own without listing the tree; nil when there is no such file (the registry `capstan.yaml`
    /// names, read before a pass is wired).
    func file(at path: String, of revision: SourceRevision) async throws -> [UInt8]?
}

/// The files whose contents differ between two trees of the same shape
/// (`SourceRepository.changes(from:to:)`).
public struct SourceChanges: Hashable, Sendable {
    public struct Change: Hashable, Sendable {
        /// The blob ids (40 hex digits) before and after.
        public var old: String
        public var new: String

        public init(old: String, new: String) {
            self.old = old
            self.new = new
        }
    }

    /// The trees compared.
    public var from: String
    public var to: String
    /// Every file (or symlink, or submodule) whose content differs, by path; folders are left out.
    public var files: [String: Change]

    public init(from: String, to: String, files: [String: Change]) {
        self.from = from
        self.to = to
        self.files = files
    }

    /// Whether a change touches the file or folder at `path` (normalized, as `RepoPath.normalize`
    /// gives it; "" is the root): the path itself, or anything below it.
    public func touches(_ path: String) -> Bool {
        if files.isEmpty { return false }
        if path.isEmpty { return true }
        if files[path] != nil { return true }
        let folder = path.utf8
        return files.keys.contains { file in
            let bytes = file.utf8
            guard bytes.count > folder.count, bytes.starts(with: folder) else { return false }
            return bytes[bytes.index(bytes.startIndex, offsetBy: folder.count)] == UInt8(ascii: "/")
        }
    }
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
    /// A source that cannot compare trees: every revision is read in full.
    public func changes(from old: SourceRevision, to new: SourceRevision) async throws -> SourceChanges? { nil }

    /// A source that cannot write single paths: steps copy from the whole tree.
    public func materialize(commit: String, path: String) async throws -> MaterializedPath { .wholeTreeNeeded }

    /// A source without commit records.
    public func commitRecord(_ commit: String) async -> ModelCard.Commit? { nil }

    /// A source that reads files only through its manifest source.
    public func file(at path: String, of revision: SourceRevision) async throws -> [UInt8]? {
        let manifests = try await manifests(at: revision)
        guard let file = try await manifests.file(at: path) else { return nil }
        return try await manifests.read(file)
    }
}
