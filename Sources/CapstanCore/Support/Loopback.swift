/// Host names and addresses that stay on this machine, for the network rules that depend on it
/// (docs/security.md, "Network boundaries"): credentials sent in clear text, the admin API's
/// binding, the `Host` a token-less admin API accepts.
public enum Loopback {
    /// `localhost`, an IPv4 address in 127.0.0.0/8, `::1`, or `::ffff:127.x.x.x`; IPv6 with or
    /// without brackets. Any other name is not loopback, even one that resolves to 127.0.0.1:
    /// what a name resolves to can change (DNS rebinding).
    public static func isLoopbackHost(_ host: some StringProtocol) -> Bool {
        var name = Substring(host)
        if name.hasPrefix("["), name.hasSuffix("]") { name = name.dropFirst().dropLast() }
        if name.utf8.count == 9, name.lowercased() == "localhost" { return true }
        if let v4 = ipv4(name) { return v4[0] == 127 }
        if let v6 = ipv6(name) {
            if v6 == [UInt8](repeating: 0, count: 15) + [1] { return true }
            return v6[0..<10].allSatisfy { $0 == 0 } && v6[10] == 0xFF && v6[11] == 0xFF && v6[12] == 127
        }
        return false
    }

    /// `host`, `host:port`, `[v6]` or `[v6]:port` → the host (without brackets) and the port
    /// (digits, at most 5). Nil when malformed: an unbracketed IPv6 address, a bad port, an
    /// empty host.
    public static func splitAuthority(_ authority: some StringProtocol) -> (host: Substring, port: Substring?)? {
        let text = Substring(authority)
        var host: Substring, rest: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            rest = text[text.index(after: close)...]
        } else {
            let colon = text.firstIndex(of: ":") ?? text.endIndex
            host = text[..<colon]
            rest = text[colon...]
        }
        guard !host.isEmpty else { return nil }
        if rest.isEmpty { return (host, nil) }
        guard rest.first == ":" else { return nil }
        let port = rest.dropFirst()
        guard (1...5).contains(port.utf8.count), port.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }) else { return nil }
        return (host, port)
    }

    /// A dotted-quad IPv4 address (`127.0.0.1`; four decimal parts of 1–3 digits, each ≤ 255).
    public static func ipv4(_ text: some StringProtocol) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var bytes: [UInt8] = []
        for part in parts {
            guard (1...3).contains(part.utf8.count), part.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                  let value = UInt8(part) else { return nil }
            bytes.append(value)
        }
        return bytes
    }

    /// An IPv6 address in text form (RFC 4291: groups of up to 4 hex digits, one `::`, an IPv4
    /// tail) → its 16 bytes. No zone (`%eth0`).
    public static func ipv6(_ text: some StringProtocol) -> [UInt8]? {
        let text = Substring(text)
        guard text.contains(":") else { return nil }
        var head: [UInt16] = [], tail: [UInt16] = []
        var seenGap = false
        // Split at the one `::`, if any.
        var halves: [Substring] = []
        var start = text.startIndex, i = text.startIndex
        while i < text.endIndex {
            let next = text.index(after: i)
            if text[i] == ":", next < text.endIndex, text[next] == ":" {
                halves.append(text[start..<i])
                start = text.index(after: next)
                i = start
                continue
            }
            i = next
        }
        halves.append(text[start...])
        guard halves.count <= 2 else { return nil }
        func groups(_ part: Substring, allowIPv4Tail: Bool) -> [UInt16]? {
            if part.isEmpty { return [] }
            var out: [UInt16] = []
            let pieces = part.split(separator: ":", omittingEmptySubsequences: false)
            for (i, piece) in pieces.enumerated() {
                if i == pieces.count - 1, allowIPv4Tail, piece.contains(".") {
                    guard let v4 = ipv4(piece) else { return nil }
                    out.append(UInt16(v4[0]) << 8 | UInt16(v4[1]))
                    out.append(UInt16(v4[2]) << 8 | UInt16(v4[3]))
                    continue
                }
                guard (1...4).contains(piece.utf8.count), let value = UInt16(piece, radix: 16) else { return nil }
                out.append(value)
            }
            return out
        }
        if halves.count == 2 {
            seenGap = true
            guard let h = groups(halves[0], allowIPv4Tail: false), let t = groups(halves[1], allowIPv4Tail: true) else { return nil }
            head = h
            tail = t
        } else {
            guard let all = groups(halves[0], allowIPv4Tail: true) else { return nil }
            head = all
        }
        let count = head.count + tail.count
        if seenGap ? count > 7 : count != 8 { return nil }
        let words = head + [UInt16](repeating: 0, count: 8 - count) + tail
        return words.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
    }
}
