import CapstanCore
import Foundation

/// Manifests read from a folder on disk (a working tree, or any folder of YAML files).
/// File identity is device + inode + size + modification time, so the parse cache notices edits.
///
/// The folder's content is untrusted (a pull request's checkout): nothing outside it is ever
/// read. Symlinks are resolved component by component against the root (`LinkResolver`): one
/// that stays inside is followed and its file offered under its real path, once; one that leaves
/// the root, leads into a hidden path (`.git/config`), dangles or loops is offered as a refusal,
/// whatever its name, and never read. FIFOs, sockets and devices named like manifests are refused
/// (never opened), so are names that are not printable UTF-8, and nested repositories are not
/// entered. A file is opened without following links and read only when it is still the regular
/// file that was listed, and only up to the size limit.
public struct DirectoryManifestSource: ManifestSource {
    public let root: URL
    public let displayName: String
    /// The root as given, for system calls.
    private let rootPath: String

    public init(root: String) {
        self.root = URL(fileURLWithPath: root, isDirectory: true).standardizedFileURL
        self.displayName = "folder \(root)"
        var path = self.root.path
        while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
        self.rootPath = path
    }

    /// The absolute path of `path` (relative, or "" for the root).
    private func absolute(_ path: String) -> String {
        path.isEmpty ? rootPath : (rootPath == "/" ? "/" + path : rootPath + "/" + path)
    }

    // MARK: Listing

    public func yamlFiles(under folder: String) async throws -> [ManifestFile] {
        var walk = Walk()
        switch resolve(folder) {
        case .found(let real, .directory):
            try self.walk(real, &walk)
        case .found(_, .submodule):
            walk.out.append(ManifestFile(refused: folder, .submodule))
        case .refused(let refusal):
            walk.out.append(ManifestFile(refused: folder, refusal))
        case .found, .missing:
            throw ManifestSourceError(source: displayName, path: folder.isEmpty ? "." : folder, message: "cannot list folder: not a folder")
        }
        var seen = Set<String>()
        return walk.out.filter { seen.insert($0.path).inserted }.sorted { $0.path < $1.path }
    }

    private struct Walk {
        var out: [ManifestFile] = []
        /// Real folders already walked (a folder reached through links is walked once).
        var folders = Set<String>()
    }

    private func walk(_ folder: String, _ walk: inout Walk) throws {
        guard walk.folders.insert(folder).inserted else { return }
        for raw in try entries(of: folder) {
            var st = stat()
            let rawPath = Array(absolute(folder).utf8) + [UInt8(ascii: "/")] + raw
            guard Self.lstatBytes(rawPath, &st) else { continue }
            let type = st.st_mode & S_IFMT
            guard let name = String(validating: raw, as: UTF8.self), SafeText.isPrintable(name) else {
                // A name that cannot be shown: refused when it could hold manifests.
                if type == S_IFDIR || type == S_IFLNK || Self.isYAML(raw) {
                    walk.out.append(ManifestFile(refused: RepoPath.join(folder, SafeText.escaped(bytes: raw)), .unsafeName))
                }
                continue
            }
            let path = RepoPath.join(folder, name)
            switch type {
            case S_IFDIR:
                if isNestedRepository(path) {
                    walk.out.append(ManifestFile(refused: path, .submodule))
                } else {
                    try self.walk(path, &walk)
                }
            case S_IFREG:
                if Self.isYAML(raw) { walk.out.append(ManifestFile(path: path, size: Int(st.st_size), identity: Self.identity(st))) }
            case S_IFLNK:
                switch resolve(path) {
                case .found(let real, _) where !SafeText.isPrintable(real):
                    walk.out.append(ManifestFile(refused: path, .unsafeName))
                case .found(let real, .file):
                    guard Self.isYAML(raw) else { continue }
                    var target = stat()
                    guard lstat(absolute(real), &target) == 0 else { continue }
                    walk.out.append(ManifestFile(path: real, size: Int(target.st_size), identity: Self.identity(target)))
                case .found(let real, .directory):
                    try self.walk(real, &walk)
                case .found(_, .submodule):
                    walk.out.append(ManifestFile(refused: path, .submodule))
                case .found(_, .special(let kind)):
                    if Self.isYAML(raw) { walk.out.append(ManifestFile(refused: path, .notRegularFile(kind: kind))) }
                case .refused(let refusal):
                    walk.out.append(ManifestFile(refused: path, refusal))
                case .found, .missing:
                    walk.out.append(ManifestFile(refused: path, .symlinkBroken(target: "")))
                }
            default:
                if Self.isYAML(raw) { walk.out.append(ManifestFile(refused: path, .notRegularFile(kind: Self.kindName(type)))) }
            }
        }
    }

