/// Rules for names that appear in manifests.
public enum Names {
    static func isLowerAlnum(_ c: Unicode.Scalar) -> Bool { ("a"..."z").contains(c) || ("0"..."9").contains(c) }
    public static func isAlnum(_ c: Unicode.Scalar) -> Bool { isLowerAlnum(c) || ("A"..."Z").contains(c) }

    /// Why `s` is not a DNS label (RFC 1123), or nil when it is one.
    public static func dnsLabelProblem(_ s: String) -> String? {
        let u = Array(s.unicodeScalars)
        if u.isEmpty { return "it is empty" }
        if u.count > 63 { return "it is \(u.count) characters long; the limit is 63" }
        if u.contains(where: { ("A"..."Z").contains($0) }) { return "it contains uppercase letters" }
        if let bad = u.first(where: { !isLowerAlnum($0) && $0 != "-" }) { return "it contains '\(bad)'" }
        if u.first == "-" || u.last == "-" { return "it must start and end with a letter or digit" }
        return nil
    }

    /// A DNS label close to `s`, to suggest.
    public static func dnsLabelSuggestion(_ s: String) -> String? {
        var out = ""
        for c in s.lowercased().unicodeScalars {
            if isLowerAlnum(c) { out.unicodeScalars.append(c) } else if out.last != "-" { out += "-" }
        }
        while out.hasPrefix("-") { out.removeFirst() }
        while out.hasSuffix("-") { out.removeLast() }
        out = String(out.prefix(63))
        while out.hasSuffix("-") { out.removeLast() }
        return out.isEmpty || out == s ? nil : out
    }

    public static func isEnvName(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, !("0"..."9").contains(first) else { return false }
        return s.unicodeScalars.allSatisfy { isAlnum($0) || $0 == "_" }
    }

    public static func aliasNameProblem(_ s: String) -> String? {
        let u = Array(s.unicodeScalars)
        if u.isEmpty { return "it is empty" }
        if u.count > 63 { return "it is longer than 63 characters" }
        if s == "latest" { return "'latest' is reserved (it means the newest validated version)" }
        if u.first == "v" || u.first == "V", u.count > 1, u.dropFirst().allSatisfy({ ("0"..."9").contains($0) }) {
            return "names like v7 are reserved for version numbers"
        }
        guard let first = u.first, ("a"..."z").contains(first) else { return "it must start with a lowercase letter" }
        if let bad = u.first(where: { !isLowerAlnum($0) && $0 != "-" && $0 != "_" }) {
            return "it contains '\(bad)'; use lowercase letters, digits, '-' and '_'"
        }
        return nil
    }

    /// The longest metric name.
    public static let metricNameLimit = 128

    /// Why `s` is not a metric name, or nil when it is one. A metric name is 1 to 128 ASCII
    /// letters, digits and `_ . - /`: the same rule for metrics files (training and validation)
    /// and for the gates of a manifest.
    public static func metricNameProblem(_ s: String) -> String? {
        let u = Array(s.unicodeScalars)
        if u.isEmpty { return "it is empty" }
        if let bad = u.first(where: { !isAlnum($0) && !"_.-/".unicodeScalars.contains($0) }) {
            let shown = PrintableText.escaped(String(bad))
            return "it contains '\(shown)'" + (shown == String(bad) ? "" : " (a control character)")
        }
        if u.count > metricNameLimit { return "it is \(u.count) characters long; the limit is \(metricNameLimit)" }
        return nil
    }

    public static func labelKeyProblem(_ s: String) -> String? {
        let parts = s.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let name = parts.last, !name.isEmpty else { return "write name or prefix/name" }
        if name.count > 63 { return "the name part is longer than 63 characters" }
        let u = Array(name.unicodeScalars)
        if !isAlnum(u.first!) || !isAlnum(u.last!) { return "it must start and end with a letter or digit" }
        if let bad = u.first(where: { !isAlnum($0) && !"-_.".unicodeScalars.contains($0) }) { return "it contains '\(bad)'" }
        if parts.count == 2 {
            if parts[0].isEmpty || parts[0].count > 253 { return "the prefix must be a DNS subdomain" }
        }
        return nil
    }
}

/// Paths inside the repository: `/`-separated, relative, normalized.
public enum RepoPath {
    /// `a/./b/../c/` → `a/c`; `.` and `` → `` (the root). Nil when the path climbs above the root.
    public static func normalize(_ path: String) -> String? {
        var parts: [Substring] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            switch part {
            case ".": continue
            case "..":
                if parts.isEmpty { return nil }
                parts.removeLast()
            default: parts.append(part)
            }
        }
        return parts.joined(separator: "/")
    }

    /// Whether `normalize(path)` is `path` itself (no empty, `.` or `..` name), without building
    /// anything: `""` (the root) is.
    public static func isNormalized(_ path: String) -> Bool {
        if path.isEmpty { return true }
        var length = 0, dots = 0
        for byte in path.utf8 {
            if byte == UInt8(ascii: "/") {
                if length == 0 || length == dots && dots <= 2 { return false }
                length = 0
                dots = 0
            } else {
                length += 1
                if byte == UInt8(ascii: ".") { dots += 1 }
            }
        }
        return !(length == 0 || length == dots && dots <= 2)
    }

    /// True when `path` is `folder` or inside it (`folder` "" is the root).
    public static func isInside(_ path: String, _ folder: String) -> Bool {
        folder.isEmpty || path == folder || path.hasPrefix(folder + "/")
    }

    public static func join(_ a: String, _ b: String) -> String {
        if a.isEmpty { return b }
        if b.isEmpty { return a }
        return a + "/" + b
    }
}

/// Absolute paths outside the repository.
public enum HostPath {
    /// Lexically normalized absolute path (no `.`/`..`), or nil if it is not absolute.
    public static func normalize(_ path: String) -> String? {
        guard path.hasPrefix("/") else { return nil }
        var parts: [Substring] = []
        for part in path.split(separator: "/") {
            switch part {
            case ".": continue
            case "..": if !parts.isEmpty { parts.removeLast() }
            default: parts.append(part)
            }
        }
        return "/" + parts.joined(separator: "/")
    }

    /// True when `path` lies under `root` (both absolute).
    public static func isUnder(_ path: String, root: String) -> Bool {
        guard let p = normalize(path), let r = normalize(root) else { return false }
        return r == "/" || p == r || p.hasPrefix(r + "/")
    }
}
