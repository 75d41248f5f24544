import ArgumentParser
import CapstanCore
import CapstanGit
import CapstanManifests
import Foundation

/// Options shared by the commands that read desired state from Git.
struct RepositoryOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "The Git repository: a local path (work tree or bare), file://, git://, http(s)://, ssh:// or user@host:path.",
        valueName: "path-or-url"))
    var repo: String?

    @Option(name: .long, help: ArgumentHelp("Branch, tag or full commit id to read (default: the remote's HEAD).", valueName: "ref"))
    var ref: String?

    @Option(name: .customLong("state-dir"), help: ArgumentHelp(
        "Capstan's state directory; remote mirrors live here (default: $CAPSTAN_STATE_DIR or .capstan).", valueName: "dir"))
    var stateDir: String?

    @Flag(name: .customLong("no-fetch"), help: "Read a remote's mirror as last fetched, without contacting the remote.")
    var noFetch = false

    @Option(name: .customLong("fetch-timeout"), help: ArgumentHelp("Give up on a fetch after this long (default 60s).", valueName: "duration"))
    var fetchTimeout: String = "60s"

    @OptionGroup var git: GitCredentialOptions

    var stateDirectory: String {
        stateDir ?? ProcessInfo.processInfo.environment["CAPSTAN_STATE_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? ".capstan"
    }

    func validate() throws {
        if case .failure = ManifestDuration.parse(fetchTimeout) {
            throw ValidationError("--fetch-timeout '\(fetchTimeout)' is not a duration such as 30s or 2m")
        }
    }

    func source(for repository: String) throws -> GitSource {
        let location: RepositoryLocation
        do {
            location = try RepositoryLocation.parse(repository)
        } catch {
            throw CommandFailure(message: error.description, exitCode: ExitStatus.usage)
        }
        let timeout = (try? ManifestDuration.parse(fetchTimeout).get()).map { Double($0.milliseconds) / 1000 } ?? 60
        return GitSource(location: location, options: GitSourceOptions(stateDirectory: stateDirectory, credentials: git.credentials,
                                                                       fetchTimeout: max(1, timeout)))
    }
}

/// How to authenticate to a Git remote: for the commands that fetch (`--repo`) and push
/// (`promote`). Secrets are named by environment variable, never given on the command line.
struct GitCredentialOptions: ParsableArguments {
    @Option(name: .customLong("git-token-env"), help: ArgumentHelp("Environment variable holding an HTTPS token.", valueName: "name"))
    var gitTokenEnv = "CAPSTAN_GIT_TOKEN"

    @Option(name: .customLong("git-username-env"), help: ArgumentHelp("Environment variable holding the HTTPS user name.", valueName: "name"))
    var gitUsernameEnv = "CAPSTAN_GIT_USERNAME"

    @Option(name: .customLong("git-password-env"), help: ArgumentHelp("Environment variable holding the HTTPS password.", valueName: "name"))
    var gitPasswordEnv = "CAPSTAN_GIT_PASSWORD"

    @Option(name: .customLong("ssh-key"), help: ArgumentHelp("SSH private key file (default: the SSH agent).", valueName: "file"))
    var sshKey: String?

    @Option(name: .customLong("known-hosts"), help: ArgumentHelp("known_hosts file for SSH host keys (default ~/.ssh/known_hosts).", valueName: "file"))
    var knownHosts: String?

    var credentials: GitCredentials {
        var credentials = GitCredentials()
        credentials.tokenEnv = gitTokenEnv
        credentials.usernameEnv = gitUsernameEnv
        credentials.passwordEnv = gitPasswordEnv
        credentials.sshKeyPath = sshKey
        credentials.knownHostsPath = knownHosts
        return credentials
    }

    func validate() throws {
        for name in [gitTokenEnv, gitUsernameEnv, gitPasswordEnv] where !Names.isEnvName(name) {
            throw ValidationError("'\(name)' is not an environment variable name")
        }
    }
}

