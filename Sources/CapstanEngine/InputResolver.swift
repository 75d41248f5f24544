import CapstanCore
import CapstanManifests
import Crypto
import Dispatch
import Foundation
import Synchronization

/// Why a training input could not be identified. The message names the path and says what to do.
public struct InputResolverError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable, Equatable {
        /// An input outside the repository is, or contains, a symlink (never followed).
        case symlink
        /// An input outside the repository is, or contains, something that is neither a regular
        /// file nor a folder (a socket, a FIFO, a device).
        case unsupportedEntry
        /// An input outside the repository is not under any of the configured data roots.
        case outsideDataRoots
        /// A file or folder could not be read.
        case unreadable
        /// A file changed while it was being hashed, twice in a row.
        case changedWhileReading
        /// The commit's tree could not be listed.
        case gitFailure
        /// The hash cache in the state database could not be read or written.
        case cacheFailure
    }

    public var code: Code
    public var message: String
    /// The input, file or folder at fault (a repository path or an absolute path).
    public var path: String
    public var underlying: (any Error)?

    public init(code: Code, message: String, path: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.path = path
        self.underlying = underlying
    }

    public var description: String {
        guard let underlying else { return message }
        return "\(message): \(underlying)"
    }
}

extension InputResolverError: ClassifiedError {
    /// A cache or listing failure is the machine's (transient); an input that cannot be
    /// identified needs a change (stalled): a data root, a file put in place, a symlink replaced.
    public var failure: ReconcileFailure {
        switch code {
        case .cacheFailure:
            if let underlying = underlying as? any ClassifiedError { return underlying.failure }
            return ReconcileFailure(.transient, .stateUnavailable, description)
        case .gitFailure:
            return ReconcileFailure(.transient, .sourceUnavailable, description)
        case .changedWhileReading:
            return ReconcileFailure(.transient, .inputUnresolvable, description)
        case .symlink, .unsupportedEntry, .outsideDataRoots, .unreadable:
            return ReconcileFailure(.stalled, .inputUnresolvable, description)
        }
    }
}

// MARK: - Resolver

/// Resolves the training inputs of every model at one commit to their identities, and builds the
/// desired models (description + fingerprint) the planner works from. See docs/fingerprints.md.
///
/// - A repository input is identified by its Git object id at the commit (`git-blob:`,
///   `git-tree:`), from ONE walk of the commit's tree, or — for a folder that holds Capstan
///   manifest files — by `tree-without-manifests:` (`RepositoryTreeIndex`).
/// - An input under a data root is identified by its content, `sha256:` (`ExternalInputHasher`,
///   cached in the state database by size, mtime and inode).
/// - A `uri` input is identified by its declared version, `version:`.
///
/// Call `desiredModels` once per pass. Keep one resolver per repository (as a controller does):
/// over an unchanged commit it reuses the tree index and the folder hashes of the last pass.
public final class InputResolver: Sendable {
    public let source: any SourceRepository
    /// The index of the last tree and the folder identities hashed from it, reused while the
    /// tree and its manifest files stay the same (a controller's passes over an unchanged commit).
    private let last = Mutex<(index: RepositoryTreeIndex, folders: [Int: String])?>(nil)
    /// The models resolved last, in manifest order, with the tree and manifest files they were
    /// resolved at: carried forward to the next tree when what they depend on did not change.
    private let lastModels = Mutex<(tree: String, manifestFiles: Set<String>, models: [DesiredModel])?>(nil)

    private let resolved = Atomic<Int>(0)
    /// How many models were resolved (not carried forward) since this resolver was made.
    public var resolvedModels: Int { resolved.load(ordering: .relaxed) }

    public init(source: any SourceRepository) {
        self.source = source
    }

    /// Every model of `load` (in manifest order) with its training description and fingerprint
    /// at `revision`. Inputs outside the repository are hashed with the cache of `store`.
    /// `changes`: how `revision`'s tree differs from the one resolved last (when the source
    /// knows): a model whose manifest and repository inputs it leaves as they were is carried
    /// forward as it was resolved, and only the others are resolved.
    public func desiredModels(_ load: LoadResult, revision: SourceRevision, store: any StateStore,
                              now: @escaping @Sendable () -> Int64, changes: SourceChanges? = nil) async throws -> [DesiredModel] {
        try await desiredModels(load.manifests, manifestFiles: load.manifestFiles, revision: revision,
                                hasher: ExternalInputHasher(store: store, now: now), changes: changes)
    }