    /// The names in a folder as bytes (a name need not be UTF-8), hidden ones left out, sorted.
    private func entries(of folder: String) throws -> [[UInt8]] {
        guard let dir = opendir(absolute(folder)) else {
            let reason = String(cString: strerror(errno))
            throw ManifestSourceError(source: displayName, path: folder.isEmpty ? "." : folder, message: "cannot list folder: \(reason)")
        }
        defer { closedir(dir) }
        var names: [[UInt8]] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: &entry.pointee.d_name) { buffer in
                Array(buffer.prefix { $0 != 0 })
            }
            guard let first = name.first, first != UInt8(ascii: ".") else { continue }
            names.append(name)
        }
        return names.sorted { $0.lexicographicallyPrecedes($1) }
    }

    private static func lstatBytes(_ path: [UInt8], _ st: inout stat) -> Bool {
        (path + [0]).withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { systemLstat($0.baseAddress!, &st) }
        }
    }

    static func isYAML(_ name: [UInt8]) -> Bool {
        name.count > 5 && (name.reversed().starts(with: ".yaml".utf8.reversed()) || name.reversed().starts(with: ".yml".utf8.reversed()))
    }

    static func kindName(_ type: mode_t) -> String {
        switch type {
        case S_IFIFO: return "FIFO"
        case S_IFSOCK: return "socket"
        case S_IFCHR: return "character device"
        case S_IFBLK: return "block device"
        default: return "special file"
        }
    }

    static func identity(_ st: stat) -> String {
        "\(st.st_dev):\(st.st_ino):\(st.st_size):\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
    }

    // MARK: Resolution

    /// `path` resolved inside the root (symlinks followed while they stay in it).
    private func resolve(_ path: String, throughLinks: Bool = true) -> LinkResolver.Outcome {
        LinkResolver.resolve(path, throughLinks: throughLinks, lookup: node)
    }

    /// What is at `path` (relative), without following it.
    private func node(_ path: String) -> LinkResolver.Node {
        var st = stat()
        guard lstat(absolute(path), &st) == 0 else { return .missing }
        switch st.st_mode & S_IFMT {
        case S_IFREG: return .file
        case S_IFDIR: return !path.isEmpty && isNestedRepository(path) ? .submodule : .directory
        case S_IFLNK: return .symlink(target: readLink(path))
        case let type: return .special(Self.kindName(type))
        }
    }

    /// A folder with its own `.git` (a checked-out submodule, a nested clone).
    private func isNestedRepository(_ path: String) -> Bool {
        var st = stat()
        return lstat(absolute(path) + "/.git", &st) == 0
    }

    /// A link's text, nil when it is too long or not UTF-8.
    private func readLink(_ path: String) -> String? {
        var buffer = [CChar](repeating: 0, count: LinkResolver.maxTargetBytes + 1)
        let count = readlink(absolute(path), &buffer, buffer.count)
        guard count >= 0, count <= LinkResolver.maxTargetBytes else { return nil }
        return String(validating: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public func file(at path: String) async throws -> ManifestFile? {
        switch resolve(path) {
        case .found(let real, _) where !SafeText.isPrintable(real):
            return ManifestFile(refused: path, .unsafeName)
        case .found(let real, .file):
            var st = stat()
            guard lstat(absolute(real), &st) == 0 else { return nil }
            return ManifestFile(path: real, size: Int(st.st_size), identity: Self.identity(st))
        case .found(_, .special(let kind)):
            return ManifestFile(refused: path, .notRegularFile(kind: kind))
        case .refused(let refusal):
            return ManifestFile(refused: path, refusal)
        case .found, .missing:
            return nil
        }
    }

    public func kind(of path: String) async throws -> PathKind {
        resolve(path, throughLinks: false).pathKind
    }

    // MARK: Reading

    /// Reads at most this much through `read(_:)`, which has no limit of its own.
    static let readCap = 64 << 20

    public func read(_ file: ManifestFile) async throws -> [UInt8] {
        switch openListed(file, limit: Self.readCap) {
        case .bytes(let bytes): return bytes
        case .tooLarge(let size):
            throw ManifestSourceError(source: displayName, path: file.path, message: "cannot read file: it is \(size) bytes, more than \(Self.readCap)")
        case .unreadable(let error): throw error
        }
    }

    public func read(_ files: [ManifestFile], limit: Int) async throws -> [ManifestRead] {
        files.map { openListed($0, limit: limit) }
    }

    /// Opens the listed file without following links or blocking, checks that it is still the
    /// regular file that was listed (device and inode), then reads at most `limit` bytes: a file
    /// that is or grows larger is refused, whatever its size said.
    private func openListed(_ file: ManifestFile, limit: Int) -> ManifestRead {
        func failure(_ message: String) -> ManifestRead {
            .unreadable(ManifestSourceError(source: displayName, path: file.path, message: message))
        }
        guard file.refusal == nil else { return failure("not read: \(file.path) is refused") }
        let changed = "the file changed while it was being read (it is no longer the regular file that was listed); run again"
        let fd = systemOpen(absolute(file.path), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else {
            // ELOOP: the listed file has become a symlink since.
            return failure(errno == ELOOP ? changed : "cannot read file: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return failure("cannot read file: \(String(cString: strerror(errno)))") }
        let listed = file.identity.split(separator: ":").prefix(2)
        guard st.st_mode & S_IFMT == S_IFREG, listed == ["\(st.st_dev)", "\(st.st_ino)"] else {
            return failure(changed)
        }
        if Int(st.st_size) > limit { return .tooLarge(Int(st.st_size)) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(min(Int(st.st_size), limit) + 1)
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { systemRead(fd, $0.baseAddress, min($0.count, limit + 1 - bytes.count)) }
            if n < 0 {
                if errno == EINTR { continue }
                return failure("cannot read file: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[..<n])
            if bytes.count > limit { return .tooLarge(max(bytes.count, Int(st.st_size))) }
        }
        return .bytes(bytes)
    }
}

// The system calls under names the type's own members (`read`, `open`) do not shadow.
private func systemLstat(_ path: UnsafePointer<CChar>, _ st: inout stat) -> Bool { lstat(path, &st) == 0 }
private func systemOpen(_ path: String, _ flags: Int32) -> Int32 { open(path, flags) }
private func systemRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int { read(fd, buffer, count) }
