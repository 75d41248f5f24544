import CLibGit2
import Foundation

/// Writing to a repository: a commit that changes one file, made without touching the work tree
/// or the index, and a push of branches to a remote.
extension Repository {
    /// The branch HEAD is on (`refs/heads/main`) and its commit; nil branch on a detached HEAD.
    func head() throws(GitError) -> (branch: String?, commit: ObjectID) {
        var ref: OpaquePointer?
        try check(git_repository_head(&ref, pointer), "git_repository_head")
        defer { git_reference_free(ref) }
        let detached = git_repository_head_detached(pointer) == 1
        let name = detached ? nil : git_reference_name(ref).map { String(cString: $0) }
        var resolved: OpaquePointer?
        try check(git_reference_resolve(&resolved, ref), "git_reference_resolve")
        defer { git_reference_free(resolved) }
        guard let target = git_reference_target(resolved) else {
            throw GitError(kind: .notFound, function: "git_reference_target", message: "HEAD points at no commit")
        }
        return (name, ObjectID(target))
    }

    /// The fetch and push URLs of a configured remote (`origin`: `url`, and `pushurl` when set),
    /// if the repository has it.
    func remoteURLs(_ name: String) throws(GitError) -> (fetch: String, push: String)? {
        var remote: OpaquePointer?
        let rc = git_remote_lookup(&remote, pointer, name)
        if rc == GIT_ENOTFOUND.rawValue { return nil }
        try check(rc, "git_remote_lookup")
        defer { git_remote_free(remote) }
        guard let fetch = git_remote_url(remote).map({ String(cString: $0) }) else { return nil }
        return (fetch, git_remote_pushurl(remote).map { String(cString: $0) } ?? fetch)
    }

    /// A commit whose tree is `parent`'s with the file at `path` (which must exist) holding
    /// `bytes`, its mode kept; `branch` (`refs/heads/…`) is set to it, replacing what it held.
    func commitFileChange(path: String, bytes: [UInt8], parent: ObjectID, branch: String, message: String) throws(GitError) -> ObjectID {
        var parentID = parent.oid
        var commit: OpaquePointer?
        try check(git_commit_lookup(&commit, pointer, &parentID), "git_commit_lookup")
        defer { git_commit_free(commit) }
        var blob = git_oid()
        try check(bytes.withUnsafeBytes { git_blob_create_from_buffer(&blob, pointer, $0.baseAddress, $0.count) }, "git_blob_create_from_buffer")
        var rootID = git_commit_tree_id(commit)!.pointee
        let components = path.split(separator: "/").map(String.init)
        let newRoot = try replace(components[...], with: blob, inTree: &rootID)
        var newRootID = newRoot
        var tree: OpaquePointer?
        try check(git_tree_lookup(&tree, pointer, &newRootID), "git_tree_lookup")
        defer { git_tree_free(tree) }
        var signature: UnsafeMutablePointer<git_signature>?
        if git_signature_default(&signature, pointer) != 0 {
            try check(git_signature_now(&signature, "Capstan", "capstan@localhost"), "git_signature_now")
        }
        defer { git_signature_free(signature) }
        var made = git_oid()
        var parents: [OpaquePointer?] = [commit]
        try check(parents.withUnsafeMutableBufferPointer { buffer in
            git_commit_create(&made, pointer, nil, signature, signature, "UTF-8", message, tree, 1, buffer.baseAddress)
        }, "git_commit_create")
        var ref: OpaquePointer?
        try check(git_reference_create(&ref, pointer, branch, &made, 1, "capstan: \(message.prefix { $0 != "\n" })"), "git_reference_create")
        git_reference_free(ref)
        return ObjectID(&made)
    }

    /// The tree `tree` with the blob at `path` replaced by `blob` (its mode kept); returns the new
    /// tree's id.
    private func replace(_ path: ArraySlice<String>, with blob: git_oid, inTree tree: inout git_oid) throws(GitError) -> git_oid {
        var t: OpaquePointer?
        try check(git_tree_lookup(&t, pointer, &tree), "git_tree_lookup")
        defer { git_tree_free(t) }
        let name = path.first!
        guard let entry = git_tree_entry_byname(t, name) else {
            throw GitError(kind: .notFound, function: "git_tree_entry_byname", message: "'\(name)' is not in the commit's tree")
        }
        let mode = git_tree_entry_filemode(entry)
        var newID: git_oid
        if path.count == 1 {
            guard mode == GIT_FILEMODE_BLOB || mode == GIT_FILEMODE_BLOB_EXECUTABLE else {
                throw GitError(kind: .other, function: "capstan", message: "'\(name)' is not a regular file in the commit")
            }
            newID = blob
        } else {
            guard mode == GIT_FILEMODE_TREE else {
                throw GitError(kind: .other, function: "capstan", message: "'\(name)' is not a folder in the commit")
            }
            var sub = git_tree_entry_id(entry)!.pointee
            newID = try replace(path.dropFirst(), with: blob, inTree: &sub)
        }
        var builder: OpaquePointer?
        try check(git_treebuilder_new(&builder, pointer, t), "git_treebuilder_new")
        defer { git_treebuilder_free(builder) }
        try check(git_treebuilder_insert(nil, builder, name, &newID, mode), "git_treebuilder_insert")
        var written = git_oid()
        try check(git_treebuilder_write(&written, builder), "git_treebuilder_write")
        return written
    }

    /// Pushes `refspecs` (`+refs/heads/b:refs/heads/b`; `:refs/heads/b` deletes) to `url` with an
    /// anonymous remote, authenticating as a fetch does. A ref the remote refuses is an error.
    func push(url: String, refspecs: [String], credentials: GitCredentials, timeout: TimeInterval) throws(GitError) -> [String] {
        LibGit2.setNetworkTimeout(milliseconds: Int(timeout * 1000))
        LibGit2.resetEndpoints()
        defer { LibGit2.clearNetworkDeadline() }
        let context = RemoteCallbackContext(url: url, credentials: credentials, timeout: timeout)
        var remote: OpaquePointer?
        try check(git_remote_create_anonymous(&remote, pointer, url), "git_remote_create_anonymous")
        defer { git_remote_free(remote) }
        var options = git_push_options()
        git_push_options_init(&options, UInt32(GIT_PUSH_OPTIONS_VERSION))
        options.callbacks = context.callbacks(operation: "pushing to")
        // No proxy, as for fetches: credentials go only to the remote itself.
        git_proxy_options_init(&options.proxy_opts, UInt32(GIT_PROXY_OPTIONS_VERSION))
        let rc: Int32 = withExtendedLifetime(context) {
            withStrArray(refspecs) { git_remote_push(remote, &$0, &options) }
        }
        try context.rethrow(rc, "git_remote_push", operation: "pushing to")
        if let failure = context.failure { throw failure }
        return context.warnings
    }
}
