import CapstanCore
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
    /// For http(s): where credentials may go (the URL's scheme, host and port).
    let origin: HTTPOrigin?
    /// What the fetch should tell its caller (credentials sent in clear text).
    var warnings: [String] = []
    /// The count (`LibGit2.lastConnection`) of the last connection that presented a TLS
    /// certificate: a later credentials request on it comes over https (for messages).
    var tlsConnection: UInt64?
    /// What the operation is, for messages (`fetching`, `pushing to`).
    var operation = "fetching"

    init(url: String, credentials: GitCredentials, timeout: TimeInterval) {
        self.url = url
        self.shownURL = RepositoryLocation.redact(url)
        self.credentials = credentials
        self.deadline = Date().addingTimeInterval(timeout)
        self.origin = HTTPOrigin(url: url)
    }

    /// The callbacks of a remote operation (credentials, certificate and redirect checks, the
    /// deadline), with this context as their payload: keep it alive while they may run.
    func callbacks(operation: String) -> git_remote_callbacks {
        var callbacks = git_remote_callbacks()
        git_remote_init_callbacks(&callbacks, UInt32(GIT_REMOTE_CALLBACKS_VERSION))
        callbacks.payload = Unmanaged.passUnretained(self).toOpaque()
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
                return context.fail(.network, "\(context.operation) \(context.shownURL) took longer than the timeout")
            }
            return 0
        }
        callbacks.push_transfer_progress = { _, _, _, payload in
            let context = Unmanaged<RemoteCallbackContext>.fromOpaque(payload!).takeUnretainedValue()
            if Date() > context.deadline {
                return context.fail(.network, "\(context.operation) \(context.shownURL) took longer than the timeout")
            }
            return 0
        }
        callbacks.push_update_reference = { refname, status, payload in
            let context = Unmanaged<RemoteCallbackContext>.fromOpaque(payload!).takeUnretainedValue()
            if let status {
                let ref = refname.map { String(cString: $0) } ?? "?"
                return context.fail(.other, "the remote refused \(ref): \(String(cString: status))")
            }
            return 0
        }
        self.operation = operation
        return callbacks
    }

    /// Throws the error of a failed libgit2 call, with the explanation a callback left.
    func rethrow(_ rc: Int32, _ function: String, operation: String) throws(GitError) {
        guard rc < 0 else { return }
        var error = GitError.last(code: rc, function: function)
        if let failure = failure ?? refusedRedirect() {
            error = GitError(kind: failure.kind, code: rc, function: function, message: failure.message)
        }
        error.context = "\(operation) \(shownURL)"
        throw error
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
    func fetch(url: String, refspecs: [String], credentials: GitCredentials, timeout: TimeInterval) throws(GitError) -> FetchResult {
        // Per thread: this fetch runs on the calling thread, start to end.
        LibGit2.setNetworkTimeout(milliseconds: Int(timeout * 1000))
        LibGit2.resetEndpoints()
        defer { LibGit2.clearNetworkDeadline() }
        let context = RemoteCallbackContext(url: url, credentials: credentials, timeout: timeout)
        var remote: OpaquePointer?
        try check(git_remote_create_anonymous(&remote, pointer, url), "git_remote_create_anonymous")
        defer { git_remote_free(remote) }

        var callbacks = context.callbacks(operation: "fetching")
        func rethrow(_ rc: Int32, _ function: String) throws(GitError) {
            try context.rethrow(rc, function, operation: "fetching")
        }

        // No proxy (GIT_PROXY_NONE): every connection goes to the remote itself, which the
        // credentials check relies on (it compares the socket's host and port with the URL's).
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
            withStrArray(refspecs) { git_remote_fetch(remote, &$0, &options, "capstan: fetch") }
        }
        try rethrow(rc, "git_remote_fetch")
        return FetchResult(defaultBranch: defaultBranch, warnings: context.warnings)
    }
}

/// What a fetch found besides the objects.
struct FetchResult {
    /// The remote's default branch (`refs/heads/main`) when it advertises one.
    var defaultBranch: String?
    /// Things the user should know (credentials sent in clear text).
    var warnings: [String]
}

/// The scheme, host and port of an `http(s)://` URL: the one place its credentials may go.
struct HTTPOrigin: Equatable, CustomStringConvertible {
    var scheme: String
    var host: String
    /// As libgit2 gives it to the socket: the URL's port, else 80 or 443.
    var port: String

    init?(url: String) {
        guard let schemeEnd = url.range(of: "://") else { return nil }
        let scheme = url[..<schemeEnd.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else { return nil }
        let rest = url[schemeEnd.upperBound...]
        var authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        if let at = authority.lastIndex(of: "@") { authority = authority[authority.index(after: at)...] }
        var host = Substring(authority), port = Substring("")
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") { port = after.dropFirst() }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            port = authority[authority.index(after: colon)...]
        }
        self.scheme = scheme
        self.host = String(host)
        self.port = port.isEmpty ? (scheme == "https" ? "443" : "80") : String(port)
    }

    init(scheme: String, endpoint: NetworkEndpoint) {
        self.scheme = scheme
        self.host = endpoint.host
        self.port = endpoint.port
    }

