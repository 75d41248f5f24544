import CapstanCore
import CapstanSystem
import Crypto
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Content-addressed storage for training outputs: `<stateDir>/artifacts/sha256/<hex>/`.
///
/// A folder is copied into a temporary folder under `artifacts/`, its digest computed over the
/// copy, and the copy renamed into place; when that digest is already stored the copy is
/// discarded and the stored one reused. Stored files are made read-only. `verify` and `open`
/// recompute the digest, so an artifact changed in place is detected and not used.
///
/// The digest is `sha256:` + the SHA-256 of the folder's canonical listing: for every entry,
/// sorted by relative path (UTF-8 bytes, `/` separated), either
///
///     "D <path>\0"                         a folder
///     "F <x|-> <sha256 of contents> <path>\0"   a file, `x` when any execute bit is set
///
/// Ownership, times and the other mode bits are not part of it. This format NEVER changes: every
/// stored digest depends on it. Symlinks and special files are refused, the stored folder itself
/// included (a step that replaced its output folder with a symlink stores nothing).
///
/// The names of a training's outputs come from the step: `store` refuses a name that holds a
/// secret (names are kept in the state folder) and scrubs and escapes whatever it quotes.
///
/// The core's `ArtifactStore` port: `store(directory:scrubber:)` and `open(digest:)` do their
/// file work on a dispatch queue, off the cooperative thread pool; their failures are
/// `StoreError`s, classified (a full disk is transient, an output with a symlink the training's
/// fault, an artifact changed in place terminal).
public struct LocalArtifactStore: ArtifactStore {
    /// `<stateDir>/artifacts`.
    public let root: String

    public init(stateDirectory: String) {
        root = URL(fileURLWithPath: stateDirectory).appendingPathComponent("artifacts").path
    }

    var objects: String { root + "/sha256" }

    /// The folder that holds `digest`, whether or not it exists.
    public func path(for digest: String) throws -> String {
        objects + "/" + (try Self.hex(of: digest))
    }

    /// Copies `directory` into the store and returns its digest and stored folder (`location`).
    /// `scrubber` holds the secrets of the step that wrote it.
    public func store(directory: String, scrubber: SecretScrubber = .none) async throws -> StoredArtifact {
        try await Blocking.run { try storeBlocking(directory: directory, scrubber: scrubber) }
    }

