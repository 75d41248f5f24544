import Foundation

/// Writing to a repository from async code (`Repository+Write.swift`), on the repository's queue.
extension GitRepository {
    /// The branch HEAD is on (`refs/heads/main`; nil when detached) and its commit.
    public func head() throws -> (branch: String?, commit: ObjectID) {
        try repository.head()
    }

    /// The fetch and push URLs of the configured remote `name` (`origin`), if there is one.
    public func remoteURLs(_ name: String) throws -> (fetch: String, push: String)? {
        try repository.remoteURLs(name)
    }

    /// Fetches `refspecs` from `url` (credentials as for every fetch); returns the warnings.
    public func fetch(url: String, refspecs: [String], credentials: GitCredentials, timeout: TimeInterval) throws -> [String] {
        try repository.fetch(url: url, refspecs: refspecs, credentials: credentials, timeout: timeout).warnings
    }

    /// A commit on `parent` that changes only the file at `path` to `bytes`, set as `branch`
    /// (replacing it); the work tree and the index are left alone.
    public func commitFileChange(path: String, bytes: [UInt8], parent: ObjectID, branch: String, message: String) throws -> ObjectID {
        try repository.commitFileChange(path: path, bytes: bytes, parent: parent, branch: branch, message: message)
    }

    /// Pushes `refspecs` to `url`; returns the warnings (credentials sent in clear text).
    public func push(url: String, refspecs: [String], credentials: GitCredentials, timeout: TimeInterval) throws -> [String] {
        try repository.push(url: url, refspecs: refspecs, credentials: credentials, timeout: timeout)
    }
}
