import CapstanCore
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writes a commit's tree (or one folder of it) into a directory, for steps that need files
/// (training, serving). One directory per tree id under `<stateDir>/trees/`, reused while the id
/// is unchanged, written to a temporary name and renamed into place (a half-written tree is never
/// used). Symlinks that lead outside the tree, by their own text or through other links, and
/// whether or not their final target exists, are refused before anything is written.
///
/// **A materialized tree is shared and read-only.** Once renamed into place, `<stateDir>/trees/<tree
/// id>` is never written again, so every step of every pass over that tree (and every process
/// sharing the state folder) can use the same folder:
/// - the materializer writes only its temporary folder; a later call for the same tree id returns
///   the folder as it is, touching nothing but the folder's own modification time (it marks the
///   tree as used for `collectGarbage`). Two callers materializing the same tree at once each
///   write their own temporary folder; the first rename wins and the other copy is removed (their
///   contents are the same: a tree id names its content);
/// - its users only read it: a step that must write (a training's working folder, its outputs)
///   copies what it needs out of it, its working folder and its declared inputs, into a folder of
///   its own, and runs there. A step never runs with its working folder inside a shared tree, and
///   nothing links a file of the tree into a folder a step may write (a hard link shares the file:
///   a write through it would change the tree for everyone);
/// - it is removed only by `collectGarbage`, whose caller keeps the trees still in use.
///
/// Files keep Git's modes (0644, 0755): the contract is Capstan's, not enforced by the file
/// system.
public struct Materializer: Sendable {
    public let root: String

    public init(stateDirectory: String) {
        root = (stateDirectory as NSString).appendingPathComponent("trees")
    }

    /// Why a tree could not be written.
    public struct MaterializeError: Error, Sendable, CustomStringConvertible {
        public enum Kind: Sendable, Equatable {
            /// The tree cannot be written safely (a symlink that leads outside it, or a loop): the
            /// commit must change.
            case unsafeTree
            /// The commit has no such folder.
            case noFolder
            /// Writing into the state folder failed (a full disk, permissions): may pass later.
            case fileSystem
        }

        public var kind: Kind
        public var message: String
        /// The operating system's error (`errno`) of a `.fileSystem` failure.
        public var systemError: Int32?

        public init(kind: Kind, message: String, systemError: Int32? = nil) {
            self.kind = kind
            self.message = message
            self.systemError = systemError
        }

        public var description: String { message }
    }

    /// The directory holding `folder` ("" for everything) of `commit`'s tree. Blobs are read and
    /// files written on the repository's own queue, off the cooperative pool.
    public func materialize(_ repository: GitRepository, commit: ObjectID, folder: String = "") async throws -> URL {
        let info = try await repository.commitInfo(commit)
        guard let (tree, kind) = try await repository.entry(at: folder, in: info.tree), kind == .tree else {
            throw MaterializeError(kind: .noFolder, message: "commit \(commit.short) has no folder '\(folder)'")
        }
        let target = URL(fileURLWithPath: root, isDirectory: true).appendingPathComponent(tree.hex, isDirectory: true)
        if FileManager.default.fileExists(atPath: target.path) {
            // Mark as recently used for garbage collection.
            try? FileManager.default.setAttributes([.modificationDate: Date()], ofItemAtPath: target.path)
            return target
        }
        let entries = try await repository.walk(tree)
        let root = self.root
        try await repository.withRepository { r in
            try Self.writeTree(entries, of: tree, to: target, root: root, commit: commit, folder: folder, from: r)
        }
        return target
    }

