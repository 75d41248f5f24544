import CapstanCore
import CCapstanGitStream
import CLibGit2
import Foundation

/// What a tree entry is.
public enum EntryKind: Sendable, Equatable {
    case blob
    case executable
    case symlink
    case tree
    /// A submodule (a commit inside a tree).
    case commit
}

/// One entry of a recursively walked tree.
public struct TreeEntry: Sendable, Equatable {
    /// The path; a name that is not UTF-8 is repaired (U+FFFD), so two such names may collide.
    public var path: String
    public var kind: EntryKind
    public var id: ObjectID
    /// Set when a name on the path is not UTF-8 or not printable (`SafeText`): the path with
    /// those names escaped (`bad\xFF.yaml`, `a\nb.yaml`), as diagnostics show it.
    public var escapedPath: String? = nil
}

/// One entry whose id differs between two trees of the same shape (`Repository.sameShapeChanges`).
public struct ShapeChange: Sendable, Equatable {
    public var path: String
    public var kind: EntryKind
    public var old: ObjectID
    public var new: ObjectID
}

/// One path that differs between two trees.
public struct PathChange: Sendable, Equatable, Hashable {
    public enum Status: String, Sendable, Codable {
        case added, deleted, modified, renamed, typeChanged = "type-changed"
    }

    public var status: Status
    public var oldPath: String
    public var newPath: String

    public var path: String { status == .deleted ? oldPath : newPath }
}

/// A commit's metadata.
public struct CommitInfo: Sendable, Equatable {
    public var id: ObjectID
    public var tree: ObjectID
    public var summary: String
    public var author: String
    public var time: Date
}

/// One owner of a `git_repository*`. Not thread-safe and not Sendable: use it from one serial
/// executor (`GitRepository`). Every result is copied into Swift values before returning; no
/// libgit2 pointer escapes.
final class Repository {
    let pointer: OpaquePointer
    let path: String

    private init(_ pointer: OpaquePointer, path: String) {
        self.pointer = pointer
        self.path = path
    }

    deinit {
        git_repository_free(pointer)
    }

    /// Opens a repository at exactly `path` (a work tree or a bare repository; no search upwards).
    static func open(at path: String) throws(GitError) -> Repository {
        LibGit2.ensureInitialized()
        var repo: OpaquePointer?
        try check(git_repository_open_ext(&repo, path, GIT_REPOSITORY_OPEN_NO_SEARCH.rawValue, nil), "git_repository_open_ext")
        return Repository(repo!, path: path)
    }

    /// Creates an empty bare repository.
    static func initBare(at path: String) throws(GitError) -> Repository {
        LibGit2.ensureInitialized()
        var repo: OpaquePointer?
        try check(git_repository_init(&repo, path, 1), "git_repository_init")
        return Repository(repo!, path: path)
    }

    var isBare: Bool { git_repository_is_bare(pointer) == 1 }

    /// Lets go of the object database (and with it the pack files libgit2 keeps open and caches
    /// process-wide by path) and of the objects cached in memory, while the handle itself lives
    /// on: every later object read fails. A damaged mirror is closed this way before it is cloned
    /// again at the same path, so that the new clone never gets the old, damaged pack files from
    /// libgit2's cache, whoever still holds the old repository. An empty object database takes
    /// the old one's place: left without one, libgit2 would open the path again on the next read.
    func closeObjects() throws(GitError) {
        try check(git_repository__cleanup(pointer), "git_repository__cleanup")
        var empty: OpaquePointer?
        try check(git_odb_new(&empty), "git_odb_new")
        defer { git_odb_free(empty) }
        try check(git_repository_set_odb(pointer, empty), "git_repository_set_odb")
    }

    /// Refuses a damaged loose object before libgit2 reads it: libgit2 1.5 spins forever on some
    /// truncated loose objects (libgit2 issue 7342). Packed objects are not affected.
    func guardLooseObject(_ id: ObjectID) throws(GitError) {
        guard let gitdir = git_repository_path(pointer) else { return }
        let hex = id.hex
        let path = String(cString: gitdir) + "objects/" + hex.prefix(2) + "/" + hex.dropFirst(2)
        if capstan_loose_object_is_complete(path) == 0 {
            throw GitError(kind: .corrupt, function: "capstan_loose_object_is_complete",
                           message: "object \(id.short) is damaged (its file \(path) is truncated or not zlib data)")
        }
    }