    public func holds(digest: String) async -> Bool {
        guard let path = try? path(for: digest) else { return false }
        var isFolder: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) && isFolder.boolValue
    }

    /// The stored folder of `digest`, after checking that its contents still match.
    public func open(digest: String) async throws -> String {
        try await Blocking.run { try openBlocking(digest: digest) }
    }

    /// `store(directory:scrubber:)`, blocking the calling thread.
    func storeBlocking(directory: String, scrubber: SecretScrubber = .none) throws -> StoredArtifact {
        let fm = FileManager.default
        var info = stat()
        guard lstat(directory, &info) == 0 else {
            let code = errno
            throw StoreError(code: .fileSystem, message: "cannot read training output '\(directory)': \(String(cString: strerror(code)))",
                             path: directory)
        }
        switch info.st_mode & S_IFMT {
        case S_IFDIR: break
        case S_IFLNK:
            throw StoreError(code: .unsupportedEntry,
                             message: "training output '\(directory)' is a symlink, not a folder; the step must write its files into the folder instead of replacing it",
                             path: directory)
        default:
            throw StoreError(code: .unsupportedEntry, message: "training output '\(directory)' is not a folder", path: directory)
        }
        // Refuse before copying anything.
        let entries = try Self.listing(of: directory, scrubber: scrubber)
        try Self.make(objects)
        removeLeftovers()
        let temporary = root + "/.tmp-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
        do {
            try Self.make(temporary)
            for entry in entries {
                let target = temporary + "/" + entry.path
                if entry.isFolder {
                    try Self.make(target)
                } else {
                    try Self.copyFile(from: directory + "/" + entry.path, to: target, executable: entry.executable)
                }
            }
            // The digest describes what was stored, read back from the copy.
            let digest = try Self.digest(of: temporary)
            let target = objects + "/" + (try Self.hex(of: digest))
            if fm.fileExists(atPath: target) {
                try Self.remove(temporary)
            } else if rename(temporary, target) != 0 {
                let code = errno
                try Self.remove(temporary)
                // Another process stored the same contents first; theirs is identical.
                guard fm.fileExists(atPath: target) else {
                    throw FileSystemFailure.error("move the copy of '\(directory)' into", path: target, folder: objects, errno: code)
                }
            }
            return StoredArtifact(digest: digest, location: target)
        } catch {
            try? Self.remove(temporary)
            throw error
        }
    }

    /// Removes the temporary copies (`.tmp-<pid>-…`) of processes that are gone: a process killed
    /// while it stored an output leaves its half-made copy behind.
    func removeLeftovers() {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: root) else { return }
        for name in names where name.hasPrefix(".tmp-") {
            guard let pid = Int64(name.dropFirst(5).prefix { $0 != "-" }), pid != Int64(getpid()),
                  case .gone = LocalProcess.liveness(pid: pid, startTime: nil) else { continue }
            try? Self.remove(root + "/" + name)
        }
    }

    /// Recomputes the digest of a stored artifact; throws when it is missing or was changed.
    public func verify(digest: String) throws {
        let path = try path(for: digest)
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder), isFolder.boolValue else {
            throw StoreError(code: .artifactMissing,
                             message: "artifact \(digest) is not in the artifact store ('\(path)' does not exist); retrain the version to recreate it",
                             path: path)
        }
        let actual: String
        do {
            actual = try Self.digest(of: path)
        } catch let error as StoreError where error.code == .unsupportedEntry {
            throw modified(digest, path: path, detail: error.message)
        }
        guard actual == digest else {
            throw modified(digest, path: path, detail: "its contents now hash to \(actual)")
        }
    }

    /// `open(digest:)`, blocking the calling thread.
    func openBlocking(digest: String) throws -> String {
        try verify(digest: digest)
        return try path(for: digest)
    }

    func modified(_ digest: String, path: String, detail: String) -> StoreError {
        StoreError(code: .artifactModified,
                   message: "artifact \(digest) at '\(path)' was changed after it was stored (\(detail)); it will not be used. Remove the folder and retrain the version, or restore it from a backup",
                   path: path)
    }

    // MARK: - Digest (`ArtifactDigest`, shared with the serving agent)

    typealias Entry = ArtifactDigest.Entry

    /// Every entry below `directory` (see `ArtifactDigest.listing`), its refusals as store errors.
    static func listing(of directory: String, scrubber: SecretScrubber = .none) throws -> [Entry] {
        do { return try ArtifactDigest.listing(of: directory, scrubber: scrubber) } catch { throw storeError(error) }
    }

    /// `sha256:<hex>` of `directory`'s canonical listing (`ArtifactDigest`).
    public static func digest(of directory: String) throws -> String {
        do { return try ArtifactDigest.of(directory) } catch { throw storeError(error) }
    }

    static func storeError(_ problem: ArtifactDigest.Problem) -> StoreError {
        switch problem.kind {
        case .unsupportedEntry:
            return StoreError(code: .unsupportedEntry, message: problem.message, path: problem.path)
        case .unreadable(let code):
            return StoreError(code: FileSystemFailure.code(for: code) ?? .fileSystem, message: problem.message, path: problem.path,
                              errno: code)
        }
    }

    /// The hex part of a `sha256:<hex>` digest, checked so that it cannot name another path.
    static func hex(of digest: String) throws -> String {
        let hex = digest.hasPrefix("sha256:") ? String(digest.dropFirst(7)) : ""
        guard hex.utf8.count == 64, hex.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else {
            throw StoreError(code: .invalidDigest,
                             message: "'\(digest)' is not an artifact digest (expected 'sha256:' and 64 lowercase hex digits)",
                             path: digest)
        }
        return hex
    }

    // MARK: - Files

    static func make(_ folder: String) throws {
        // Private, like everything in the state folder.
        try StateFolder.makeFolder(folder, parentsMode: StateFolder.folderMode, what: "create the artifact folder")
    }

    /// Copies one file in chunks and makes the copy read-only and private (0400, or 0500 when
    /// executable). A failure names the system's reason (a full disk: `.diskFull`).
    static func copyFile(from source: String, to target: String, executable: Bool) throws {
        let folder = (target as NSString).deletingLastPathComponent
        let input = systemOpen(source, O_RDONLY | O_CLOEXEC)
        guard input >= 0 else {
            throw FileSystemFailure.error("read the training output", path: source, folder: (source as NSString).deletingLastPathComponent,
                                          errno: systemErrno())
        }
        defer { close(input) }
        let output = systemOpen(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, StateFolder.fileMode)
        guard output >= 0 else {
            throw FileSystemFailure.error("store an artifact file at", path: target, folder: folder, errno: systemErrno())
        }
        defer { close(output) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if count < 0 {
                if systemErrno() == EINTR { continue }
                throw FileSystemFailure.error("read the training output", path: source, folder: (source as NSString).deletingLastPathComponent,
                                              errno: systemErrno())
            }
            if count == 0 { break }
            var offset = 0
            while offset < count {
                let written = buffer.withUnsafeBytes { write(output, $0.baseAddress! + offset, count - offset) }
                if written < 0 {
                    if systemErrno() == EINTR { continue }
                    throw FileSystemFailure.error("store an artifact file at", path: target, folder: folder, errno: systemErrno())
                }
                offset += written
            }
        }
        if fsync(output) != 0 {
            throw FileSystemFailure.error("store an artifact file at", path: target, folder: folder, errno: systemErrno())
        }
        if fchmod(output, executable ? 0o500 : 0o400) != 0 {
            throw FileSystemFailure.error("set the mode of the artifact file", path: target, folder: folder, errno: systemErrno())
        }
    }

    /// The errno text of a Foundation file error, or its description.
    static func reason(_ error: any Error) -> String {
        let ns = error as NSError
        if let posix = ns.userInfo[NSUnderlyingErrorKey] as? NSError, posix.domain == NSPOSIXErrorDomain {
            return String(cString: strerror(Int32(posix.code)))
        }
        return ns.localizedDescription
    }

    static func remove(_ path: String) throws {
        do {
            try FileManager.default.removeItem(atPath: path)
        } catch {
            throw StoreError(code: .fileSystem, message: "cannot remove '\(path)'", path: path, underlying: error)
        }
    }
}
