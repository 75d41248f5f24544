import CapstanServer
import Crypto
import Foundation

/// A webhook request as the authenticator sees it: which signature headers are present, their
/// value, and the body. Input: one byte choosing the headers, then the value up to the first
/// line break, then the body.
///
/// Invariant: the verdict is what an independent reading of the rules gives: GitHub and the
/// generic header accept exactly `sha256=<hex HMAC-SHA256 of the body>` (hex in either case,
/// surrounding blanks ignored), GitLab exactly the secret's bytes, nothing else is accepted, and
/// a rejection's reason never contains the secret.
public enum WebhookFuzz {
    public static let secret = "It's a Secret to Everybody"
    static let authenticator = WebhookAuthenticator(secret: secret)

    /// The header sets the first byte chooses from (lower-case names).
    static let layouts: [[String]] = [
        ["x-hub-signature-256"], ["x-gitlab-token"], ["x-capstan-signature"], ["x-hub-signature"], [],
        ["x-hub-signature-256", "x-gitlab-token"], ["x-gitlab-token", "x-capstan-signature"], ["x-hub-signature", "x-capstan-signature"],
    ]

    public static func run(_ bytes: [UInt8]) -> [String] {
        guard let selector = bytes.first else { return [] }
        let rest = bytes.dropFirst()
        let end = rest.firstIndex(of: UInt8(ascii: "\n")) ?? rest.endIndex
        let value = String(decoding: rest[..<end], as: UTF8.self)
        let body = Array(rest[end...].dropFirst())
        let names = layouts[Int(selector) % layouts.count]
        let verdict = authenticator.verify(body: body) { name in names.contains(name) ? value : nil }

        let expected: WebhookAuthenticator.Verdict?
        let mac = HMAC<SHA256>.authenticationCode(for: body, using: SymmetricKey(data: Array(secret.utf8)))
        let hex = mac.map { String(format: "%02x", $0) }.joined()
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        let macMatches = trimmed.hasPrefix("sha256=") && trimmed.dropFirst(7).lowercased() == hex
        if names.contains("x-hub-signature-256") {
            expected = macMatches ? .accepted(provider: "github") : nil
        } else if names.contains("x-gitlab-token") {
            expected = Array(value.utf8) == Array(secret.utf8) ? .accepted(provider: "gitlab") : nil
        } else if names.contains("x-capstan-signature") {
            expected = macMatches ? .accepted(provider: "generic") : nil
        } else {
            expected = nil
        }
        var violations: [String] = []
        switch (verdict, expected) {
        case (.accepted(let got), .accepted(let want)?) where got == want:
            break
        case (.rejected(let reason), nil):
            if reason.contains(secret) { violations.append("a rejection reason contains the secret") }
            if reason.isEmpty { violations.append("a rejection without a reason") }
        default:
            violations.append("verdict \(verdict), expected \(expected.map { "\($0)" } ?? "a rejection") for headers \(names)")
        }
        return violations
    }
}