    // MARK: References and commits

    /// Resolves a branch, tag, full commit id or revision expression (`main~1`) to a commit.
    func resolveCommit(_ spec: String) throws(GitError) -> ObjectID {
        var object: OpaquePointer?
        try check(git_revparse_single(&object, pointer, spec), "git_revparse_single")
        defer { git_object_free(object) }
        var commit: OpaquePointer?
        try check(git_object_peel(&commit, object, GIT_OBJECT_COMMIT), "git_object_peel")
        defer { git_object_free(commit) }
        return ObjectID(git_object_id(commit)!)
    }

    /// The commit a reference points at, or nil when it does not exist.
    func referenceTarget(_ name: String) throws(GitError) -> ObjectID? {
        var oid = git_oid()
        let rc = git_reference_name_to_id(&oid, pointer, name)
        if rc == GIT_ENOTFOUND.rawValue { return nil }
        try check(rc, "git_reference_name_to_id")
        return ObjectID(oid)
    }

    /// The object a reference name leads to as Git finds it (`main` → `refs/heads/main`, a tag,
    /// `HEAD` through its branch), without reading the object; nil when there is no such
    /// reference. Tells a missing ref from one whose commit is missing (a damaged repository).
    func referencedObject(_ name: String) -> ObjectID? {
        var ref: OpaquePointer?
        guard git_reference_dwim(&ref, pointer, name) == 0 else { return nil }
        defer { git_reference_free(ref) }
        var resolved: OpaquePointer?
        guard git_reference_resolve(&resolved, ref) == 0 else { return nil }
        defer { git_reference_free(resolved) }
        return git_reference_target(resolved).map { ObjectID($0) }
    }

    /// Where a symbolic reference points (HEAD → refs/heads/main), or nil.
    func symbolicTarget(_ name: String) -> String? {
        var ref: OpaquePointer?
        guard git_reference_lookup(&ref, pointer, name) == 0 else { return nil }
        defer { git_reference_free(ref) }
        guard git_reference_type(ref) == GIT_REFERENCE_SYMBOLIC, let t = git_reference_symbolic_target(ref) else { return nil }
        return String(cString: t)
    }

    func setSymbolicReference(_ name: String, to target: String) throws(GitError) {
        var ref: OpaquePointer?
        try check(git_reference_symbolic_create(&ref, pointer, name, target, 1, "capstan: remote HEAD"), "git_reference_symbolic_create")
        git_reference_free(ref)
    }

    func commitInfo(_ id: ObjectID) throws(GitError) -> CommitInfo {
        try guardLooseObject(id)
        var oid = id.oid
        var commit: OpaquePointer?
        try checkReferenced(git_commit_lookup(&commit, pointer, &oid), "git_commit_lookup", id)
        defer { git_commit_free(commit) }
        let tree = ObjectID(git_commit_tree_id(commit)!)
        let summary = git_commit_summary(commit).map { String(cString: $0) } ?? ""
        var author = ""
        if let sig = git_commit_author(commit) {
            author = sig.pointee.name.map { String(cString: $0) } ?? ""
        }
        let time = Date(timeIntervalSince1970: TimeInterval(git_commit_time(commit)))
        return CommitInfo(id: id, tree: tree, summary: summary, author: author, time: time)
    }

    /// True when `commit` has `ancestor` in its history (a fast-forward from `ancestor`).
    func isDescendant(_ commit: ObjectID, of ancestor: ObjectID) throws(GitError) -> Bool {
        if commit == ancestor { return true }
        var c = commit.oid, a = ancestor.oid
        let rc = git_graph_descendant_of(pointer, &c, &a)
        try check(rc, "git_graph_descendant_of")
        return rc == 1
    }

