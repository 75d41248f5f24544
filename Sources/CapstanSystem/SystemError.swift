import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A file-system operation that failed, with the system's reason: what was being done, on which
/// path, and the `errno`. Adapters turn it into their own errors (the store's `StoreError`, the
/// serving agent's) with what to do about it.
public struct SystemError: Error, Hashable, Sendable, CustomStringConvertible {
    /// "create the state folder", "read the artifact file".
    public var what: String
    public var path: String
    public var errno: Int32

    public init(_ what: String, path: String, errno: Int32) {
        self.what = what
        self.path = path
        self.errno = errno
    }

    /// The system's text for the errno ("No space left on device").
    public var reason: String { String(cString: strerror(errno)) }

    public var description: String { "cannot \(what) '\(path)': \(reason)" }

    /// A full file system (ENOSPC, EDQUOT).
    public var isDiskFull: Bool { errno == ENOSPC || errno == EDQUOT }
}

/// Private folders and files: what Capstan keeps in its state folder is readable by the user
/// running it only (folders 0700, files 0600), whatever the umask.
public enum PrivateFiles {
    public static let folderMode: mode_t = 0o700
    public static let fileMode: mode_t = 0o600

    /// Creates `path` and its missing parents: the parents with `parentsMode` (by default 0777
    /// less the umask, like `mkdir -p`), `path` itself with `mode`. An existing folder is left as
    /// it is.
    public static func makeFolder(_ path: String, mode: mode_t = folderMode, parentsMode: mode_t = 0o777,
                                  what: String = "create the folder") throws(SystemError) {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var missing: [String] = []
        var current = (absolute as NSString).standardizingPath
        var info = stat()
        while !current.isEmpty, current != "/", stat(current, &info) != 0 {
            missing.append(current)
            current = (current as NSString).deletingLastPathComponent
        }
        for (index, folder) in missing.reversed().enumerated() {
            let last = index == missing.count - 1
            if mkdir(folder, last ? mode : parentsMode) != 0 {
                let code = errno
                if code == EEXIST { continue }
                throw SystemError(what, path: path, errno: code)
            }
            // mkdir applies the umask; a private folder must not depend on it.
            if last || parentsMode != 0o777 { chmod(folder, last ? mode : parentsMode) }
        }
    }

    /// Writes `contents` to a new (or truncated) file at `path` with mode 0600.
    public static func write(_ contents: Data, to path: String, what: String = "write the file") throws(SystemError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, fileMode)
        guard fd >= 0 else { throw SystemError(what, path: path, errno: errno) }
        defer { close(fd) }
        var failure: Int32 = 0
        contents.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = systemWrite(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    return
                }
                offset += n
            }
        }
        if failure != 0 { throw SystemError(what, path: path, errno: failure) }
    }

    /// Creates the state folder `path` when missing (its missing parents with the usual mode, the
    /// folder itself 0700). Returns warnings for people: an existing folder that every user of the
    /// machine may read or enter. Group access is the owner's choice (a container volume shared
    /// with an fsGroup, an operators' group); access for every other user is not.
    public static func prepareStateFolder(_ path: String) throws(SystemError) -> [String] {
        var info = stat()
        if stat(path, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFDIR else { throw SystemError("use the state folder", path: path, errno: ENOTDIR) }
            return exposure(of: path, holding: "training logs, metrics and the model registry").map { [$0] } ?? []
        }
        try makeFolder(path, mode: folderMode, what: "create the state folder")
        return []
    }

    /// A warning for people when the existing folder `path` can be read or entered by every user
    /// of the machine ("other" permission bits); nil otherwise (or when it does not exist).
    public static func exposure(of path: String, holding what: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else { return nil }
        let mode = info.st_mode & 0o7777
        guard mode & 0o007 != 0 else { return nil }
        return "the state folder '\(path)' can be read by every user of this machine (mode \(String(mode, radix: 8))); it holds \(what). Run `chmod o-rwx '\(path)'` (or `chmod 700`) to make it private"
    }
}

/// `write(2)`, for types with a `write` method of their own.
func systemWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    write(fd, buffer, count)
}