    /// The file `blob` written once, read-only, as `<root>/blobs/<blob id>` (`-x` for an
    /// executable one): what a step that needs one file of a commit copies, without writing the
    /// commit's whole tree.
    public func materializeFile(_ repository: GitRepository, blob: ObjectID, executable: Bool) async throws -> String {
        let folder = (root as NSString).appendingPathComponent("blobs")
        let target = folder + "/" + blob.hex + (executable ? "-x" : "")
        if FileManager.default.fileExists(atPath: target) { return target }
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        } catch {
            throw Self.fileSystemError("create the folder of materialized files \(folder)", error: error)
        }
        let temporary = folder + "/.\(blob.hex).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let bytes = try await repository.blob(blob)
        do {
            try Self.writeFile(temporary, bytes, mode: executable ? 0o555 : 0o444)
            // Another process may have written the same blob first: theirs is identical.
            guard rename(temporary, target) == 0 else { throw Self.systemError("move into place", target) }
        } catch {
            unlink(temporary)
            if FileManager.default.fileExists(atPath: target) { return target }
            throw error
        }
        return target
    }

    /// Checks the tree's symlinks, then writes `entries` to a temporary folder under `root` and
    /// renames it to `target`.
    private static func writeTree(_ entries: [TreeEntry], of tree: ObjectID, to target: URL, root: String, commit: ObjectID,
                              folder: String, from repository: Repository) throws {
        // Check every symlink before writing anything, resolved against the tree as it will be
        // on disk: chains through other links included, and whether or not the final target
        // exists (a step may create it, and writes through the chain land where it resolves).
        var links: [String: String] = [:]
        for entry in entries where entry.kind == .symlink {
            links[entry.path] = String(decoding: try repository.blob(entry.id), as: UTF8.self)
        }
        for path in links.keys.sorted() {
            switch resolve(path, links: links) {
            case .inside: continue
            case .outside:
                throw MaterializeError(kind: .unsafeTree, message: "commit \(commit.short): symlink '\(RepoPath.join(folder, path))' points outside the tree ('\(PrintableText.escaped(links[path]!))'\(isDirect(path, links) ? "" : ", through other links")); refusing to write it. Make it a relative link that stays inside \(folder.isEmpty ? "the repository" : "'\(folder)'")")
            case .tooManyLinks:
                throw MaterializeError(kind: .unsafeTree, message: "commit \(commit.short): symlink '\(RepoPath.join(folder, path))' does not resolve within \(maximumLinks) links (a loop?); refusing to write it. Fix the links")
            }
        }
        let fm = FileManager.default
        do {
            try fm.createDirectory(atPath: root, withIntermediateDirectories: true)
        } catch {
            throw fileSystemError("create the folder of materialized trees \(root)", error: error)
        }
        let temporary = (root as NSString).appendingPathComponent(".\(tree.hex).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        do {
            try make(temporary, "create")
            for entry in entries {
                let path = temporary + "/" + entry.path
                switch entry.kind {
                case .tree, .commit:
                    try make(path, "create")
                case .blob, .executable:
                    try writeFile(path, try repository.blob(entry.id), mode: entry.kind == .executable ? 0o755 : 0o644)
                case .symlink:
                    guard symlink(links[entry.path]!, path) == 0 else { throw systemError("create the symlink", path) }
                }
            }
            if rename(temporary, target.path) != 0 {
                let code = errno
                // Another process materialized the same tree first: theirs is identical.
                guard fm.fileExists(atPath: target.path) else {
                    throw MaterializeError(kind: .fileSystem, message: "cannot move \(temporary) into place: \(String(cString: strerror(code)))\(advice(code))",
                                           systemError: code)
                }
                try? fm.removeItem(atPath: temporary)
            }
        } catch {
            try? fm.removeItem(atPath: temporary)
            throw error
        }
    }

    private static func make(_ path: String, _ what: String) throws {
        guard mkdir(path, 0o755) == 0 else { throw systemError("\(what) the folder", path) }
    }

    /// Creates `path` (it must not exist) with `bytes`, mode `mode` whatever the umask.
    private static func writeFile(_ path: String, _ bytes: [UInt8], mode: mode_t) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw systemError("create", path) }
        defer { close(fd) }
        guard fchmod(fd, mode) == 0 else { throw systemError("set the mode of", path) }
        var written = 0
        try bytes.withUnsafeBytes { buffer in
            while written < buffer.count {
                let n = write(fd, buffer.baseAddress! + written, buffer.count - written)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw systemError("write", path)
                }
                written += n
            }
        }
    }

    /// The failure of the system call that just failed (reads `errno` at once).
    private static func systemError(_ what: String, _ path: String) -> MaterializeError {
        let code = errno
        return MaterializeError(kind: .fileSystem, message: "cannot \(what) \(path): \(String(cString: strerror(code)))\(advice(code))",
                                systemError: code)
    }

    private static func fileSystemError(_ what: String, error: any Error) -> MaterializeError {
        let code = SystemError.code(of: error)
        return MaterializeError(kind: .fileSystem, message: "cannot \(what): \(SystemError.describe(error))\(advice(code))", systemError: code)
    }

    private static func advice(_ code: Int32?) -> String {
        SystemError.isDiskFull(code) ? "; the disk is full: free space in the state folder (materialized trees are under trees/, mirrors under sources/) or give it more" : ""
    }

    /// Where a path of the tree leads once written, following its symlinks.
    enum Resolution: Equatable { case inside, outside, tooManyLinks }

    /// The most links one path may go through (Linux's MAXSYMLINKS).
    static let maximumLinks = 40

    /// Resolves `path` (relative to the tree's root) as the kernel will once the tree is written,
    /// with `links` (every symlink of the tree: path → link text) followed wherever they occur,
    /// chains included. A component that is not a link is taken as it is, whether or not it
    /// exists: a dangling final target stays where the chain led. `.outside` when an absolute
    /// link or a `..` leaves the root.
    static func resolve(_ path: String, links: [String: String]) -> Resolution {
        var resolved: [Substring] = []
        var pending: [Substring] = path.split(separator: "/").reversed()
        var followed = 0
        while let part = pending.popLast() {
            switch part {
            case ".": continue
            case "..":
                if resolved.isEmpty { return .outside }
                resolved.removeLast()
            default:
                let candidate = (resolved + [part]).joined(separator: "/")
                guard let target = links[candidate] else {
                    resolved.append(part)
                    continue
                }
                followed += 1
                if followed > maximumLinks { return .tooManyLinks }
                if target.hasPrefix("/") { return .outside }
                // Relative to the link's folder, which is `resolved`.
                pending.append(contentsOf: target.split(separator: "/").reversed())
            }
        }
        return .inside
    }

    /// Whether the link at `path` leaves the tree by its own text, without other links.
    static func isDirect(_ path: String, _ links: [String: String]) -> Bool {
        let link = links[path] ?? ""
        return link.hasPrefix("/") || RepoPath.normalize(RepoPath.join((path as NSString).deletingLastPathComponent, link)) == nil
    }

    /// Removes materialized trees not in `keep` that were last used before `cutoff`, and any
    /// temporary leftovers of interrupted runs. Returns how many were removed.
    @discardableResult
    public func collectGarbage(keep: Set<ObjectID> = [], unusedSince cutoff: Date) -> Int {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: root) else { return 0 }
        var removed = 0
        for name in names {
            let path = (root as NSString).appendingPathComponent(name)
            let attributes = try? fm.attributesOfItem(atPath: path)
            let modified = attributes?[.modificationDate] as? Date ?? .distantPast
            let isTemporary = name.hasPrefix(".") && name.contains(".tmp-")
            if let id = ObjectID(hex: name), keep.contains(id) { continue }
            if modified < cutoff || (isTemporary && modified < Date().addingTimeInterval(-3600)) {
                if (try? fm.removeItem(atPath: path)) != nil { removed += 1 }
            }
        }
        return removed
    }
}
