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
}
