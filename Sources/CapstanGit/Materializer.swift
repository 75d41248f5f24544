import CapstanCore
import Foundation

/// Writes a commit's tree (or one folder of it) into a directory, for steps that need files
/// (training, serving). One directory per tree id under `<stateDir>/trees/`, reused while the id
/// is unchanged, written to a temporary name and renamed into place (a half-written tree is never
/// used). Symlinks that lead outside the tree, by their own text or through other links, and
/// whether or not their final target exists, are refused before anything is written.
public struct Materializer: Sendable {
    public let root: String

    public init(stateDirectory: String) {
        root = (stateDirectory as NSString).appendingPathComponent("trees")
    }

    public struct MaterializeError: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// The directory holding `folder` ("" for everything) of `commit`'s tree.
    public func materialize(_ repository: GitRepository, commit: ObjectID, folder: String = "") async throws -> URL {
        let info = try await repository.commitInfo(commit)
        guard let (tree, kind) = try await repository.entry(at: folder, in: info.tree), kind == .tree else {
            throw MaterializeError(message: "commit \(commit.short) has no folder '\(folder)'")
        }
        let target = URL(fileURLWithPath: root, isDirectory: true).appendingPathComponent(tree.hex, isDirectory: true)
        let fm = FileManager.default
        if fm.fileExists(atPath: target.path) {
            // Mark as recently used for garbage collection.
            try? fm.setAttributes([.modificationDate: Date()], ofItemAtPath: target.path)
            return target
        }
        let entries = try await repository.walk(tree)
        // Check every symlink before writing anything, resolved against the tree as it will be
        // on disk: chains through other links included, and whether or not the final target
        // exists (a step may create it, and writes through the chain land where it resolves).
        var links: [String: String] = [:]
        for entry in entries where entry.kind == .symlink {
            links[entry.path] = String(decoding: try await repository.blob(entry.id), as: UTF8.self)
        }
        for path in links.keys.sorted() {
            switch Self.resolve(path, links: links) {
            case .inside: continue
            case .outside:
                throw MaterializeError(message: "commit \(commit.short): symlink '\(RepoPath.join(folder, path))' points outside the tree ('\(PrintableText.escaped(links[path]!))'\(Self.isDirect(path, links) ? "" : ", through other links")); refusing to write it. Make it a relative link that stays inside \(folder.isEmpty ? "the repository" : "'\(folder)'")")
            case .tooManyLinks:
                throw MaterializeError(message: "commit \(commit.short): symlink '\(RepoPath.join(folder, path))' does not resolve within \(Self.maximumLinks) links (a loop?); refusing to write it. Fix the links")
            }
        }
        try fm.createDirectory(atPath: root, withIntermediateDirectories: true)
        let temporary = URL(fileURLWithPath: root).appendingPathComponent(".\(tree.hex).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        do {
            try fm.createDirectory(at: temporary, withIntermediateDirectories: false)
            for entry in entries {
                let path = temporary.appendingPathComponent(entry.path).path
                switch entry.kind {
                case .tree, .commit:
                    try fm.createDirectory(atPath: path, withIntermediateDirectories: true)
                case .blob, .executable:
                    let bytes = try await repository.blob(entry.id)
                    guard fm.createFile(atPath: path, contents: Data(bytes), attributes: [.posixPermissions: entry.kind == .executable ? 0o755 : 0o644]) else {
                        throw MaterializeError(message: "cannot write \(path)")
                    }
                case .symlink:
                    let link = String(decoding: try await repository.blob(entry.id), as: UTF8.self)
                    try fm.createSymbolicLink(atPath: path, withDestinationPath: link)
                }
            }
            if rename(temporary.path, target.path) != 0 {
                let code = errno
                try? fm.removeItem(at: temporary)
                // Another process materialized the same tree first: theirs is identical.
                guard fm.fileExists(atPath: target.path) else {
                    throw MaterializeError(message: "cannot move \(temporary.path) into place: \(String(cString: strerror(code)))")
                }
            }
        } catch {
            try? fm.removeItem(at: temporary)
            throw error
        }
        return target
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
