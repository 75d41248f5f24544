import Foundation
import GRDB

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why a file operation (or SQLite on Capstan's behalf) failed, as the operating system says it,
/// and what an operator should do about it: a full disk, a read-only file system, a folder the
/// user may not write.
///
/// SQLite reports "database or disk is full" or "unable to open database file" without the
/// system's reason; when it gives none, the folder is probed (a small file is written and removed)
/// to find it.
public enum FileSystemFailure {
    /// The `errno` behind `error`: a `StoreError`'s, a `POSIXError`'s, or the POSIX error under a
    /// Foundation error. Nil when the error carries none.
    public static func errno(of error: any Error) -> Int32? {
        if let error = error as? StoreError {
            return error.errno ?? error.underlying.flatMap { errno(of: $0) }
        }
        if let error = error as? POSIXError { return error.code.rawValue }
        if let error = error as? DatabaseError, error.resultCode == .SQLITE_FULL { return ENOSPC }
        let ns = error as NSError
        if ns.domain == NSPOSIXErrorDomain { return Int32(ns.code) }
        if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying !== ns, let code = errno(of: underlying) {
            return code
        }
        if ns.domain == NSCocoaErrorDomain {
            switch ns.code {
            case CocoaError.fileWriteOutOfSpace.rawValue: return ENOSPC
            case CocoaError.fileWriteVolumeReadOnly.rawValue: return EROFS
            case CocoaError.fileWriteNoPermission.rawValue, CocoaError.fileReadNoPermission.rawValue: return EACCES
            default: break
            }
        }
        return nil
    }

    /// Whether `error` comes from a full file system (ENOSPC, EDQUOT): a failure of the machine,
    /// not of the work, that a later pass can get past once there is space.
    public static func isDiskFull(_ error: any Error) -> Bool {
        if let error = error as? StoreError, error.code == .diskFull { return true }
        guard let code = errno(of: error) else { return false }
        return code == ENOSPC || code == EDQUOT
    }

    /// The error code of a file-system errno Capstan tells apart, nil for the others.
    static func code(for errno: Int32) -> StoreError.Code? {
        switch errno {
        case ENOSPC, EDQUOT: return .diskFull
        case EROFS: return .readOnlyFileSystem
        case EACCES, EPERM: return .permissionDenied
        default: return nil
        }
    }

    /// The system's text for `errno` ("No space left on device").
    public static func text(_ errno: Int32) -> String {
        String(cString: strerror(errno))
    }

    /// What to do about `errno` in `folder`.
    static func advice(for errno: Int32, folder: String) -> String {
        switch errno {
        case ENOSPC, EDQUOT:
            return "The file system of '\(folder)' is full: free space there (step logs under logs/, unused artifacts under artifacts/) or give it more, then run again"
        case EROFS:
            return "'\(folder)' is on a read-only file system, and Capstan writes its state there: remount it read-write, or point --state-dir at a writable folder"
        case EACCES, EPERM:
            return "the user running Capstan (uid \(getuid())) may not write in '\(folder)': fix the folder's owner or permissions, or point --state-dir at a folder that user owns"
        default:
            return "check '\(folder)' and the file system it is on, then run again"
        }
    }

    /// A `StoreError` for `what` failing on `path` with `errno`: "cannot <what> '<path>': <system
    /// text>. <what to do>".
    static func error(_ what: String, path: String, folder: String, errno: Int32, underlying: (any Error)? = nil,
                      otherwise: StoreError.Code = .fileSystem, detail: String? = nil) -> StoreError {
        let detailText = detail.map { " (\($0))" } ?? ""
        return StoreError(code: code(for: errno) ?? otherwise,
                          message: "cannot \(what) '\(path)': \(text(errno))\(detailText). \(advice(for: errno, folder: folder))",
                          path: path, underlying: underlying, errno: errno)
    }

    /// `error` (thrown while doing `what`, "create the state database") as a `StoreError` that names
    /// the system's reason when one can be found, `path` and what to do.
    static func describe(_ error: any Error, what: String, path: String, folder: String,
                         otherwise: StoreError.Code) -> StoreError {
        if let error = error as? StoreError { return error }
        if let database = error as? DatabaseError {
            let sqlite = "SQLite: \(database.message ?? "\(database.resultCode)")"
            var code: Int32?
            switch database.resultCode {
            case .SQLITE_FULL:
                code = ENOSPC
            case .SQLITE_READONLY, .SQLITE_CANTOPEN, .SQLITE_IOERR, .SQLITE_PERM, .SQLITE_AUTH:
                code = probeWrite(in: folder)
            default:
                break
            }
            if let code {
                return self.error(what, path: path, folder: folder, errno: code, underlying: error, otherwise: otherwise, detail: sqlite)
            }
            return StoreError(code: otherwise,
                              message: "cannot \(what) '\(path)': \(sqlite). Check that the file and its folder '\(folder)' can be read and written by the user running Capstan and are not held by another program",
                              path: path, underlying: error)
        }
        if let code = errno(of: error) {
            return self.error(what, path: path, folder: folder, errno: code, underlying: error, otherwise: otherwise)
        }
        return StoreError(code: otherwise, message: "cannot \(what) '\(path)': \(error)", path: path, underlying: error)
    }

    /// Writes, syncs and removes a small file in `folder`; returns the errno of the first step that
    /// failed, or nil when writing there works.
    static func probeWrite(in folder: String) -> Int32? {
        let probe = folder + "/.capstan-write-check-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return systemErrno() }
        defer {
            close(fd)
            unlink(probe)
        }
        let block = [UInt8](repeating: 0, count: 8192)
        let written = block.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if written < 0 { return systemErrno() }
        if written < block.count { return ENOSPC }
        if fsync(fd) != 0 { return systemErrno() }
        return nil
    }
}

/// The calling thread's `errno` (inside `FileSystemFailure`, `errno(of:)` hides the global).
func systemErrno() -> Int32 { errno }

/// `open(2)`, for types with an `open` method of their own.
func systemOpen(_ path: String, _ flags: Int32, _ mode: mode_t = 0) -> Int32 {
    open(path, flags, mode)
}
