import Foundation
import Testing
@testable import CapstanTestSupport

@testable import CapstanGit

/// `--repo`: paths and URLs, and credentials kept out of both.
struct RepositoryLocationTests {
    /// The error `parse` throws, or nil (recorded as an issue) when it accepts the text.
    static func parseError(_ text: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) -> RepositoryLocation.ParseError? {
        do {
            let location = try RepositoryLocation.parse(text)
            Issue.record("'\(text)' was accepted as \(location)", sourceLocation: sourceLocation)
            return nil
        } catch {
            return error
        }
    }

    @Test(arguments: [
        "https://git.example.com/ml/models.git", "http://127.0.0.1:8080/models.git", "git://git.example.com/models.git",
        "ssh://git@git.example.com:2222/ml/models.git", "ssh://git.example.com/ml/models.git", "file:///srv/git/models.git",
        "HTTPS://Git.Example.com/ml/models.git", "https://git.example.com:8443/ml/models.git",
    ])
    func urlsAreRemotes(_ text: String) throws {
        let location = try RepositoryLocation.parse(text)
        #expect(location == .remote(url: text))
        #expect(location.description == text)
    }

    @Test(arguments: ["git@github.com:acme/models.git", "github.com:acme/models.git", "deploy@10.0.0.5:/srv/models.git"])
    func scpStyleIsARemote(_ text: String) throws {
        #expect(try RepositoryLocation.parse(text) == .remote(url: text))
    }

    @Test func anExistingPathIsLocal() throws {
        let dir = try TempDir()
        #expect(try RepositoryLocation.parse(dir.path) == .local(path: dir.path))
        #expect(try RepositoryLocation.parse(".") == .local(path: "."))
        // A local path that exists wins over the scp-style reading of a colon.
        let colon = dir.sub("a:b")
        try FileManager.default.createDirectory(at: colon, withIntermediateDirectories: true)
        #expect(try RepositoryLocation.parse(colon.path) == .local(path: colon.path))
    }

    @Test func aPathThatDoesNotExistIsRefused() {
        let error = Self.parseError("no/such/repo")
        guard case .notFound(let path)? = error else {
            Issue.record("\(String(describing: error))")
            return
        }
        #expect(path == "no/such/repo")
        let message = error!.description
        #expect(message.contains("'no/such/repo'"))
        #expect(message.contains("--repo"))
    }

    @Test(arguments: ["ftp://host/models.git", "s3://bucket/models", "svn+ssh://host/repo"])
    func otherSchemesAreRefused(_ text: String) {
        let scheme = String(text[..<text.range(of: "://")!.lowerBound])
        let error = Self.parseError(text)
        guard case .unsupportedScheme(let refused)? = error else {
            Issue.record("\(String(describing: error))")
            return
        }
        #expect(refused == scheme)
        #expect(error!.description.contains("'\(scheme)'"))
    }

    @Test(arguments: [
        ("https://alice:s3cr3t-pw@git.example.com/ml/models.git", "s3cr3t-pw"),
        ("https://ghp_T0k3nAsUserName@github.com/acme/models.git", "ghp_T0k3nAsUserName"),
        ("http://oauth2:glpat-abcdef@127.0.0.1:8080/models.git", "glpat-abcdef"),
        ("https://alice:p@ss@word@git.example.com/models.git", "p@ss@word"),
        ("HTTPS://alice:UPPER-s3cret@git.example.com/models.git", "UPPER-s3cret"),
        ("ssh://git:s3cr3t-ssh@git.example.com/models.git", "s3cr3t-ssh"),
    ])
    func credentialsInAURLAreRefusedWithoutShowingThem(_ text: String, _ secret: String) {
        do {
            let location = try RepositoryLocation.parse(text)
            Issue.record("accepted \(location)")
        } catch {
            guard case .credentialsInURL(let shown) = error else {
                Issue.record("refused for another reason: \(error)")
                return
            }
            #expect(!shown.contains(secret))
            #expect(!error.description.contains(secret))
            #expect(error.description.contains("CAPSTAN_GIT_TOKEN"))
            #expect(shown.contains("git.example.com") || shown.contains("github.com") || shown.contains("127.0.0.1"))
        }
    }

    /// Tokens are often base64 and may contain '/': such a URL must be refused too, and the
    /// secret must not be shown.
    @Test func aTokenWithASlashInAURLIsRefusedWithoutShowingIt() {
        let text = "https://oauth2:abc/DEF+ghi@gitlab.example.com/ml/models.git"
        do {
            let location = try RepositoryLocation.parse(text)
            Issue.record("accepted; shown as \(location.description)")
        } catch {
            #expect(!error.description.contains("DEF+ghi"))
        }
    }

    @Test func anSSHUserNameIsNotACredential() throws {
        let location = try RepositoryLocation.parse("ssh://git@git.example.com/models.git")
        #expect(location.description == "ssh://git@git.example.com/models.git")
    }

    @Test(arguments: [
        ("https://user:secret@host/x", "https://host/x"),
        ("https://token@host:8443/x", "https://host:8443/x"),
        ("https://user:p@ss@host/x", "https://host/x"),
        ("https://user:secret@host", "https://host"),
        ("ssh://git@host/x", "ssh://git@host/x"),
        ("ssh://git:pw@host/x", "ssh://host/x"),
        ("git://host/x", "git://host/x"),
        ("https://host/path@with-at", "https://host/path@with-at"),
        ("git@host:org/x.git", "git@host:org/x.git"),
        ("/srv/git/x.git", "/srv/git/x.git"),
    ])
    func redaction(_ url: String, _ shown: String) {
        #expect(RepositoryLocation.redact(url) == shown)
    }

    @Test func mirrorNamesAreStableReadableAndDistinct() throws {
        let a = try RepositoryLocation.parse("https://git.example.com/ml/models.git")
        let b = try RepositoryLocation.parse("https://git.example.com/ml/models2.git")
        let c = try RepositoryLocation.parse("git@git.example.com:ml/models.git")
        #expect(a.mirrorName == (try RepositoryLocation.parse("https://git.example.com/ml/models.git")).mirrorName)
        #expect(Set([a.mirrorName, b.mirrorName, c.mirrorName]).count == 3)
        for name in [a.mirrorName, b.mirrorName, c.mirrorName] {
            #expect(name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "-" }, "\(name)")
            #expect(!name.hasPrefix("-"))
        }
        #expect(a.mirrorName.hasPrefix("https-git-example-com-ml-models-git-"))
        #expect(a.mirrorName.suffix(12).allSatisfy { $0.isHexDigit })
        // A very long URL still gives a short name.
        let long = try RepositoryLocation.parse("https://git.example.com/" + String(repeating: "deep/", count: 60) + "models.git")
        #expect(long.mirrorName.count <= 53)
    }
}