    // MARK: Trees and blobs

    /// The id of the tree or blob at `path` inside `tree` (`""` is the tree itself), or nil.
    func entry(at path: String, in tree: ObjectID) throws(GitError) -> (ObjectID, EntryKind)? {
        if path.isEmpty { return (tree, .tree) }
        try guardLooseObject(tree)
        var oid = tree.oid
        var t: OpaquePointer?
        try checkReferenced(git_tree_lookup(&t, pointer, &oid), "git_tree_lookup", tree)
        defer { git_tree_free(t) }
        var entry: OpaquePointer?
        let rc = git_tree_entry_bypath(&entry, t, path)
        if rc == GIT_ENOTFOUND.rawValue { return nil }
        try check(rc, "git_tree_entry_bypath")
        defer { git_tree_entry_free(entry) }
        return (ObjectID(git_tree_entry_id(entry)!), Self.kind(git_tree_entry_filemode(entry)))
    }

    static func kind(_ mode: git_filemode_t) -> EntryKind {
        switch mode {
        case GIT_FILEMODE_TREE: return .tree
        case GIT_FILEMODE_BLOB_EXECUTABLE: return .executable
        case GIT_FILEMODE_LINK: return .symlink
        case GIT_FILEMODE_COMMIT: return .commit
        default: return .blob
        }
    }

    /// Every entry below `tree`, paths relative to it, reusing the listings of subtrees seen in
    /// `cache` (a subtree with the same id has the same content): after a commit that changes one
    /// folder, only that folder and its parents are read again. `visited` collects the subtree
    /// ids of this walk, so the caller can drop the rest.
    func walk(_ tree: ObjectID, cache: [ObjectID: [TreeEntry]], visited: inout [ObjectID: [TreeEntry]]) throws(GitError) -> [TreeEntry] {
        if let hit = visited[tree] ?? cache[tree] {
            visited[tree] = hit
            return hit
        }
        try guardLooseObject(tree)
        var oid = tree.oid
        var t: OpaquePointer?
        try checkReferenced(git_tree_lookup(&t, pointer, &oid), "git_tree_lookup", tree)
        defer { git_tree_free(t) }
        var out: [TreeEntry] = []
        for i in 0..<git_tree_entrycount(t) {
            guard let entry = git_tree_entry_byindex(t, i) else { continue }
            let raw = git_tree_entry_name(entry)!
            let exact = String(validatingCString: raw)
            let name = exact ?? String(cString: raw)
            // A name that cannot be shown as it is keeps an escaped form for diagnostics.
            let escaped: String? = exact.map { SafeText.isPrintable($0) } == true
                ? nil : SafeText.escaped(bytes: UnsafeRawBufferPointer(start: raw, count: strlen(raw)))
            let kind = Repository.kind(git_tree_entry_filemode(entry))
            let id = ObjectID(git_tree_entry_id(entry)!)
            out.append(TreeEntry(path: name, kind: kind, id: id, escapedPath: escaped))
            if kind == .tree {
                for sub in try walk(id, cache: cache, visited: &visited) {
                    let shown = escaped != nil || sub.escapedPath != nil
                        ? (escaped ?? name) + "/" + (sub.escapedPath ?? sub.path) : nil
                    out.append(TreeEntry(path: name + "/" + sub.path, kind: sub.kind, id: sub.id, escapedPath: shown))
                }
            }
        }
        visited[tree] = out
        return out
    }