    /// Every model of `manifests` (in manifest order) with its training description and
    /// fingerprint. `manifestFiles`: repository paths of the files that hold Capstan manifests.
    public func desiredModels(_ manifests: ManifestSet, manifestFiles: Set<String>, revision: SourceRevision,
                              hasher: ExternalInputHasher, changes: SourceChanges? = nil) async throws -> [DesiredModel] {
        let models = manifests.models
        // Carried forward: the models resolved at the tree `changes` starts from, where the
        // manifest is the same and no changed file is among (or below) its repository inputs.
        var out: [DesiredModel] = []
        var missing: [Int]
        if let changes, let kept = lastModels.withLock({ $0 }), kept.tree == changes.from, kept.models.count == models.count,
           kept.manifestFiles == manifestFiles {
            out = kept.models
            missing = models.indices.filter { i in out[i].manifest != models[i] || Self.dependsOnChanges(models[i], changes) }
        } else {
            missing = Array(models.indices)
        }
        let identities = try await identities(of: missing.map { models[$0].spec.train?.inputs ?? [] }, revision: revision,
                                              manifestFiles: manifestFiles, dataRoots: manifests.configSpec.dataRoots, hasher: hasher,
                                              changes: changes)
        resolved.add(missing.count, ordering: .relaxed)
        if out.isEmpty { out.reserveCapacity(models.count) }
        for (i, inputs) in zip(missing, identities) {
            let model: DesiredModel
            if let train = models[i].spec.train {
                let training = TrainingDescription(spec: train, inputs: inputs)
                model = DesiredModel(manifest: models[i], training: training, fingerprint: Fingerprint.of(training))
            } else {
                model = DesiredModel(registryOnly: models[i])
            }
            if out.count == models.count { out[i] = model } else { out.append(model) }
        }
        lastModels.withLock { $0 = (revision.tree, manifestFiles, out) }
        return out
    }

    /// Whether a model's identities may differ after `changes`: it has an input outside the
    /// repository (identified by content, which moves without a commit), or one of its
    /// repository inputs is, or holds, a changed file.
    static func dependsOnChanges(_ model: ModelManifest, _ changes: SourceChanges) -> Bool {
        for input in model.spec.train?.inputs ?? [] {
            switch input {
            case .external: return true
            case .repository(let path):
                if changes.files.isEmpty { continue }
                // Inputs are normalized when loaded; one that is not is normalized here.
                if RepoPath.isNormalized(path) {
                    if changes.touches(path) { return true }
                } else {
                    guard let normalized = RepoPath.normalize(path), !changes.touches(normalized) else { return true }
                }
            case .uri: continue
            }
        }
        return false
    }

    /// The identities of each list of inputs, in the same shape. Inputs outside the repository
    /// must lie under one of `dataRoots`.
    public func identities(of inputLists: [[TrainInput]], revision: SourceRevision, manifestFiles: Set<String>,
                           dataRoots: [String], hasher: ExternalInputHasher, changes: SourceChanges? = nil) async throws -> [[InputIdentity]] {
        var needsTree = false
        var external: [String] = []
        var seenExternal = Set<String>()
        for inputs in inputLists {
            for input in inputs {
                switch input {
                case .repository: needsTree = true
                case .external(let path):
                    guard dataRoots.contains(where: { HostPath.isUnder(path, root: $0) }) else {
                        let roots = dataRoots.isEmpty ? "no data roots are configured" : "data roots: " + dataRoots.joined(separator: ", ")
                        throw InputResolverError(
                            code: .outsideDataRoots,
                            message: "input '\(path)' is not under a data root (\(roots)); add its folder to spec.dataRoots in capstan.yaml",
                            path: path)
                    }
                    if seenExternal.insert(path).inserted { external.append(path) }
                case .uri: break
                }
            }
        }

        var index: RepositoryTreeIndex?
        // Folders without manifests cost a hash each: once per tree, however many models list them.
        var memo: [Int: String] = [:]
        if needsTree { (index, memo) = try await treeIndex(revision, manifestFiles: manifestFiles, changes: changes) }
        let externalIdentities = external.isEmpty ? [:] : try await hasher.identities(of: external)

        let identities = inputLists.map { inputs in
            inputs.map { input -> InputIdentity in
                let identity: String
                switch input {
                case .repository(let path):
                    identity = index?.identity(of: path, memo: &memo) ?? InputIdentity.missing
                case .external(let path):
                    identity = externalIdentities[path] ?? InputIdentity.missing
                case .uri(_, let version):
                    identity = "version:" + version
                }
                return InputIdentity(input: input.written, identity: identity)
            }
        }
        if let index {
            last.withLock {
                if $0?.index.tree == index.tree, $0?.index.manifestFiles == index.manifestFiles { $0?.folders = memo }
            }
        }
        return identities
    }

