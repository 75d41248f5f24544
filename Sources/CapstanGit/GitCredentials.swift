import Foundation

/// How Capstan authenticates to a Git remote. Secrets are read from environment variables whose
/// names are configured here; they are handed to libgit2 and never stored, logged or shown.
public struct GitCredentials: Sendable {
    /// HTTPS: a token (used as the password, with `usernameEnv` or `x-access-token` as the user).
    public var tokenEnv = "CAPSTAN_GIT_TOKEN"
    /// HTTPS: user name and password.
    public var usernameEnv = "CAPSTAN_GIT_USERNAME"
    public var passwordEnv = "CAPSTAN_GIT_PASSWORD"
    /// SSH: a private key file (else the agent at `SSH_AUTH_SOCK`), and its passphrase.
    public var sshKeyPath: String?
    public var sshKeyPassphraseEnv = "CAPSTAN_SSH_KEY_PASSPHRASE"
    /// SSH host keys are checked against this file (default `~/.ssh/known_hosts`).
    public var knownHostsPath: String?
    /// Accept any SSH host key. Off by default; only for throw-away test setups.
    public var insecureSkipHostKeyCheck = false
    /// The environment the variables are read from.
    public var environment: [String: String]

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.environment = environment
    }

    var effectiveKnownHostsPath: String {
        knownHostsPath ?? ((environment["HOME"] ?? NSHomeDirectory()) + "/.ssh/known_hosts")
    }

    func value(_ name: String) -> String? {
        guard let v = environment[name], !v.isEmpty else { return nil }
        return v
    }
}