    var endpoint: NetworkEndpoint { NetworkEndpoint(host: host, port: port) }

    /// `http://127.0.0.1:8080`, `https://github.com` (a default port is left out).
    var description: String {
        let shownHost = host.contains(":") ? "[\(host)]" : host
        let defaultPort = scheme == "https" ? "443" : "80"
        return "\(scheme)://\(shownHost)\(port == defaultPort ? "" : ":\(port)")"
    }

    /// Credentials sent to it in clear text stay on this machine.
    var isLoopback: Bool { Loopback.isLoopbackHost(host) }
}

extension RemoteCallbackContext {
    func credential(_ out: UnsafeMutablePointer<UnsafeMutablePointer<git_credential>?>?, _ userFromURL: String?, _ allowed: UInt32) -> Int32 {
        let type: UInt32
        if allowed & GIT_CREDENTIAL_SSH_KEY.rawValue != 0 { type = GIT_CREDENTIAL_SSH_KEY.rawValue }
        else if allowed & GIT_CREDENTIAL_USERPASS_PLAINTEXT.rawValue != 0 { type = GIT_CREDENTIAL_USERPASS_PLAINTEXT.rawValue }
        else if allowed & GIT_CREDENTIAL_USERNAME.rawValue != 0 { type = GIT_CREDENTIAL_USERNAME.rawValue }
        else { return fail(.authentication, "\(shownURL) asks for an authentication method Capstan does not support") }
        // A redirect makes libgit2 connect to another host but hand this callback the URL it
        // started from: where the request went is known from the socket stream.
        var target: NetworkEndpoint?
        // The scheme cannot get weaker on the same host and port (libgit2 follows no redirect
        // from https to http), so host and port decide; the scheme is for the message.
        if let origin, let (endpoint, count) = LibGit2.lastConnection() {
            target = endpoint
            if !endpoint.matches(origin.endpoint) {
                let scheme = tlsConnection == count ? "https" : "http"
                return fail(.authentication, Self.redirectRefusal(from: origin, to: HTTPOrigin(scheme: scheme, endpoint: endpoint), url: shownURL, already: false))
            }
        }
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
                sending("$\(c.tokenEnv)", to: target)
                return git_credential_userpass_plaintext_new(out, c.value(c.usernameEnv) ?? "x-access-token", token)
            }
            if let user = c.value(c.usernameEnv), let password = c.value(c.passwordEnv) {
                sending("$\(c.usernameEnv) and $\(c.passwordEnv)", to: target)
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

    /// Credentials are about to go to the origin: from now on this fetch connects nowhere else
    /// (libgit2 keeps them on the transport and may offer them to a redirect's target unasked);
    /// over plain http to another machine, the caller is warned.
    private func sending(_ source: String, to target: NetworkEndpoint?) {
        guard let origin else { return }
        LibGit2.pin(target ?? origin.endpoint)
        if origin.scheme == "http", !origin.isLoopback, !warnings.contains(where: { $0.contains(source) }) {
            warnings.append("the credentials from \(source) are sent to \(origin) over plain http://, readable by anyone on the way; use an https:// URL for \(shownURL)")
        }
    }

    /// The connection the pin refused, as the error the user sees.
    func refusedRedirect() -> GitError? {
        guard let origin, let refused = LibGit2.refusedConnection() else { return nil }
        // Never connected: its scheme is a guess from the port.
        let scheme = refused.port == "443" ? "https" : refused.port == "80" ? "http" : origin.scheme
        return GitError(kind: .authentication, function: "capstan",
                        message: Self.redirectRefusal(from: origin, to: HTTPOrigin(scheme: scheme, endpoint: refused), url: shownURL, already: true))
    }

    static func redirectRefusal(from origin: HTTPOrigin, to target: HTTPOrigin, url: String, already: Bool) -> String {
        "\(url) redirected from \(origin) to \(target)\(already ? " after credentials were sent to \(origin)" : ", which asks for credentials"); "
            + "Capstan sends credentials only to the host they were configured for (\(origin)) and follows no redirect to another host with them; "
            + "if \(target) is the repository's new home, update the remote URL (--repo) to it"
    }

    func checkCertificate(_ cert: UnsafeMutablePointer<git_cert>?, valid: Bool, host: String) -> Int32 {
        guard let cert else { return fail(.hostKey, "no certificate from \(host)") }
        guard cert.pointee.cert_type == GIT_CERT_HOSTKEY_LIBSSH2 else {
            // TLS: libgit2 has verified the chain against the system's trust store.
            tlsConnection = LibGit2.lastConnection()?.count
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

/// Runs `body` with `strings` as a `git_strarray` (refspecs), valid only during the call.
func withStrArray<T>(_ strings: [String], _ body: (inout git_strarray) -> T) -> T {
    var cStrings = strings.map { strdup($0) }
    defer { cStrings.forEach { free($0) } }
    return cStrings.withUnsafeMutableBufferPointer { buffer in
        var array = git_strarray(strings: buffer.baseAddress, count: buffer.count)
        return body(&array)
    }
}