    /// The entries whose ids differ between the trees `old` and `new` when both hold the same
    /// paths, each of the same kind (only contents changed): every such entry with its old and
    /// new id, folders included, in pre-order. Nil when the shapes differ (an entry added,
    /// removed, renamed or changed in kind) or more than `limit` entries differ. Reads only the
    /// subtrees whose ids differ.
    func sameShapeChanges(from old: ObjectID, to new: ObjectID, limit: Int) throws(GitError) -> [ShapeChange]? {
        var out: [ShapeChange] = []
        func compare(_ a: ObjectID, _ b: ObjectID, _ prefix: String) throws(GitError) -> Bool {
            try guardLooseObject(a)
            try guardLooseObject(b)
            var oidA = a.oid, oidB = b.oid
            var ta: OpaquePointer?, tb: OpaquePointer?
            try checkReferenced(git_tree_lookup(&ta, pointer, &oidA), "git_tree_lookup", a)
            defer { git_tree_free(ta) }
            try checkReferenced(git_tree_lookup(&tb, pointer, &oidB), "git_tree_lookup", b)
            defer { git_tree_free(tb) }
            let count = git_tree_entrycount(ta)
            guard count == git_tree_entrycount(tb) else { return false }
            for i in 0..<count {
                guard let ea = git_tree_entry_byindex(ta, i), let eb = git_tree_entry_byindex(tb, i) else { return false }
                let mode = git_tree_entry_filemode(ea)
                guard mode == git_tree_entry_filemode(eb), strcmp(git_tree_entry_name(ea), git_tree_entry_name(eb)) == 0 else { return false }
                if git_oid_equal(git_tree_entry_id(ea), git_tree_entry_id(eb)) != 0 { continue }
                let path = prefix + String(cString: git_tree_entry_name(ea))
                let kind = Repository.kind(mode)
                let from = ObjectID(git_tree_entry_id(ea)!), to = ObjectID(git_tree_entry_id(eb)!)
                out.append(ShapeChange(path: path, kind: kind, old: from, new: to))
                guard out.count <= limit else { return false }
                if kind == .tree, try !compare(from, to, path + "/") { return false }
            }
            return true
        }
        if old == new { return [] }
        return try compare(old, new, "") ? out : nil
    }

    /// Every entry below `tree`, depth first, paths relative to it.
    func walk(_ tree: ObjectID) throws(GitError) -> [TreeEntry] {
        var oid = tree.oid
        var t: OpaquePointer?
        try check(git_tree_lookup(&t, pointer, &oid), "git_tree_lookup")
        defer { git_tree_free(t) }
        final class Box { var entries: [TreeEntry] = [] }
        let box = Box()
        let rc = withExtendedLifetime(box) {
            git_tree_walk(t, GIT_TREEWALK_PRE, { root, entry, payload in
                let box = Unmanaged<Box>.fromOpaque(payload!).takeUnretainedValue()
                let name = String(cString: git_tree_entry_name(entry))
                let path = String(cString: root!) + name
                box.entries.append(TreeEntry(path: path, kind: Repository.kind(git_tree_entry_filemode(entry)),
                                             id: ObjectID(git_tree_entry_id(entry)!)))
                return 0
            }, Unmanaged.passUnretained(box).toOpaque())
        }
        try check(rc, "git_tree_walk")
        return box.entries
    }

    /// Whether the object database holds `id` (without reading it: a damaged object is there).
    func contains(_ id: ObjectID) throws(GitError) -> Bool {
        var odb: OpaquePointer?
        try check(git_repository_odb(&odb, pointer), "git_repository_odb")
        defer { git_odb_free(odb) }
        var oid = id.oid
        return git_odb_exists(odb, &oid) == 1
    }

    /// The contents of a blob.
    func blob(_ id: ObjectID) throws(GitError) -> [UInt8] {
        try guardLooseObject(id)
        var oid = id.oid
        var blob: OpaquePointer?
        try checkReferenced(git_blob_lookup(&blob, pointer, &oid), "git_blob_lookup", id)
        defer { git_blob_free(blob) }
        let size = Int(git_blob_rawsize(blob))
        guard size > 0, let raw = git_blob_rawcontent(blob) else { return [] }
        return [UInt8](UnsafeRawBufferPointer(start: raw, count: size))
    }

    /// A blob's size, read from the object header without inflating it.
    func blobSize(_ id: ObjectID) throws(GitError) -> Int {
        try guardLooseObject(id)
        var odb: OpaquePointer?
        try check(git_repository_odb(&odb, pointer), "git_repository_odb")
        defer { git_odb_free(odb) }
        var oid = id.oid
        var size = 0
        var type = GIT_OBJECT_ANY
        try checkReferenced(git_odb_read_header(&size, &type, odb, &oid), "git_odb_read_header", id)
        return size
    }