    /// The index of `tree` and the folder identities already known: ONE walk of the tree (cached
    /// by the repository), then one dictionary.
    /// With `changes` from the last tree (the same paths), that tree's index is patched: its
    /// positions are shared, and the folder identities of folders without a changed file are kept.
    func treeIndex(_ revision: SourceRevision, manifestFiles: Set<String>,
                   changes: SourceChanges? = nil) async throws -> (RepositoryTreeIndex, [Int: String]) {
        let kept = last.withLock { $0 }
        if let hit = kept, hit.index.tree == revision.tree, hit.index.manifestFiles == manifestFiles { return hit }
        let entries: [SourceTreeEntry]
        do {
            entries = try await source.entries(of: revision)
        } catch {
            throw InputResolverError(code: .gitFailure, message: "cannot list the tree \(revision.tree.prefix(10)) of the commit",
                                     path: source.displayName, underlying: error)
        }
        if let changes, let kept, kept.index.tree == changes.from, changes.to == revision.tree, kept.index.manifestFiles == manifestFiles,
           let index = RepositoryTreeIndex(patching: kept.index, tree: revision.tree, entries: entries, changes: changes) {
            let folders = kept.folders.filter { position, _ in position >= 0 && !changes.touches(entries[position].path) }
            last.withLock { $0 = (index, folders) }
            return (index, folders)
        }
        let index = RepositoryTreeIndex(tree: revision.tree, entries: entries, manifestFiles: manifestFiles)
        last.withLock { $0 = (index, [:]) }
        return (index, [:])
    }
}

// MARK: - Inputs inside the repository

/// Every entry of one commit's tree by path, and the folders that hold Capstan manifest files:
/// what identifies an input inside the repository, with no further Git access.
public struct RepositoryTreeIndex: Sendable {
    public let tree: String
    /// The walk, pre-order: a folder's entries follow it, contiguously.
    private let entries: [SourceTreeEntry]
    private let positions: [String: Int]
    let manifestFiles: Set<String>
    /// Every folder that holds a manifest file at any depth ("" is the root).
    private let foldersWithManifests: Set<String>

    /// `entries`: `SourceRepository.entries(of:)`; `manifestFiles`: repository paths of the files
    /// that hold Capstan manifests (`LoadResult.manifestFiles`).
    public init(tree: String, entries: [SourceTreeEntry], manifestFiles: Set<String>) {
        self.tree = tree
        self.entries = entries
        var positions: [String: Int] = [:]
        positions.reserveCapacity(entries.count)
        for (i, e) in entries.enumerated() { positions[e.path] = i }
        self.positions = positions
        self.manifestFiles = manifestFiles
        var folders = Set<String>()
        for file in manifestFiles {
            folders.insert("")
            var folder = Substring(file)
            while let slash = folder.lastIndex(of: "/") {
                folder = folder[..<slash]
                if !folders.insert(String(folder)).inserted { break }
            }
        }
        self.foldersWithManifests = folders
    }

    /// The index of a tree with the same paths as `old`'s, in the same order (only contents
    /// changed, as `changes` lists): `old`'s positions and folders are shared. Nil when
    /// `entries` does not line up with `old` (then build it afresh).
    init?(patching old: RepositoryTreeIndex, tree: String, entries: [SourceTreeEntry], changes: SourceChanges) {
        guard entries.count == old.entries.count else { return nil }
        for (path, change) in changes.files {
            guard let i = old.positions[path], entries[i].path == path, entries[i].id == change.new else { return nil }
        }
        self.tree = tree
        self.entries = entries
        positions = old.positions
        manifestFiles = old.manifestFiles
        foldersWithManifests = old.foldersWithManifests
    }

