import CapstanCore
import Foundation

/// Writes a commit's tree (or one folder of it) into a directory, for steps that need files
/// (training, serving). One directory per tree id under `<stateDir>/trees/`, reused while the id
/// is unchanged, written to a temporary name and renamed into place (a half-written tree is never
/// used). Symlinks that point outside the tree are refused.
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
        // Check every symlink before writing anything.
        for entry in entries where entry.kind == .symlink {
            let link = String(decoding: try await repository.blob(entry.id), as: UTF8.self)
            let parent = (entry.path as NSString).deletingLastPathComponent
            if link.hasPrefix("/") || RepoPath.normalize(RepoPath.join(parent, link)) == nil {
                throw MaterializeError(message: "commit \(commit.short): symlink '\(RepoPath.join(folder, entry.path))' points outside the tree ('\(link)'); refusing to write it")
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
            // Links can leave the tree through each other (a/up -> .., a/out -> up/..): resolve
            // every link on disk, chains included, and refuse any that lands outside.
            let base = temporary.resolvingSymlinksInPath().path
            for entry in entries where entry.kind == .symlink {
                let path = temporary.appendingPathComponent(entry.path).path
                guard let resolved = realpath(path, nil) else { continue }  // dangling: checked lexically above
                let real = String(cString: resolved)
                free(resolved)
                if real != base && !real.hasPrefix(base + "/") {
                    throw MaterializeError(message: "commit \(commit.short): symlink '\(RepoPath.join(folder, entry.path))' resolves outside the tree through other links; refusing to write it")
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
