import Foundation

/// Where desired state comes from: a repository on this machine, read in place, or a remote,
/// mirrored into the state directory.
public enum RepositoryLocation: Sendable, Equatable, CustomStringConvertible {
    case local(path: String)
    case remote(url: String)

    public enum ParseError: Error, Sendable, CustomStringConvertible {
        case credentialsInURL(String)
        case unsupportedScheme(String)
        case notFound(String)

        public var description: String {
            switch self {
            case .credentialsInURL(let shown):
                return "the URL of \(shown) carries credentials (not shown here); remove them from the URL and set CAPSTAN_GIT_TOKEN (or CAPSTAN_GIT_USERNAME and CAPSTAN_GIT_PASSWORD) instead"
            case .unsupportedScheme(let scheme):
                return "unsupported repository URL scheme '\(scheme)'; use a path, file://, git://, http(s)://, ssh:// or user@host:path"
            case .notFound(let path):
                return "'\(path)' is neither a repository on this machine nor a URL; check --repo"
            }
        }
    }

    /// Reads `--repo`: a local path (a work tree or a bare repository), `file://`, `git://`,
    /// `http(s)://`, `ssh://` or scp-style `user@host:path`.
    public static func parse(_ text: String) throws(ParseError) -> RepositoryLocation {
        if let schemeEnd = text.range(of: "://") {
            let scheme = text[..<schemeEnd.lowerBound].lowercased()
            guard ["file", "git", "http", "https", "ssh"].contains(scheme) else { throw .unsupportedScheme(scheme) }
            if scheme == "http" || scheme == "https" {
                let authority = text[schemeEnd.upperBound...].split(separator: "/", maxSplits: 1).first ?? ""
                if authority.contains("@") || userInfoEnd(text) != nil { throw .credentialsInURL(redact(text)) }
            }
            if scheme == "ssh", let end = userInfoEnd(text), text[schemeEnd.upperBound..<end].contains(":") {
                throw .credentialsInURL(redact(text))
            }
            return .remote(url: text)
        }
        if FileManager.default.fileExists(atPath: text) { return .local(path: text) }
        // scp-style: [user@]host:path, with no slash before the colon.
        if let colon = text.firstIndex(of: ":"), !text[..<colon].contains("/"), colon != text.startIndex {
            return .remote(url: text)
        }
        throw .notFound(text)
    }

    /// The location without any user info or password, for messages and logs.
    public var description: String {
        switch self {
        case .local(let path): return path
        case .remote(let url): return Self.redact(url)
        }
    }

    /// Where user info ends (the `@`), when the URL has user info with a password or token:
    /// `user:secret@` — found even when the secret contains `/` (base64 tokens do), which a
    /// plain authority parse would take for the start of the path.
    static func userInfoEnd(_ url: String) -> String.Index? {
        guard let schemeEnd = url.range(of: "://") else { return nil }
        let rest = url[schemeEnd.upperBound...]
        guard let at = rest.lastIndex(of: "@") else { return nil }
        let info = rest[..<at]
        // `host/path@x` without a colon before the @ is a path, not credentials.
        guard let colon = info.firstIndex(of: ":") else {
            return info.contains("/") ? nil : at
        }
        // `host:port/path@x`: digits then a slash after the colon is a port, not a password.
        let afterColon = info[info.index(after: colon)...]
        if let slash = afterColon.firstIndex(of: "/"), afterColon[..<slash].allSatisfy(\.isNumber), !afterColon[..<slash].isEmpty {
            return nil
        }
        return at
    }

    /// `https://user:secret@host/x` → `https://host/x`; `ssh://git@host/x` keeps the user name.
    public static func redact(_ url: String) -> String {
        guard let schemeEnd = url.range(of: "://"), let at = userInfoEnd(url) else { return url }
        let user = url[schemeEnd.upperBound..<at]
        let keep = url.hasPrefix("ssh://") && !user.contains(":") && !user.contains("/") ? String(user) + "@" : ""
        return String(url[..<schemeEnd.upperBound]) + keep + String(url[url.index(after: at)...])
    }

    /// `text` with every occurrence of this location's URL replaced by its redacted form (libgit2
    /// quotes URLs in its messages).
    public func scrub(_ text: String) -> String {
        guard case .remote(let url) = self, Self.redact(url) != url else { return text }
        return text.replacingOccurrences(of: url, with: Self.redact(url))
    }

    /// A stable folder name for a remote's mirror: readable part + hash of the URL.
    var mirrorName: String {
        let text = description
        var slug = ""
        for c in text.lowercased().unicodeScalars {
            if ("a"..."z").contains(c) || ("0"..."9").contains(c) { slug.unicodeScalars.append(c) } else if !slug.hasSuffix("-") { slug += "-" }
        }
        slug = String(slug.suffix(40)).trimmingCharacters(in: CharacterSet(charactersIn: "-"))
        return "\(slug)-\(SHA.hex(text).prefix(12))"
    }
}