    /// The identity of the file or folder at `path` (relative to the root; `""` or `.` is the
    /// root): `git-blob:<id>` for a file (or a symlink, by the link's text), `git-tree:<id>` for
    /// a folder, `tree-without-manifests:<sha256>` for a folder that holds manifest files,
    /// `git-commit:<id>` for a submodule, `missing` when the commit has nothing there.
    public func identity(of path: String) -> String {
        var memo: [Int: String] = [:]
        return identity(of: path, memo: &memo)
    }

    /// `identity(of:)`, remembering the hashed folders (by position; -1 is the root) in `memo`.
    func identity(of path: String, memo: inout [Int: String]) -> String {
        // Inputs are normalized when loaded: look them up as they are first.
        guard let i = positions[path] else {
            guard let normalized = RepoPath.normalize(path) else { return InputIdentity.missing }
            if normalized.isEmpty { return rootIdentity(memo: &memo) }
            return normalized == path ? InputIdentity.missing : identity(of: normalized, memo: &memo)
        }
        let entry = entries[i]
        switch entry.kind {
        case .file, .executable, .symlink:
            return "git-blob:" + entry.id
        case .submodule:
            return "git-commit:" + entry.id
        case .folder:
            guard foldersWithManifests.contains(entry.path) else { return "git-tree:" + entry.id }
            if let hit = memo[i] { return hit }
            let prefix = entry.path + "/"
            var end = i + 1
            while end < entries.count, entries[end].path.utf8.starts(with: prefix.utf8) { end += 1 }
            let identity = withoutManifests(folder: entry.path, (i + 1)..<end)
            memo[i] = identity
            return identity
        }
    }

    private func rootIdentity(memo: inout [Int: String]) -> String {
        guard foldersWithManifests.contains("") else { return "git-tree:" + tree }
        if let hit = memo[-1] { return hit }
        let identity = withoutManifests(folder: "", entries.indices)
        memo[-1] = identity
        return identity
    }

    /// `tree-without-manifests:<hex>`: the SHA-256 over every entry below the folder that is
    /// not a folder and not a manifest file, sorted by path relative to the folder (UTF-8 byte
    /// order), each as `u64 length + path`, `u64 length + Git mode`, `u64 length + object id`,
    /// after the header `u64 length + "tree-without-manifests/1"`. Subfolders do not appear
    /// themselves (their ids would change with the manifests inside them); their files do.
    private func withoutManifests(folder: String, _ range: Range<Int>) -> String {
        let skip = folder.isEmpty ? 0 : folder.utf8.count + 1
        var kept: [Int] = []
        kept.reserveCapacity(range.count)
        for i in range where entries[i].kind != .folder && !manifestFiles.contains(entries[i].path) { kept.append(i) }
        // A well-formed Git tree lists its files in the byte order of their full paths already.
        let inOrder = zip(kept, kept.dropFirst()).allSatisfy { entries[$0].path.utf8.lexicographicallyPrecedes(entries[$1].path.utf8) }
        if !inOrder { kept.sort { entries[$0].path.utf8.lexicographicallyPrecedes(entries[$1].path.utf8) } }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(32 + kept.count * 112)
        func text<C: Collection<UInt8>>(_ s: C) {
            withUnsafeBytes(of: UInt64(s.count).bigEndian) { bytes.append(contentsOf: $0) }
            bytes.append(contentsOf: s)
        }
        text("tree-without-manifests/1".utf8)
        for i in kept {
            let entry = entries[i]
            text(entry.path.utf8.dropFirst(skip))
            text(entry.kind.gitMode.utf8)
            text(entry.id.utf8)
        }
        return "tree-without-manifests:" + Hex.string(SHA256.hash(data: bytes))
    }

}

// MARK: - Inputs outside the repository

private func posixRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int {
    #if canImport(Glibc)
    Glibc.read(fd, buffer, count)
    #else
    Darwin.read(fd, buffer, count)
    #endif
}

/// Content hashes of inputs under data roots, `sha256:<hex>`, cached per file in the state
/// database's `input_hashes` table.
///
/// A file's digest is the SHA-256 of its bytes. A folder's is the SHA-256 over its files sorted
/// by path relative to the folder (UTF-8 byte order), each as `u64 length + path` and
/// `u64 length + the file's hex digest`, after the header `u64 length + "folder/1"`; empty
/// subfolders do not count. Symlinks are never followed: an input that is or contains one is
/// refused, as is anything that is neither a regular file nor a folder.
///
/// A cached digest is reused when the file's size, mtime (nanoseconds) and inode all match the
/// row, and the digest was computed at least `racyWindow` after that mtime (otherwise a write in
/// the same clock tick as the hashing could go unnoticed, as in Git's "racy" index entries).
/// Anything else is read again and the row replaced. Rows of files no longer present under a
/// hashed folder, or of inputs now missing, are deleted.
public struct ExternalInputHasher: Sendable {
    public let store: any StateStore
    let now: @Sendable () -> Int64
    /// Milliseconds between a file's mtime and its hashing below which the digest is not trusted.
    public static let racyWindow: Int64 = 2_000