    // MARK: Diff

    /// Paths that differ between two trees (renames detected).
    func diff(from old: ObjectID?, to new: ObjectID) throws(GitError) -> [PathChange] {
        var oldTree: OpaquePointer?, newTree: OpaquePointer?
        if let old {
            var o = old.oid
            try check(git_tree_lookup(&oldTree, pointer, &o), "git_tree_lookup")
        }
        defer { git_tree_free(oldTree) }
        var n = new.oid
        try check(git_tree_lookup(&newTree, pointer, &n), "git_tree_lookup")
        defer { git_tree_free(newTree) }
        var diff: OpaquePointer?
        try check(git_diff_tree_to_tree(&diff, pointer, oldTree, newTree, nil), "git_diff_tree_to_tree")
        defer { git_diff_free(diff) }
        var findOptions = git_diff_find_options()
        git_diff_find_options_init(&findOptions, UInt32(GIT_DIFF_FIND_OPTIONS_VERSION))
        findOptions.flags = GIT_DIFF_FIND_RENAMES.rawValue
        try check(git_diff_find_similar(diff, &findOptions), "git_diff_find_similar")
        var changes: [PathChange] = []
        for i in 0..<git_diff_num_deltas(diff) {
            guard let delta = git_diff_get_delta(diff, i)?.pointee else { continue }
            let oldPath = delta.old_file.path.map { String(cString: $0) } ?? ""
            let newPath = delta.new_file.path.map { String(cString: $0) } ?? oldPath
            let status: PathChange.Status
            switch delta.status {
            case GIT_DELTA_ADDED: status = .added
            case GIT_DELTA_DELETED: status = .deleted
            case GIT_DELTA_RENAMED: status = .renamed
            case GIT_DELTA_TYPECHANGE: status = .typeChanged
            default: status = .modified
            }
            changes.append(PathChange(status: status, oldPath: oldPath, newPath: newPath))
        }
        return changes
    }
}

extension Repository {
    /// The first branch whose commit or tree cannot be read, if any: a mirror with missing or
    /// damaged packs still has its refs, but they point at nothing.
    func firstUnreadableBranch() -> String? {
        var iterator: OpaquePointer?
        guard git_reference_iterator_glob_new(&iterator, pointer, "refs/heads/*") == 0 else { return "refs/heads/*" }
        defer { git_reference_iterator_free(iterator) }
        var ref: OpaquePointer?
        while git_reference_next(&ref, iterator) == 0 {
            defer { git_reference_free(ref) }
            let name = git_reference_name(ref).map { String(cString: $0) } ?? "?"
            guard let target = git_reference_target(ref) else { continue }
            let id = ObjectID(target)
            guard let info = try? commitInfo(id), (try? entry(at: "", in: info.tree)) != nil else { return name }
            var oid = info.tree.oid
            var tree: OpaquePointer?
            guard git_tree_lookup(&tree, pointer, &oid) == 0 else { return name }
            git_tree_free(tree)
        }
        return nil
    }

    /// Every reference under `prefix` (`refs/`) with the commit it points at (tags peeled).
    func references(under prefix: String = "refs/") throws(GitError) -> [String: ObjectID] {
        var iterator: OpaquePointer?
        try check(git_reference_iterator_glob_new(&iterator, pointer, prefix + "*"), "git_reference_iterator_glob_new")
        defer { git_reference_iterator_free(iterator) }
        var out: [String: ObjectID] = [:]
        var ref: OpaquePointer?
        while git_reference_next(&ref, iterator) == 0 {
            defer { git_reference_free(ref) }
            guard let name = git_reference_name(ref).map({ String(cString: $0) }) else { continue }
            var object: OpaquePointer?
            if git_reference_peel(&object, ref, GIT_OBJECT_COMMIT) == 0 {
                out[name] = ObjectID(git_object_id(object)!)
                git_object_free(object)
            }
        }
        return out
    }
}
