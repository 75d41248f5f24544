import Foundation
import Testing
@testable import CapstanTestSupport

@testable import CapstanGit

extension Remote {
    /// Fetches over HTTP from `git http-backend` behind Basic auth (a small Python server).
    @Suite struct HTTPCredentials {
        static let user = "x-access-token"
        static let token = "capstan-test-token-7f3a91c2e5"

        final class Fixture {
            let remote: RemoteFixture
            let server: PythonServer

            init(user: String = HTTPCredentials.user, password: String = HTTPCredentials.token) throws {
                remote = try RemoteFixture()
                server = try PythonServer(script: PythonServer.gitHTTP, arguments: [remote.dir.sub("served").path, user, password])
            }

            var url: String { "http://127.0.0.1:\(server.port)/models.git" }

            func source(_ environment: [String: String], configure: (inout GitCredentials) -> Void = { _ in }) -> GitSource {
                var credentials = GitCredentials(environment: environment)
                configure(&credentials)
                return remote.source(url, credentials: credentials)
            }

            /// Every file below the state directory that contains `secret`.
            func stateFiles(containing secret: String) -> [String] {
                remote.dir.files(under: URL(fileURLWithPath: remote.stateDirectory)).filter { path in
                    let data = (try? Data(contentsOf: URL(fileURLWithPath: remote.stateDirectory).appendingPathComponent(path))) ?? Data()
                    return data.range(of: Data(secret.utf8)) != nil
                }
            }
        }

        @Test func theRightTokenFetchesAndIsStoredNowhere() async throws {
            let f = try Fixture()
            let source = f.source(["CAPSTAN_GIT_TOKEN": Self.token])
            let opened = try await source.open()
            #expect(try await opened.resolve("main").commit.hex == f.remote.first)
            #expect(opened.warnings.isEmpty, "credentials in clear text to 127.0.0.1 stay on this machine: \(opened.warnings)")
            let second = try f.remote.pushCommit("second", files: ["README.md": "# 2\n"])
            #expect(try await source.open().resolve("main").commit.hex == second)
            #expect(!f.remote.dir.files(under: URL(fileURLWithPath: f.remote.stateDirectory)).isEmpty)
            #expect(f.stateFiles(containing: Self.token).isEmpty)
        }

        @Test func aWrongTokenIsAnAuthenticationErrorNamingTheVariableNotTheValue() async throws {
            let f = try Fixture()
            let wrong = "capstan-wrong-token-0b9d44e1"
            let error = try #require(await gitSourceError { try await f.source(["CAPSTAN_GIT_TOKEN": wrong]).open() })
            #expect(error.kind == .authentication)
            #expect(error.repository == f.url)
            #expect(error.message.contains("refused the credentials from $CAPSTAN_GIT_TOKEN"))
            #expect(!error.description.contains(wrong))
            #expect(!error.description.contains(Self.token))
            #expect(f.remote.sourcesEntries.isEmpty, "\(f.remote.sourcesEntries)")
            #expect(f.stateFiles(containing: wrong).isEmpty)
        }

        @Test func noTokenSaysWhichVariableToSet() async throws {
            let f = try Fixture()
            let error = try #require(await gitSourceError { try await f.source([:]).open() })
            #expect(error.kind == .authentication)
            #expect(error.message.contains("needs credentials: set $CAPSTAN_GIT_TOKEN"))
            #expect(error.message.contains("$CAPSTAN_GIT_USERNAME"))
            #expect(error.message.contains("$CAPSTAN_GIT_PASSWORD"))
        }

        @Test func anEmptyTokenCountsAsNone() async throws {
            let f = try Fixture()
            let error = try #require(await gitSourceError { try await f.source(["CAPSTAN_GIT_TOKEN": ""]).open() })
            #expect(error.kind == .authentication)
            #expect(error.message.contains("needs credentials"))
        }

