import CLibGit2
import Foundation

/// State shared with libgit2's C callbacks during one remote operation.
final class RemoteCallbackContext {
    let url: String
    let shownURL: String
    let credentials: GitCredentials
    var attempts: [UInt32: Int] = [:]
    /// A clearer explanation than libgit2's, set by a callback that refused.
    var failure: GitError?
    let deadline: Date

    init(url: String, credentials: GitCredentials, timeout: TimeInterval) {
        self.url = url
        self.shownURL = RepositoryLocation.redact(url)
        self.credentials = credentials
        self.deadline = Date().addingTimeInterval(timeout)
    }

    func fail(_ kind: GitError.Kind, _ message: String) -> Int32 {
        failure = GitError(kind: kind, function: "capstan", message: message)
        git_error_set_str(Int32(GIT_ERROR_CALLBACK.rawValue), message)
        return GIT_EUSER.rawValue
    }

    /// Host and port of the URL (scp-style and ssh://), for known_hosts.
    var hostAndPort: (String, Int) {
        if let r = url.range(of: "://") {
            let authority = url[r.upperBound...].split(separator: "/", maxSplits: 1).first.map(String.init) ?? ""
            var hostPort = authority.split(separator: "@").last.map(String.init) ?? authority
            var port = url.hasPrefix("ssh://") ? 22 : 0
            if hostPort.hasPrefix("["), let close = hostPort.firstIndex(of: "]") {
                let host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
                if let p = Int(hostPort[close...].dropFirst(2)) { port = p }
                return (host, port)
            }
            if let colon = hostPort.lastIndex(of: ":"), let p = Int(hostPort[hostPort.index(after: colon)...]) {
                port = p
                hostPort = String(hostPort[..<colon])
            }
            return (hostPort, port)
        }
        let beforeColon = url.split(separator: ":", maxSplits: 1).first.map(String.init) ?? url
        return (beforeColon.split(separator: "@").last.map(String.init) ?? beforeColon, 22)
    }
}

extension Repository {
    /// Fetches `refspecs` from `url` with an anonymous remote (nothing about the remote, least
    /// of all credentials, is written to the repository's config), pruning deleted refs. Returns
    /// the remote's default branch (`refs/heads/main`) when it advertises one.
    func fetch(url: String, refspecs: [String], credentials: GitCredentials, timeout: TimeInterval) throws(GitError) -> String? {
        // Per thread: this fetch runs on the calling thread, start to end.
        LibGit2.setNetworkTimeout(milliseconds: Int(timeout * 1000))
        defer { LibGit2.clearNetworkDeadline() }
        let context = RemoteCallbackContext(url: url, credentials: credentials, timeout: timeout)
        var remote: OpaquePointer?
        try check(git_remote_create_anonymous(&remote, pointer, url), "git_remote_create_anonymous")
        defer { git_remote_free(remote) }

        var callbacks = git_remote_callbacks()
        git_remote_init_callbacks(&callbacks, UInt32(GIT_REMOTE_CALLBACKS_VERSION))
        callbacks.payload = Unmanaged.passUnretained(context).toOpaque()
        callbacks.credentials = { out, _, usernameFromURL, allowed, payload in
            let context = Unmanaged<RemoteCallbackContext>.fromOpaque(payload!).takeUnretainedValue()
            return context.credential(out, usernameFromURL.map { String(cString: $0) }, allowed)
        }
        callbacks.certificate_check = { cert, valid, host, payload in
            let context = Unmanaged<RemoteCallbackContext>.fromOpaque(payload!).takeUnretainedValue()
            return context.checkCertificate(cert, valid: valid != 0, host: host.map { String(cString: $0) } ?? "")
        }
        callbacks.transfer_progress = { _, payload in
            let context = Unmanaged<RemoteCallbackContext>.fromOpaque(payload!).takeUnretainedValue()
            if Date() > context.deadline {
                return context.fail(.network, "fetching \(context.shownURL) took longer than the timeout")
            }
            return 0
        }

        func rethrow(_ rc: Int32, _ function: String) throws(GitError) {
            guard rc < 0 else { return }
            var error = GitError.last(code: rc, function: function)
            if let failure = context.failure { error = GitError(kind: failure.kind, code: rc, function: function, message: failure.message) }
            error.context = "fetching \(context.shownURL)"
            throw error
        }

        var proxy = git_proxy_options()
        git_proxy_options_init(&proxy, UInt32(GIT_PROXY_OPTIONS_VERSION))
        let connected = withExtendedLifetime(context) { git_remote_connect(remote, GIT_DIRECTION_FETCH, &callbacks, &proxy, nil) }
        try rethrow(connected, "git_remote_connect")
        var defaultBranch: String?
        var buffer = git_buf()
        if git_remote_default_branch(&buffer, remote) == 0, let p = buffer.ptr {
            defaultBranch = String(cString: p)
        }
        git_buf_dispose(&buffer)

        var options = git_fetch_options()
        git_fetch_options_init(&options, UInt32(GIT_FETCH_OPTIONS_VERSION))
        options.callbacks = callbacks
        options.prune = GIT_FETCH_PRUNE
        options.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_NONE
        let rc: Int32 = withExtendedLifetime(context) {
            var cStrings = refspecs.map { strdup($0) }
            defer { cStrings.forEach { free($0) } }
            return cStrings.withUnsafeMutableBufferPointer { buffer in
                var array = git_strarray(strings: buffer.baseAddress, count: buffer.count)
                return git_remote_fetch(remote, &array, &options, "capstan: fetch")
            }
        }
        try rethrow(rc, "git_remote_fetch")
        return defaultBranch
    }
}

