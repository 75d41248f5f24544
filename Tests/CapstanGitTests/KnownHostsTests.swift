import Foundation
import Testing
@testable import CapstanTestSupport

@testable import CapstanGit

/// OpenSSH known_hosts: which host keys are trusted.
struct KnownHostsTests {
    /// Two real ed25519 public keys (made with ssh-keygen; public, so fine to keep here).
    static let a = "AAAAC3NzaC1lZDI1NTE5AAAAIKMv0ybN9+uWnBzTCwV8jd6vcu2KYLiDH2QtZt+NdyPf"
    static let b = "AAAAC3NzaC1lZDI1NTE5AAAAICGMcSQKzDEApgxBqi8SEpN2lR7/wxwLUDLAHlDmOfki"
    static var keyA: Data { Data(base64Encoded: a)! }
    static var keyB: Data { Data(base64Encoded: b)! }

    @Test func aPlainEntryTrustsItsKeyOnPort22Only() {
        let known = KnownHosts(text: "git.example.com ssh-ed25519 \(Self.a) comment\n")
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyA) == .trusted)
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyB) == .mismatch)
        #expect(known.verify(host: "other.example.com", port: 22, key: Self.keyA) == .unknown)
        #expect(known.verify(host: "git.example.com", port: 2222, key: Self.keyA) == .unknown)
    }

    @Test func severalNamesOnOneLine() {
        let known = KnownHosts(text: "git.example.com,10.0.0.5 ssh-ed25519 \(Self.a)")
        #expect(known.verify(host: "10.0.0.5", port: 22, key: Self.keyA) == .trusted)
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyA) == .trusted)
        #expect(known.verify(host: "10.0.0.6", port: 22, key: Self.keyA) == .unknown)
    }

    @Test func hostAndPortInBrackets() {
        let known = KnownHosts(text: "[git.example.com]:2222 ssh-ed25519 \(Self.a)")
        #expect(known.verify(host: "git.example.com", port: 2222, key: Self.keyA) == .trusted)
        #expect(known.verify(host: "git.example.com", port: 2222, key: Self.keyB) == .mismatch)
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyA) == .unknown)
        #expect(known.verify(host: "git.example.com", port: 2223, key: Self.keyA) == .unknown)
    }

    @Test func hostNamesMatchWithoutRegardToCase() {
        let known = KnownHosts(text: "git.example.com ssh-ed25519 \(Self.a)")
        #expect(known.verify(host: "Git.Example.COM", port: 22, key: Self.keyA) == .trusted)
    }

    /// Entries hashed by `ssh-keygen -H` itself (HMAC-SHA1 of the name under a random salt).
    @Test func hashedEntriesWrittenBySSHKeygen() throws {
        let dir = try TempDir()
        let file = dir.sub("known_hosts").path
        try """
            git.example.com ssh-ed25519 \(Self.a)
            [git.example.com]:2222 ssh-ed25519 \(Self.b)

            """.write(toFile: file, atomically: true, encoding: .utf8)
        let r = try Shell.run("ssh-keygen", ["-H", "-f", file])
        try #require(r.status == 0, "ssh-keygen -H failed: \(r.stderr)")
        let hashed = try String(contentsOfFile: file, encoding: .utf8)
        let lines = hashed.split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines.allSatisfy { $0.hasPrefix("|1|") })
        #expect(!hashed.contains("example.com"))

        let known = try KnownHosts(contentsOf: file)
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyA) == .trusted)
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyB) == .mismatch)
        #expect(known.verify(host: "git.example.com", port: 2222, key: Self.keyB) == .trusted)
        #expect(known.verify(host: "git.example.com", port: 2222, key: Self.keyA) == .mismatch)
        #expect(known.verify(host: "git.example.org", port: 22, key: Self.keyA) == .unknown)
        #expect(known.verify(host: "git.example.com", port: 2200, key: Self.keyB) == .unknown)
    }

    @Test func aMalformedHashIsSkipped() {
        let known = KnownHosts(text: """
            |1|not base64!|also not ssh-ed25519 \(Self.a)
            |1|onlysalt ssh-ed25519 \(Self.a)
            git.example.com ssh-ed25519 \(Self.b)
            """)
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyB) == .trusted)
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyA) == .mismatch)
    }

    @Test func wildcards() {
        let known = KnownHosts(text: """
            *.example.com ssh-ed25519 \(Self.a)
            git?.internal ssh-ed25519 \(Self.b)
            """)
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyA) == .trusted)
        #expect(known.verify(host: "a.b.example.com", port: 22, key: Self.keyA) == .trusted)
        #expect(known.verify(host: "example.com", port: 22, key: Self.keyA) == .unknown)
        #expect(known.verify(host: "git1.internal", port: 22, key: Self.keyB) == .trusted)
        #expect(known.verify(host: "git12.internal", port: 22, key: Self.keyB) == .unknown)
        #expect(known.verify(host: "git.internal", port: 22, key: Self.keyB) == .unknown)
        // On another port the name is [host]:port, which *.example.com does not match.
        #expect(known.verify(host: "git.example.com", port: 2222, key: Self.keyA) == .unknown)
    }

    @Test func aNegatedPatternExcludesAHostFromTheLine() {
        for line in ["*.example.com,!evil.example.com", "!evil.example.com,*.example.com"] {
            let known = KnownHosts(text: "\(line) ssh-ed25519 \(Self.a)")
            #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyA) == .trusted, "\(line)")
            #expect(known.verify(host: "evil.example.com", port: 22, key: Self.keyA) == .unknown, "\(line)")
        }
    }

    @Test func aRevokedKeyIsRefusedAndOthersStillTrusted() {
        let known = KnownHosts(text: """
            @revoked git.example.com ssh-ed25519 \(Self.a)
            git.example.com ssh-ed25519 \(Self.b)
            """)
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyA) == .revoked)
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyB) == .trusted)
    }

    @Test func aRevokedLineAloneDoesNotMakeTheHostKnown() {
        let known = KnownHosts(text: "@revoked git.example.com ssh-ed25519 \(Self.a)")
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyA) == .revoked)
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyB) == .unknown)
    }

    /// OpenSSH refuses a revoked key wherever the @revoked line is; the order of lines must not
    /// turn a revoked key back into a trusted one.
    @Test func aRevokedKeyStaysRevokedWhenATrustedLineComesFirst() {
        let known = KnownHosts(text: """
            git.example.com ssh-ed25519 \(Self.a)
            @revoked git.example.com ssh-ed25519 \(Self.a)
            """)
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyA) == .revoked)
    }

    @Test func certificateAuthorityLinesAreIgnored() {
        let known = KnownHosts(text: "@cert-authority *.example.com ssh-ed25519 \(Self.a)")
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyA) == .unknown)
    }

    @Test func commentsBlankAndBrokenLinesAreSkipped() {
        let known = KnownHosts(text: """
            # a comment
               
            git.example.com ssh-ed25519
            git.example.com ssh-ed25519 %%%not-base64%%%
            git.example.com ssh-ed25519 \(Self.a)
            """)
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyA) == .trusted)
        #expect(known.entries.count == 1)
    }

    /// OpenSSH separates the fields with any whitespace, tabs included.
    @Test func fieldsSeparatedByTabs() {
        let known = KnownHosts(text: "git.example.com\tssh-ed25519\t\(Self.a)\n")
        #expect(known.verify(host: "git.example.com", port: 22, key: Self.keyA) == .trusted)
    }

    @Test func aMissingFileCannotBeRead() {
        #expect(throws: (any Error).self) { try KnownHosts(contentsOf: "/nonexistent/known_hosts") }
    }

    @Test func anOutputOfSSHKeyscanFormatIsRead() throws {
        // `ssh-keyscan -p 2222 host` writes "[host]:2222 TYPE KEY"; ssh-keygen -F finds it too.
        let dir = try TempDir()
        let file = dir.sub("known_hosts").path
        try "[127.0.0.1]:2222 ssh-ed25519 \(Self.a)\n".write(toFile: file, atomically: true, encoding: .utf8)
        let found = try Shell.run("ssh-keygen", ["-F", "[127.0.0.1]:2222", "-f", file])
        #expect(found.status == 0)
        #expect(try KnownHosts(contentsOf: file).verify(host: "127.0.0.1", port: 2222, key: Self.keyA) == .trusted)
    }
}
