import CapstanCore
import Foundation

/// Manifests read from a folder on disk (a working tree, or any folder of YAML files).
/// File identity is size + modification time + inode, so the parse cache notices edits.
public struct DirectoryManifestSource: ManifestSource {
    public let root: URL
    public let displayName: String

    public init(root: String) {
        self.root = URL(fileURLWithPath: root, isDirectory: true).standardizedFileURL
        self.displayName = "folder \(root)"
    }

    private func url(_ path: String) -> URL {
        path.isEmpty ? root : root.appendingPathComponent(path)
    }

    public func yamlFiles(under folder: String) async throws -> [ManifestFile] {
        var out: [ManifestFile] = []
        try walk(folder, into: &out)
        return out.sorted { $0.path < $1.path }
    }

    private func walk(_ folder: String, into out: inout [ManifestFile]) throws {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: url(folder).path)
        } catch {
            throw ManifestSourceError(source: displayName, path: folder.isEmpty ? "." : folder,
                                      message: "cannot list folder: \((error as NSError).localizedDescription)")
        }
        for name in names.sorted() where !name.hasPrefix(".") {
            let path = RepoPath.join(folder, name)
            var st = stat()
            guard lstat(url(path).path, &st) == 0 else { continue }
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                try walk(path, into: &out)
            case S_IFREG, S_IFLNK:
                guard name.hasSuffix(".yaml") || name.hasSuffix(".yml") else { continue }
                // Follow a symlinked file only when it resolves to a regular file.
                if st.st_mode & S_IFMT == S_IFLNK {
                    guard stat(url(path).path, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { continue }
                }
                out.append(ManifestFile(path: path, size: Int(st.st_size), identity: Self.identity(st)))
            default:
                continue
            }
        }
    }

    static func identity(_ st: stat) -> String {
        "\(st.st_dev):\(st.st_ino):\(st.st_size):\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
    }

    public func file(at path: String) async throws -> ManifestFile? {
        var st = stat()
        guard stat(url(path).path, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return nil }
        return ManifestFile(path: path, size: Int(st.st_size), identity: Self.identity(st))
    }

    public func read(_ file: ManifestFile) async throws -> [UInt8] {
        do {
            let data = try Data(contentsOf: url(file.path))
            return [UInt8](data)
        } catch {
            throw ManifestSourceError(source: displayName, path: file.path,
                                      message: "cannot read file: \((error as NSError).localizedDescription)")
        }
    }

    public func kind(of path: String) async throws -> PathKind {
        var st = stat()
        guard stat(url(path).path, &st) == 0 else { return .missing }
        switch st.st_mode & S_IFMT {
        case S_IFREG: return .file
        case S_IFDIR: return .directory
        default: return .other
        }
    }
}
