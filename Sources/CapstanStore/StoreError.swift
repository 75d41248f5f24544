import CapstanCore

/// A failure of the state database or the artifact store: what went wrong (a stable code), a
/// message that names the file and says what to do, the file at fault, and the underlying cause.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable, Equatable {
        /// The file is not a SQLite database, or SQLite reports it damaged.
        case damagedDatabase
        /// The database was written by a newer Capstan (unknown schema version or migrations).
        case newerDatabase
        /// The file is another application's SQLite database.
        case foreignDatabase
        /// Opening, reading or migrating the database failed for another reason.
        case databaseFailure
        /// A row holds what no Capstan writes (an object reference, an audit action, a journal
        /// operation it does not know): another program wrote it.
        case foreignRecord
        /// A stored artifact's contents no longer match its digest.
        case artifactModified
        /// No artifact is stored under that digest.
        case artifactMissing
        /// A digest string is not `sha256:` followed by 64 lowercase hex digits.
        case invalidDigest
        /// A training output holds a symlink or another entry that is not a file or a folder.
        case unsupportedEntry
        /// Reading or writing files failed.
        case fileSystem
        /// Another process holds the state folder's lock.
        case locked
        /// This process no longer holds the lease it took (it was removed with `capstan unlock`
        /// or taken over): it must stop writing. Thrown by every fenced write.
        case leaseLost
        /// `capstan unlock` refused to remove the lease of a process that is still alive.
        case holderAlive
        /// The file system is full (ENOSPC, EDQUOT). Not the spec's fault: retry once there is space.
        case diskFull
        /// The file system is mounted read-only (EROFS).
        case readOnlyFileSystem
        /// The user running Capstan may not write there (EACCES, EPERM).
        case permissionDenied
    }

    public var code: Code
    public var message: String
    /// The file or folder at fault.
    public var path: String
    public var underlying: (any Error)?
    /// The operating system's error number behind a file-system failure, when known.
    public var errno: Int32?

    public init(code: Code, message: String, path: String, underlying: (any Error)? = nil, errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.path = path
        self.underlying = underlying
        self.errno = errno
    }

    public var description: String {
        guard let underlying else { return message }
        return "\(message) (\(underlying))"
    }
}

extension StoreError: ClassifiedError {
    /// What the loop does about it. The state itself failing (a lost lease, a lock held by
    /// another process, a full disk, a damaged or unreadable database) is transient: the next
    /// pass tries again, nothing is recorded against the work. An artifact changed in place or
    /// missing is terminal for the version that needs it (retrain it); a training output that
    /// cannot be stored (a symlink, a special file, a secret in a name) is the training's fault
    /// and waits out its backoff, like any training failure.
    public var failure: ReconcileFailure {
        switch code {
        case .leaseLost: return .transient(.leaseLost, message)
        case .locked: return .transient(.locked, message)
        case .diskFull: return .transient(.diskFull, message)
        case .artifactModified, .artifactMissing: return ReconcileFailure(.terminal, .artifactChanged, message)
        case .unsupportedEntry: return ReconcileFailure(.waiting(until: nil), .invalidOutput, message)
        case .damagedDatabase, .newerDatabase, .foreignDatabase, .databaseFailure, .foreignRecord, .invalidDigest, .fileSystem,
             .holderAlive, .readOnlyFileSystem, .permissionDenied:
            return .transient(.stateUnavailable, message)
        }
    }
}