/// Desired state read from one commit.
struct GitDesiredState {
    var opened: OpenedRepository
    var revision: ResolvedRevision
    var result: LoadResult
}

enum GitDesiredStateReader {
    /// Opens (and fetches) the repository once; loads each ref's desired state.
    static func open(_ source: GitSource, fetch: Bool = true) async throws -> OpenedRepository {
        let opened: OpenedRepository
        do {
            opened = try await source.open(fetch: fetch)
        } catch {
            throw CommandFailure(message: error.description)
        }
        for warning in opened.warnings {
            Terminal.err("capstan: warning: \(warning)\n")
        }
        for forced in opened.forcedUpdates {
            Terminal.err("capstan: note: \(forced.ref) was force-pushed (\(forced.from.short) → \(forced.to.short), not a fast-forward); following the new commit\n")
        }
        return opened
    }

    /// Loads `ref` like `load`, but when a remote's mirror turns out to be damaged (an object that
    /// cannot be read), throws the mirror away, clones it again and loads once more: a broken
    /// mirror is re-created, never trusted.
    static func openAndLoad(_ source: GitSource, fetch: Bool, ref: String?, keepFields: Bool = false) async throws -> GitDesiredState {
        try await withRecovery(source, fetch: fetch) { opened in
            let state = try await load(opened, ref: ref, keepFields: keepFields)
            return (state, isDamaged(state))
        }
    }

    /// Runs `body` on the opened repository; when it reports (or throws) damage in a remote's
    /// mirror, throws the mirror away, clones it again and runs `body` once more.
    static func withRecovery<T>(_ source: GitSource, fetch: Bool,
                                _ body: (OpenedRepository) async throws -> (T, damaged: Bool)) async throws -> T {
        if let value = try await attempt(source, fetch: fetch, body) { return value }
        // The damaged repository is closed by now: libgit2 caches pack files by path, so the
        // new clone must not be opened while the old one is still open.
        Terminal.err("capstan: note: the mirror of \(source.location) is damaged; cloning it again\n")
        source.discardMirror()
        return try await body(try await open(source, fetch: true)).0
    }

    static func isDamaged(_ state: GitDesiredState) -> Bool {
        state.result.diagnostics.contains { $0.code == .fileUnreadable && $0.message.contains("cannot read blob") }
    }

    /// One try; nil when a mirror proved damaged.
    private static func attempt<T>(_ source: GitSource, fetch: Bool,
                                   _ body: (OpenedRepository) async throws -> (T, damaged: Bool)) async throws -> T? {
        let opened = try await open(source, fetch: fetch)
        do {
            let (value, damaged) = try await body(opened)
            return opened.mirrorPath != nil && damaged ? nil : value
        } catch let failure as CommandFailure where opened.mirrorPath != nil && failure.corrupt {
            return nil
        }
    }

    static func load(_ opened: OpenedRepository, ref: String?, keepFields: Bool = false, cache: ParseCache? = nil) async throws -> GitDesiredState {
        let revision: ResolvedRevision
        do {
            revision = try await opened.resolve(ref)
        } catch {
            throw CommandFailure(message: error.description)
        }
        do {
            let source = try await GitManifestSource(repository: opened.repository, revision: revision, repositoryName: opened.location.description)
            let loader = ManifestLoader(source: source, decoder: ManifestDecoder(keepFields: keepFields), cache: cache)
            return GitDesiredState(opened: opened, revision: revision, result: try await loader.load())
        } catch let failure as CommandFailure {
            throw failure
        } catch let error as GitError where error.kind == .corrupt {
            var failure = CommandFailure(message: "\(opened.location) @ \(revision.ref) (\(revision.commit.short)): the repository is damaged: \(error.message); check it with git fsck")
            failure.corrupt = true
            throw failure
        } catch {
            throw CommandFailure(message: "\(opened.location) @ \(revision.ref) (\(revision.commit.short)): \(error)")
        }
    }
}
