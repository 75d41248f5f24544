import CapstanCore
import Foundation

// How the reconcile loop treats what goes wrong with Git (DESIGN.md §4): each error of this module
// carries its `ReconcileFailure`, so the engine, which sees only ports, never inspects Git's.

extension GitSourceError: ClassifiedError {
    /// Transient, `SourceUnavailable` (`DiskFull` when the state folder's disk is full): the next
    /// pass tries again, with no backoff and nothing recorded against a fingerprint, and the last
    /// good desired state stays in force. That covers a remote that cannot be reached, times out,
    /// refuses the credentials or presents an unknown SSH host key (someone must act, but nothing
    /// Capstan would do differently until then), and a damaged mirror that cloning again did not
    /// cure.
    ///
    /// A ref that does not exist is transient too, not stalled. Stalled means "nothing helps until
    /// the spec changes (a commit)", yet no commit on the branches Capstan can see brings a missing
    /// ref into being: pushing it does (a controller started before its release branch exists), or
    /// changing `--ref`, and the next fetch sees the former by itself.
    public var failure: ReconcileFailure {
        ReconcileFailure(.transient, SystemError.isDiskFull(systemError) ? .diskFull : .sourceUnavailable, description)
    }
}

extension GitError: ClassifiedError {
    /// As `GitSourceError.failure`: transient, `SourceUnavailable` (or `DiskFull`). Met when an
    /// object of a revision cannot be read after the adapter handed it out (a `GitManifestSource`
    /// asked for a blob's size); the adapter's own operations throw `GitSourceError`s naming the
    /// repository.
    public var failure: ReconcileFailure {
        ReconcileFailure(.transient, SystemError.isDiskFull(systemError) ? .diskFull : .sourceUnavailable,
                         "cannot read the Git repository: \(description)")
    }
}

extension Materializer.MaterializeError: ClassifiedError {
    /// A tree that cannot be written safely (a symlink leading outside it, a loop) or a missing
    /// folder is stalled: only a commit changes it. The reason is `InputUnresolvable`, the closest
    /// Core has (the step's files lead outside what Capstan may hand it). A failed write into the
    /// state folder is transient: `DiskFull` or `StateUnavailable`.
    public var failure: ReconcileFailure {
        switch kind {
        case .unsafeTree, .noFolder:
            return ReconcileFailure(.stalled, .inputUnresolvable, message)
        case .fileSystem:
            return ReconcileFailure(.transient, SystemError.isDiskFull(systemError) ? .diskFull : .stateUnavailable, message)
        }
    }
}

/// The operating system's error behind a failed file operation.
enum SystemError {
    /// The `errno` behind `error`: a `POSIXError`'s, or the POSIX error under a Foundation error.
    static func code(of error: any Error) -> Int32? {
        if let error = error as? POSIXError { return error.code.rawValue }
        let ns = error as NSError
        if ns.domain == NSPOSIXErrorDomain { return Int32(ns.code) }
        if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying !== ns, let code = code(of: underlying) {
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

    /// The system's text for `error` ("No space left on device") when it has an `errno`.
    static func describe(_ error: any Error) -> String {
        code(of: error).map { String(cString: strerror($0)) } ?? "\(error)"
    }

    /// A full file system: `ENOSPC`, or `EDQUOT` (the user's quota).
    static func isDiskFull(_ code: Int32?) -> Bool {
        code == ENOSPC || code == EDQUOT
    }
}