extension RemoteCallbackContext {
    func credential(_ out: UnsafeMutablePointer<UnsafeMutablePointer<git_credential>?>?, _ userFromURL: String?, _ allowed: UInt32) -> Int32 {
        let type: UInt32
        if allowed & GIT_CREDENTIAL_SSH_KEY.rawValue != 0 { type = GIT_CREDENTIAL_SSH_KEY.rawValue }
        else if allowed & GIT_CREDENTIAL_USERPASS_PLAINTEXT.rawValue != 0 { type = GIT_CREDENTIAL_USERPASS_PLAINTEXT.rawValue }
        else if allowed & GIT_CREDENTIAL_USERNAME.rawValue != 0 { type = GIT_CREDENTIAL_USERNAME.rawValue }
        else { return fail(.authentication, "\(shownURL) asks for an authentication method Capstan does not support") }
        attempts[type, default: 0] += 1
        let c = credentials
        if attempts[type]! > 1 {
            switch type {
            case GIT_CREDENTIAL_USERPASS_PLAINTEXT.rawValue:
                let source = c.value(c.tokenEnv) != nil ? "$\(c.tokenEnv)" : "$\(c.usernameEnv) and $\(c.passwordEnv)"
                return fail(.authentication, "\(shownURL) refused the credentials from \(source); check that they are current and allowed to read the repository")
            case GIT_CREDENTIAL_SSH_KEY.rawValue:
                let source = c.sshKeyPath.map { "the key \($0)" } ?? "the keys in the SSH agent"
                return fail(.authentication, "\(shownURL) refused \(source); check that the key is allowed to read the repository")
            default:
                return fail(.authentication, "\(shownURL) refused the user name")
            }
        }
        switch type {
        case GIT_CREDENTIAL_USERPASS_PLAINTEXT.rawValue:
            if let token = c.value(c.tokenEnv) {
                return git_credential_userpass_plaintext_new(out, c.value(c.usernameEnv) ?? "x-access-token", token)
            }
            if let user = c.value(c.usernameEnv), let password = c.value(c.passwordEnv) {
                return git_credential_userpass_plaintext_new(out, user, password)
            }
            return fail(.authentication, "\(shownURL) needs credentials: set $\(c.tokenEnv) (or $\(c.usernameEnv) and $\(c.passwordEnv))")
        case GIT_CREDENTIAL_SSH_KEY.rawValue:
            let user = userFromURL ?? "git"
            if let key = c.sshKeyPath {
                guard FileManager.default.isReadableFile(atPath: key) else {
                    return fail(.authentication, "SSH key \(key) cannot be read")
                }
                let publicKey = FileManager.default.fileExists(atPath: key + ".pub") ? key + ".pub" : nil
                return git_credential_ssh_key_new(out, user, publicKey, key, c.value(c.sshKeyPassphraseEnv))
            }
            if c.value("SSH_AUTH_SOCK") != nil {
                return git_credential_ssh_key_from_agent(out, user)
            }
            return fail(.authentication, "\(shownURL) needs an SSH key: pass --ssh-key FILE or start an SSH agent (SSH_AUTH_SOCK)")
        default:
            return git_credential_username_new(out, userFromURL ?? "git")
        }
    }

    func checkCertificate(_ cert: UnsafeMutablePointer<git_cert>?, valid: Bool, host: String) -> Int32 {
        guard let cert else { return fail(.hostKey, "no certificate from \(host)") }
        guard cert.pointee.cert_type == GIT_CERT_HOSTKEY_LIBSSH2 else {
            // TLS: libgit2 has verified the chain against the system's trust store.
            return valid ? 0 : fail(.hostKey, "the TLS certificate of \(host) is not trusted")
        }
        if credentials.insecureSkipHostKeyCheck { return 0 }
        let hostkey = UnsafeMutableRawPointer(cert).assumingMemoryBound(to: git_cert_hostkey.self).pointee
        guard hostkey.type.rawValue & GIT_CERT_SSH_RAW.rawValue != 0, let raw = hostkey.hostkey else {
            return fail(.hostKey, "the SSH server \(host) did not present a raw host key to check")
        }
        let key = Data(bytes: raw, count: Int(hostkey.hostkey_len))
        let (urlHost, port) = hostAndPort
        let path = credentials.effectiveKnownHostsPath
        guard let known = try? KnownHosts(contentsOf: path) else {
            return fail(.hostKey, "cannot read known_hosts file \(path) to check the SSH host key of \(urlHost); create it (ssh-keyscan -p \(port) \(urlHost) >> \(path)) or pass --known-hosts FILE")
        }
        switch known.verify(host: urlHost, port: port, key: key) {
        case .trusted:
            return 0
        case .unknown:
            return fail(.hostKey, "the SSH host key of \(urlHost) (port \(port)) is not in \(path); verify it and add it, for example with ssh-keyscan -p \(port) \(urlHost) >> \(path)")
        case .mismatch:
            return fail(.hostKey, "the SSH host key of \(urlHost) (port \(port)) does not match \(path): it changed, or someone is intercepting the connection; refusing to fetch")
        case .revoked:
            return fail(.hostKey, "the SSH host key of \(urlHost) is marked @revoked in \(path)")
        }
    }
}
