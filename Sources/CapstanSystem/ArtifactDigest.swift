import CapstanCore
import Crypto
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The digest of an artifact folder: `sha256:` + the SHA-256 of the folder's canonical listing,
/// for every entry sorted by relative path (UTF-8 bytes, `/` separated), either
///
///     "D <path>\0"                              a folder
///     "F <x|-> <sha256 of contents> <path>\0"   a file, `x` when any execute bit is set
///
/// Ownership, times and the other mode bits are not part of it. This format NEVER changes: every
/// stored digest depends on it. Symlinks and special files are refused. The one definition the
/// artifact store (which stores by it) and the serving agent (which verifies what it serves)
/// share.
public enum ArtifactDigest {
    public struct Entry: Hashable, Sendable {
        public var path: String
        public var isFolder: Bool
        public var executable: Bool
    }

    /// Why a folder has no digest.
    public struct Problem: Error, Hashable, Sendable, CustomStringConvertible {
        public enum Kind: Hashable, Sendable {
            /// A symlink, a special file, or a name that holds a secret: not allowed in an artifact.
            case unsupportedEntry
            /// The file system refused (with the system's reason).
            case unreadable(errno: Int32)
        }

        public var kind: Kind
        /// The entry at fault, scrubbed and escaped.
        public var path: String
        public var message: String

        public var description: String { message }
    }

    /// Every entry below `directory`, sorted by relative path; refuses symlinks, special files
    /// and names that hold a secret of `scrubber`. Paths in messages are scrubbed and escaped.
    public static func listing(of directory: String, scrubber: SecretScrubber = .none) throws(Problem) -> [Entry] {
        var entries: [Entry] = []
        func shown(_ path: String) -> String { PrintableText.escaped(scrubber.scrub(path)) }
        func walk(_ relative: String) throws(Problem) {
            let folder = relative.isEmpty ? directory : directory + "/" + relative
            let names: [String]
            do {
                names = try FileManager.default.contentsOfDirectory(atPath: folder)
            } catch {
                let code = Self.errorNumber(of: error) ?? EIO
                throw Problem(kind: .unreadable(errno: code), path: shown(folder),
                              message: "cannot list '\(shown(folder))': \(String(cString: strerror(code)))")
            }
            for name in names {
                let path = relative.isEmpty ? name : relative + "/" + name
                let full = directory + "/" + path
                if scrubber.reveals(name) {
                    throw Problem(kind: .unsupportedEntry, path: shown(full),
                                  message: "'\(shown(full))' has the value of a secret in its name; artifact names are kept in the state folder, so rename it")
                }
                var info = stat()
                guard lstat(full, &info) == 0 else {
                    let code = errno
                    throw Problem(kind: .unreadable(errno: code), path: shown(full),
                                  message: "cannot read '\(shown(full))': \(String(cString: strerror(code)))")
                }
                switch info.st_mode & S_IFMT {
                case S_IFDIR:
                    entries.append(Entry(path: path, isFolder: true, executable: false))
                    try walk(path)
                case S_IFREG:
                    entries.append(Entry(path: path, isFolder: false, executable: info.st_mode & 0o111 != 0))
                case S_IFLNK:
                    throw Problem(kind: .unsupportedEntry, path: shown(full),
                                  message: "'\(shown(full))' is a symlink; artifacts may hold only files and folders. Copy the file it points to instead")
                default:
                    throw Problem(kind: .unsupportedEntry, path: shown(full),
                                  message: "'\(shown(full))' is not a regular file or folder; artifacts may hold only files and folders")
                }
            }
        }
        try walk("")
        return entries.sorted { Array($0.path.utf8).lexicographicallyPrecedes(Array($1.path.utf8)) }
    }

    /// `sha256:<hex>` of `directory`'s canonical listing.
    public static func of(_ directory: String) throws(Problem) -> String {
        var hasher = SHA256()
        for entry in try listing(of: directory) {
            let line: String
            if entry.isFolder {
                line = "D \(entry.path)\0"
            } else {
                line = "F \(entry.executable ? "x" : "-") \(try file(directory + "/" + entry.path)) \(entry.path)\0"
            }
            hasher.update(data: Data(line.utf8))
        }
        return "sha256:" + Hex.string(hasher.finalize())
    }

    /// The hex SHA-256 of one file's contents, read in chunks.
    public static func file(_ path: String) throws(Problem) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            let code = errno
            throw Problem(kind: .unreadable(errno: code), path: path, message: "cannot read '\(path)': \(String(cString: strerror(code)))")
        }
        defer { try? handle.close() }
        var hash = SHA256()
        do {
            while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
                hash.update(data: chunk)
            }
        } catch {
            let code = Self.errorNumber(of: error) ?? EIO
            throw Problem(kind: .unreadable(errno: code), path: path, message: "cannot read '\(path)': \(String(cString: strerror(code)))")
        }
        return Hex.string(hash.finalize())
    }

    static func errorNumber(of error: any Error) -> Int32? {
        if let posix = error as? POSIXError { return posix.code.rawValue }
        let ns = error as NSError
        if ns.domain == NSPOSIXErrorDomain { return Int32(ns.code) }
        if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying !== ns { return errorNumber(of: underlying) }
        return nil
    }
}