    public init(store: any StateStore, now: @escaping @Sendable () -> Int64) {
        self.store = store
        self.now = now
    }

    /// Absolute path → `sha256:<hex>`, or `missing` when nothing is there. Files are listed and
    /// read on a dispatch queue: hashing must not hold a thread of the cooperative pool.
    public func identities(of paths: [String]) async throws -> [String: String] {
        // 1. What is there, without reading any content.
        let listings: [String: Listing] = try await Self.offPool {
            var listings: [String: Listing] = [:]
            for path in paths where listings[path] == nil { listings[path] = try Self.list(path) }
            return listings
        }
        var files: [FileStat] = []
        for listing in listings.values {
            switch listing {
            case .missing: break
            case .file(let f): files.append(f)
            case .folder(let fs): files += fs
            }
        }

        // 2. The cached digests of those files, and the rows of files that are gone: rows under
        // a hashed folder that it no longer holds, rows of inputs now missing.
        let rows = try await store.inputHashes(files.map(\.path))
        var cached: [String: String] = [:]
        for f in files {
            guard let row = rows[f.path] else { continue }
            if row.size == f.size, row.mtimeNanoseconds == f.mtimeNanoseconds, row.inode == f.inode,
               row.checkedAt - f.mtimeNanoseconds / 1_000_000 >= Self.racyWindow {
                cached[f.path] = row.digest
            }
        }
        var gone: [String] = []
        for (path, listing) in listings.sorted(by: { $0.key < $1.key }) {
            switch listing {
            case .file: continue
            case .missing:
                gone += try await store.inputHashPaths(atOrBelow: path)
            case .folder(let present):
                let kept = Set(present.map(\.path))
                gone += try await store.inputHashPaths(atOrBelow: path).filter { !kept.contains($0) }
            }
        }

        // 3. Hash the rest.
        let missing = files.filter { cached[$0.path] == nil }
        let fresh: [(FileStat, String)] = try await Self.offPool { try missing.map(Self.hash) }
        var digests = cached
        for (stat, digest) in fresh { digests[stat.path] = digest }

        // 4. Remember them, and forget what is gone (through the pass's store: a pass that lost
        // its lease does not write the cache either).
        if !fresh.isEmpty || !gone.isEmpty {
            var changes = StateChanges("update the input hash cache")
            let at = now()
            for (f, digest) in fresh {
                changes.cacheInputHash(InputHashRecord(path: f.path, size: f.size, mtimeNanoseconds: f.mtimeNanoseconds, inode: f.inode,
                                                       digest: digest, checkedAt: at))
            }
            for path in gone { changes.forgetInputHash(path) }
            try await store.commit(changes)
        }

        // 5. Compose.
        var out: [String: String] = [:]
        for (path, listing) in listings {
            switch listing {
            case .missing:
                out[path] = InputIdentity.missing
            case .file(let f):
                out[path] = "sha256:" + digests[f.path]!
            case .folder(let fs):
                var bytes: [UInt8] = []
                func text(_ s: String) {
                    withUnsafeBytes(of: UInt64(s.utf8.count).bigEndian) { bytes.append(contentsOf: $0) }
                    bytes.append(contentsOf: s.utf8)
                }
                text("folder/1")
                for f in fs {
                    text(String(f.path.utf8.dropFirst(path.utf8.count + 1))!)
                    text(digests[f.path]!)
                }
                out[path] = "sha256:" + Hex.string(SHA256.hash(data: bytes))
            }
        }
        return out
    }

