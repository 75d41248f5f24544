import CLibGit2

/// A libgit2 failure: the function that failed, its code, libgit2's class and message, and what
/// Capstan was doing. Messages never contain credentials (URLs are shown without user info).
public struct GitError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// A reference, object or path does not exist.
        case notFound
        /// The remote could not be reached or stopped answering.
        case network
        /// Authentication failed or no credentials were available.
        case authentication
        /// An SSH host key was unknown or did not match known_hosts.
        case hostKey
        /// Objects or the repository on disk are damaged.
        case corrupt
        /// Anything else.
        case other
    }

    public var kind: Kind
    public var code: Int32
    public var function: String
    public var message: String
    /// What Capstan was doing ("fetching origin of https://git.example.com/ml/models.git").
    public var context: String?
    /// The operating system's error (`errno`) behind a failed file operation (one of
    /// `systemErrors`, read from the end of libgit2's message): `ENOSPC` tells a full disk apart.
    public var systemError: Int32?

    public init(kind: Kind, code: Int32 = -1, function: String, message: String, context: String? = nil, systemError: Int32? = nil) {
        self.kind = kind
        self.code = code
        self.function = function
        self.message = message
        self.context = context
        self.systemError = systemError
    }

    public var description: String {
        let what = context.map { "\($0): " } ?? ""
        return "\(what)\(message) (\(function))"
    }

    /// The system errors told apart in libgit2's messages.
    static let systemErrors: [Int32] = [ENOSPC, EDQUOT, EROFS, EACCES]

    /// Reads libgit2's thread-local last error. Call right after the failing call, with no
    /// `await` (or any other libgit2 call) in between.
    static func last(code: Int32, function: String) -> GitError {
        var message = "error \(code)"
        var klass: Int32 = 0
        if let e = git_error_last() {
            klass = e.pointee.klass
            if let m = e.pointee.message { message = String(cString: m).trimmingCharacters(in: .whitespacesAndNewlines) }
        }
        // libgit2 keeps no errno: a failed file operation's message ends with the system's text
        // (`cannot extend packfile '…': No space left on device`), set when it failed; `errno`
        // itself has often changed by now (the operation cleaned up on its way out).
        let systemError = klass == Int32(GIT_ERROR_OS.rawValue)
            ? systemErrors.first { message.hasSuffix(": " + String(cString: strerror($0))) } : nil
        let kind: Kind
        switch code {
        case GIT_ENOTFOUND.rawValue: kind = .notFound
        case GIT_EAUTH.rawValue: kind = .authentication
        case GIT_ECERTIFICATE.rawValue: kind = .hostKey
        default:
            switch klass {
            case Int32(GIT_ERROR_NET.rawValue), Int32(GIT_ERROR_SSL.rawValue), Int32(GIT_ERROR_HTTP.rawValue): kind = .network
            case Int32(GIT_ERROR_SSH.rawValue):
                kind = message.localizedCaseInsensitiveContains("auth") ? .authentication : .network
            case Int32(GIT_ERROR_ODB.rawValue), Int32(GIT_ERROR_OBJECT.rawValue), Int32(GIT_ERROR_ZLIB.rawValue),
                 Int32(GIT_ERROR_INDEXER.rawValue):
                kind = .corrupt
            case Int32(GIT_ERROR_CALLBACK.rawValue) where message.contains("host key"): kind = .hostKey
            default: kind = message.contains("authentication") ? .authentication : .other
            }
        }
        return GitError(kind: kind, code: code, function: function, message: message, systemError: systemError)
    }
}

import Foundation

/// Calls a libgit2 function and turns a negative return into a `GitError`, read at once.
@inline(__always)
func check(_ rc: Int32, _ function: String) throws(GitError) {
    if rc < 0 { throw GitError.last(code: rc, function: function) }
}

/// Like `check`, for reading an object that something else refers to (a commit's tree, a
/// tree's entry): when it is missing, the repository is damaged, not the request wrong.
@inline(__always)
func checkReferenced(_ rc: Int32, _ function: String, _ id: ObjectID) throws(GitError) {
    guard rc < 0 else { return }
    var error = GitError.last(code: rc, function: function)
    if error.kind == .notFound {
        error.kind = .corrupt
        error.message = "object \(id.short) is missing from the repository (\(error.message))"
    }
    throw error
}