        @Test func userNameAndPasswordFromTheEnvironment() async throws {
            let f = try Fixture(user: "alice", password: "alice-pw-6c1e")
            let opened = try await f.source(["CAPSTAN_GIT_USERNAME": "alice", "CAPSTAN_GIT_PASSWORD": "alice-pw-6c1e"]).open()
            #expect(try await opened.resolve("main").commit.hex == f.remote.first)
            #expect(f.stateFiles(containing: "alice-pw-6c1e").isEmpty)
            let error = try #require(await gitSourceError {
                try await f.source(["CAPSTAN_GIT_USERNAME": "alice", "CAPSTAN_GIT_PASSWORD": "not-it"]).open()
            })
            #expect(error.kind == .authentication)
            #expect(error.message.contains("$CAPSTAN_GIT_USERNAME and $CAPSTAN_GIT_PASSWORD"))
            #expect(!error.description.contains("not-it"))
        }

        @Test func aRenamedTokenVariableIsNamedInMessages() async throws {
            let f = try Fixture()
            let ok = try await f.source(["ACME_GIT_TOKEN": Self.token]) { $0.tokenEnv = "ACME_GIT_TOKEN" }.open()
            #expect(try await ok.resolve("main").commit.hex == f.remote.first)
            let error = try #require(await gitSourceError {
                try await f.source(["ACME_GIT_TOKEN": "wrong-acme-token"]) { $0.tokenEnv = "ACME_GIT_TOKEN" }.open()
            })
            #expect(error.kind == .authentication)
            #expect(error.message.contains("$ACME_GIT_TOKEN"))
            #expect(!error.description.contains("wrong-acme-token"))
        }

        @Test func aRevokedTokenKeepsTheLastFetchedState() async throws {
            let f = try Fixture()
            _ = try await f.source(["CAPSTAN_GIT_TOKEN": Self.token]).open()
            let error = try #require(await gitSourceError { try await f.source(["CAPSTAN_GIT_TOKEN": "revoked-token-31"]).open() })
            #expect(error.kind == .authentication)
            let offline = try await f.source([:]).open(fetch: false)
            #expect(try await offline.resolve("main").commit.hex == f.remote.first)
            #expect(f.stateFiles(containing: "revoked-token-31").isEmpty)
        }
    }

    /// Redirects: credentials go only to the scheme, host and port they were configured for,
    /// checked on the bytes the other servers received.
    @Suite struct Redirects {
        static let token = HTTPCredentials.token

        /// A server on 127.0.0.1 that redirects `/old.git/…` as `options` say (it also serves
        /// `/models.git` itself, behind the token), and a second one on `host` that logs every
        /// request's Authorization header and serves `/models.git` behind the token (or to
        /// anyone with `open`).
        final class TwoServers {
            let remote: RemoteFixture
            let second: PythonServer
            let first: PythonServer
            let log: String

            init(secondHost: String = "localhost", secondOpen: Bool = false, redirectToSecond: Bool = true, firstOptions: [String: Any] = [:]) throws {
                remote = try RemoteFixture()
                log = remote.dir.sub("second.log").path
                let served = remote.dir.sub("served").path
                second = try PythonServer.gitHTTP(root: served, user: HTTPCredentials.user, password: Redirects.token,
                                                  options: ["log": log, "open": secondOpen])
                var options = firstOptions
                options["redirectFrom"] = "/old.git"
                options["redirectTo"] = redirectToSecond ? "http://\(secondHost):\(second.port)/models.git" : "/models.git"
                first = try PythonServer.gitHTTP(root: served, user: HTTPCredentials.user, password: Redirects.token, options: options)
            }

            var url: String { "http://127.0.0.1:\(first.port)/old.git" }

            func open(token: String? = Redirects.token) async throws -> OpenedRepository {
                try await remote.source(url, credentials: GitCredentials(environment: token.map { ["CAPSTAN_GIT_TOKEN": $0] } ?? [:])).open()
            }

            /// The Authorization headers the second server received, one per request (nil: none).
            var secondServerAuthorizations: [String?] { PythonServer.loggedAuthorizations(log) }
        }

        @Test func aRedirectToAnotherHostThatAsksForCredentialsGetsNoneAndSaysWhy() async throws {
            let f = try TwoServers()
            let failure = await gitSourceError { try await f.open() }
            let received = f.secondServerAuthorizations
            #expect(!received.isEmpty, "the redirect was followed")
            #expect(received.allSatisfy { $0 == nil }, "the second host received credentials: \(received)")
            let error = try #require(failure)
            #expect(error.kind == .authentication)
            #expect(error.message.contains("redirected from http://127.0.0.1:\(f.first.port) to http://localhost:\(f.second.port)"), "\(error.message)")
            #expect(error.message.contains("Capstan sends credentials only to the host they were configured for"), "\(error.message)")
            #expect(error.message.contains("update the remote URL"), "\(error.message)")
            #expect(!error.description.contains(Self.token))
            #expect(f.remote.sourcesEntries.isEmpty, "\(f.remote.sourcesEntries)")
        }

        @Test func anotherPortOfTheSameHostIsAnotherHost() async throws {
            let f = try TwoServers(secondHost: "127.0.0.1")
            let failure = await gitSourceError { try await f.open() }
            let received = f.secondServerAuthorizations
            #expect(!received.isEmpty)
            #expect(received.allSatisfy { $0 == nil }, "the second port received credentials: \(received)")
            let error = try #require(failure)
            #expect(error.kind == .authentication)
            #expect(error.message.contains("redirected from http://127.0.0.1:\(f.first.port) to http://127.0.0.1:\(f.second.port)"), "\(error.message)")
        }

        @Test func aRedirectAfterCredentialsWereSentIsNotFollowed() async throws {
            // The first host takes the token, then redirects with a Basic challenge on the 302:
            // libgit2 keeps the credentials on the transport and would answer that challenge at
            // the second host without asking Capstan again.
            let f = try TwoServers(secondOpen: true, firstOptions: ["redirectAfterAuth": true, "challengeOnRedirect": true])
            let failure = await gitSourceError { try await f.open() }
            #expect(f.secondServerAuthorizations.allSatisfy { $0 == nil }, "the second host received credentials: \(f.secondServerAuthorizations)")
            let error = try #require(failure)
            #expect(error.kind == .authentication)
            #expect(error.message.contains("redirected from http://127.0.0.1:\(f.first.port) to http://localhost:\(f.second.port) after credentials were sent"),
                    "\(error.message)")
            #expect(error.message.contains("update the remote URL"), "\(error.message)")
        }

        @Test func aRedirectWithoutCredentialsIsFollowed() async throws {
            // Nothing asks for credentials: the public repository's new home is fetched from.
            let f = try TwoServers(secondOpen: true, firstOptions: ["open": true])
            let opened = try await f.open()
            #expect(try await opened.resolve("main").commit.hex == f.remote.first)
            #expect(!f.secondServerAuthorizations.isEmpty)
            #expect(f.secondServerAuthorizations.allSatisfy { $0 == nil })
        }

        @Test func aRedirectOnTheSameHostKeepsTheCredentials() async throws {
            let f = try TwoServers(redirectToSecond: false)
            let opened = try await f.open()
            #expect(try await opened.resolve("main").commit.hex == f.remote.first)
            #expect(f.secondServerAuthorizations.isEmpty, "nothing went to the second server")
            let error = try #require(await gitSourceError { try await f.open(token: "capstan-wrong-after-redirect") })
            #expect(error.message.contains("refused the credentials"), "\(error.message)")
        }

        @Test(.enabled(if: NonLoopbackAddress.ipv4 != nil, "this machine has no non-loopback IPv4 address"))
        func aTokenOverPlainHTTPToAnotherMachineIsAWarning() async throws {
            let address = try #require(NonLoopbackAddress.ipv4)
            let remote = try RemoteFixture()
            let server = try PythonServer.gitHTTP(root: remote.dir.sub("served").path, user: HTTPCredentials.user, password: Self.token,
                                                  options: ["bind": address])
            let source = remote.source("http://\(address):\(server.port)/models.git", credentials: GitCredentials(environment: ["CAPSTAN_GIT_TOKEN": Self.token]))
            let first = try await source.open()
            #expect(first.warnings.count == 1, "\(first.warnings)")
            let warning = try #require(first.warnings.first)
            #expect(warning.contains("$CAPSTAN_GIT_TOKEN") && warning.contains("plain http://") && warning.contains("http://\(address):\(server.port)"), "\(warning)")
            #expect(warning.contains("use an https:// URL"))
            #expect(!warning.contains(Self.token))
            // Every fetch that sends them says so (the caller decides how often to show it).
            #expect(try await source.open().warnings == first.warnings)
        }

        @Test(arguments: [
            ("http://127.0.0.1:8080/a.git", "http", "127.0.0.1", "8080", "http://127.0.0.1:8080"),
            ("https://github.com/o/r.git", "https", "github.com", "443", "https://github.com"),
            ("http://example.com?x", "http", "example.com", "80", "http://example.com"),
            ("https://[::1]:9443/r", "https", "::1", "9443", "https://[::1]:9443"),
            ("HTTPS://Example.COM:443/r", "https", "Example.COM", "443", "https://Example.COM"),
        ])
        func originsOfURLs(_ url: String, _ scheme: String, _ host: String, _ port: String, _ shown: String) throws {
            let origin = try #require(HTTPOrigin(url: url))
            #expect(origin.scheme == scheme && origin.host == host && origin.port == port)
            #expect(origin.description == shown)
        }
    }
}