    /// Runs blocking file work on a dispatch queue.
    static func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .userInitiated).async {
                do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
            }
        }
    }

    // MARK: File system

    struct FileStat: Equatable, Sendable {
        var path: String
        var size: Int64
        var mtimeNanoseconds: Int64
        var inode: Int64
    }

    enum Listing: Sendable {
        case missing
        case file(FileStat)
        /// Every regular file below the folder, sorted by path (UTF-8 byte order).
        case folder([FileStat])
    }

    static func lstatus(_ path: String) throws -> stat? {
        var info = stat()
        if lstat(path, &info) == 0 { return info }
        let code = errno
        if code == ENOENT || code == ENOTDIR { return nil }
        throw InputResolverError(code: .unreadable, message: "cannot read '\(path)': \(String(cString: strerror(code)))", path: path)
    }

    static func fileStat(_ path: String, _ info: stat) -> FileStat {
        #if canImport(Darwin)
        let mtime = Int64(info.st_mtimespec.tv_sec) * 1_000_000_000 + Int64(info.st_mtimespec.tv_nsec)
        #else
        let mtime = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
        #endif
        return FileStat(path: path, size: Int64(info.st_size), mtimeNanoseconds: mtime, inode: Int64(bitPattern: UInt64(info.st_ino)))
    }

    static func refuse(_ path: String, _ info: stat, input: String) -> InputResolverError {
        if info.st_mode & S_IFMT == S_IFLNK {
            return InputResolverError(
                code: .symlink,
                message: "'\(path)' is a symlink; Capstan does not follow symlinks in training inputs (input '\(input)'). Replace it with the file or folder it points to, or list that path as the input",
                path: path)
        }
        return InputResolverError(
            code: .unsupportedEntry,
            message: "'\(path)' is neither a regular file nor a folder (input '\(input)'); training inputs may hold only files and folders",
            path: path)
    }

    static func list(_ path: String) throws -> Listing {
        guard let info = try lstatus(path) else { return .missing }
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            return .file(fileStat(path, info))
        case S_IFDIR:
            var files: [FileStat] = []
            try walk(path, input: path, into: &files)
            files.sort { $0.path.utf8.lexicographicallyPrecedes($1.path.utf8) }
            return .folder(files)
        default:
            throw refuse(path, info, input: path)
        }
    }

    static func walk(_ folder: String, input: String, into files: inout [FileStat]) throws {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: folder)
        } catch {
            throw InputResolverError(code: .unreadable, message: "cannot list the folder '\(folder)' (input '\(input)')",
                                     path: folder, underlying: error)
        }
        for name in names {
            let path = folder + "/" + name
            guard let info = try lstatus(path) else { continue } // removed while listing
            switch info.st_mode & S_IFMT {
            case S_IFREG: files.append(fileStat(path, info))
            case S_IFDIR: try walk(path, input: input, into: &files)
            default: throw refuse(path, info, input: input)
            }
        }
    }

    /// Reads `file` and returns its SHA-256 with the status it had while read; reads again once
    /// when it changed meanwhile.
    static func hash(_ file: FileStat) throws -> (FileStat, String) {
        for _ in 0..<2 {
            let fd = open(file.path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
            guard fd >= 0 else {
                let code = errno
                if code == ELOOP, let info = try? lstatus(file.path) { throw refuse(file.path, info, input: file.path) }
                throw InputResolverError(code: .unreadable, message: "cannot read '\(file.path)': \(String(cString: strerror(code)))",
                                         path: file.path)
            }
            defer { close(fd) }
            var before = stat()
            guard fstat(fd, &before) == 0 else {
                throw InputResolverError(code: .unreadable, message: "cannot read '\(file.path)': \(String(cString: strerror(errno)))",
                                         path: file.path)
            }
            guard before.st_mode & S_IFMT == S_IFREG else { throw refuse(file.path, before, input: file.path) }
            var hasher = SHA256()
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                let n = buffer.withUnsafeMutableBytes { posixRead(fd, $0.baseAddress, $0.count) }
                if n == 0 { break }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw InputResolverError(code: .unreadable,
                                             message: "cannot read '\(file.path)': \(String(cString: strerror(errno)))", path: file.path)
                }
                hasher.update(data: buffer[0..<n])
            }
            var after = stat()
            guard fstat(fd, &after) == 0 else {
                throw InputResolverError(code: .unreadable, message: "cannot read '\(file.path)': \(String(cString: strerror(errno)))",
                                         path: file.path)
            }
            let status = fileStat(file.path, before)
            if status == fileStat(file.path, after) {
                return (status, Hex.string(hasher.finalize()))
            }
        }
        throw InputResolverError(code: .changedWhileReading,
                                 message: "'\(file.path)' kept changing while Capstan hashed it; run again once whatever writes it is done",
                                 path: file.path)
    }
}
