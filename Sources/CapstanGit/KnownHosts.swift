import Crypto
import Foundation

/// An OpenSSH known_hosts file: plain and hashed (`|1|salt|hash`) host entries, `[host]:port`
/// forms, `*`/`?` wildcards and `!` negation, and `@revoked` keys. `@cert-authority` lines are
/// not supported and ignored.
public struct KnownHosts: Sendable {
    struct Entry: Sendable {
        var patterns: [String]
        var keyType: String
        var key: Data
        var revoked: Bool
    }

    public enum Verdict: Sendable, Equatable {
        case trusted
        /// No entry for this host.
        case unknown
        /// Entries exist for the host but none matches the key offered (possible attack).
        case mismatch
        case revoked
    }

    var entries: [Entry]

    public init(text: String) {
        entries = []
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            var fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            var revoked = false
            if let first = fields.first, first.hasPrefix("@") {
                if first == "@revoked" { revoked = true } else { continue }
                fields.removeFirst()
            }
            guard fields.count >= 3, let key = Data(base64Encoded: fields[2]) else { continue }
            entries.append(Entry(patterns: fields[0].split(separator: ",").map(String.init), keyType: fields[1], key: key, revoked: revoked))
        }
    }

    public init(contentsOf path: String) throws {
        self.init(text: try String(contentsOfFile: path, encoding: .utf8))
    }

    /// Checks the raw public key blob a server offered for `host` on `port`.
    public func verify(host: String, port: Int, key: Data) -> Verdict {
        let name = port == 22 ? host : "[\(host)]:\(port)"
        // A revoked key is refused wherever its @revoked line stands (as OpenSSH does).
        if entries.contains(where: { $0.revoked && $0.key == key && Self.matches($0.patterns, name) }) { return .revoked }
        var sawHost = false
        for entry in entries where !entry.revoked && Self.matches(entry.patterns, name) {
            if entry.key == key { return .trusted }
            sawHost = true
        }
        return sawHost ? .mismatch : .unknown
    }

    static func matches(_ patterns: [String], _ name: String) -> Bool {
        var matched = false
        for pattern in patterns {
            if pattern.hasPrefix("|1|") {
                let parts = pattern.split(separator: "|")
                guard parts.count == 3, let salt = Data(base64Encoded: String(parts[1])),
                      let hash = Data(base64Encoded: String(parts[2])) else { continue }
                let mac = HMAC<Insecure.SHA1>.authenticationCode(for: Data(name.utf8), using: SymmetricKey(data: salt))
                if Data(mac) == hash { matched = true }
            } else if pattern.hasPrefix("!") {
                if wildcard(String(pattern.dropFirst()), name) { return false }
            } else if wildcard(pattern, name) {
                matched = true
            }
        }
        return matched
    }

    static func wildcard(_ pattern: String, _ name: String) -> Bool {
        func match(_ p: Substring, _ s: Substring) -> Bool {
            guard let c = p.first else { return s.isEmpty }
            if c == "*" {
                var rest = s
                while true {
                    if match(p.dropFirst(), rest) { return true }
                    if rest.isEmpty { return false }
                    rest = rest.dropFirst()
                }
            }
            guard let d = s.first, c == "?" || c.lowercased() == d.lowercased() else { return false }
            return match(p.dropFirst(), s.dropFirst())
        }
        return match(Substring(pattern), Substring(name))
    }
}
