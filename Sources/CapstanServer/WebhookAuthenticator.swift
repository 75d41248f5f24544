import Crypto
import Foundation

/// Checks that a Git webhook comes from whoever holds the shared secret.
///
/// - GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>`;
/// - GitLab: `X-Gitlab-Token: <secret>`;
/// - anything else (Gitea, Bitbucket via a relay, curl): `X-Capstan-Signature: sha256=<hex HMAC-SHA256 of the body>`.
///
/// Comparisons take the same time whatever the input (HMAC verification, and a digest comparison
/// for the GitLab token), so the secret cannot be found byte by byte by timing.
public struct WebhookAuthenticator: Sendable {
    public enum Verdict: Equatable, Sendable {
        case accepted(provider: String)
        case rejected(reason: String)
    }

    private let secret: [UInt8]
    private let secretDigest: [UInt8]

    public init(secret: String) {
        self.secret = Array(secret.utf8)
        secretDigest = Array(SHA256.hash(data: Data(secret.utf8)))
    }

    private var key: SymmetricKey { SymmetricKey(data: secret) }

    /// `header` returns a request header's value by lower-cased name.
    public func verify(body: [UInt8], header: (String) -> String?) -> Verdict {
        if let signature = header("x-hub-signature-256") {
            return check(signature: signature, body: body, provider: "github", headerName: "X-Hub-Signature-256")
        }
        if let token = header("x-gitlab-token") {
            // Hashing both sides gives equal-length values to compare in constant time.
            let given = SHA256.hash(data: Data(token.utf8))
            return Self.constantTimeEqual(Array(given), secretDigest)
                ? .accepted(provider: "gitlab") : .rejected(reason: "X-Gitlab-Token does not match the secret")
        }
        if let signature = header("x-capstan-signature") {
            return check(signature: signature, body: body, provider: "generic", headerName: "X-Capstan-Signature")
        }
        if header("x-hub-signature") != nil {
            return .rejected(reason: "only X-Hub-Signature-256 (SHA-256) is accepted; set the GitHub webhook's secret so it sends one")
        }
        return .rejected(reason: "no signature: send X-Hub-Signature-256 (GitHub), X-Gitlab-Token (GitLab) or X-Capstan-Signature: sha256=<hex HMAC-SHA256 of the body>")
    }

    private func check(signature: String, body: [UInt8], provider: String, headerName: String) -> Verdict {
        let text = signature.trimmingCharacters(in: .whitespaces)
        guard text.hasPrefix("sha256="), let mac = Self.hexBytes(text.dropFirst("sha256=".count)), mac.count == 32 else {
            return .rejected(reason: "\(headerName) is not of the form sha256=<64 hex digits>")
        }
        return HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: body, using: key)
            ? .accepted(provider: provider) : .rejected(reason: "\(headerName) does not match the body signed with the secret")
    }

    /// The signature header value for `body`: `sha256=<hex>` (tests, tools).
    public func signature(of body: [UInt8]) -> String {
        "sha256=" + HMAC<SHA256>.authenticationCode(for: body, using: key).map { String(format: "%02x", $0) }.joined()
    }

    static func hexBytes(_ text: Substring) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(utf8.count / 2)
        var i = 0
        while i < utf8.count {
            guard let hi = nibble(utf8[i]), let lo = nibble(utf8[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for i in a.indices { difference |= a[i] ^ b[i] }
        return difference == 0
    }
}
