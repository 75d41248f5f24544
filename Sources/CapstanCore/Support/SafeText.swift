/// Text from a repository shown to people: file names and quoted values may hold line breaks,
/// terminal escapes or bidirectional controls that would forge output lines, colours or the
/// order of what a reviewer reads. These helpers name such text unambiguously.
public enum SafeText {
    /// True for a character that must never reach a terminal or a one-line format as it is: C0
    /// and C1 controls, DEL, line and paragraph separators, and bidirectional controls.
    public static func isUnsafe(_ scalar: Unicode.Scalar) -> Bool {
        switch scalar.value {
        case 0x00...0x1F, 0x7F...0x9F: return true
        case 0x061C, 0x200E, 0x200F, 0x2028, 0x2029, 0x202A...0x202E, 0x2066...0x2069: return true
        default: return false
        }
    }

    /// True when `name` can be shown as it is: no character of `isUnsafe`.
    public static func isPrintable(_ name: some StringProtocol) -> Bool {
        !name.unicodeScalars.contains(where: isUnsafe)
    }

    /// `text` with every unsafe character escaped: `\n`, `\r`, `\t`, else `\u{1B}`.
    public static func escaped(_ text: some StringProtocol) -> String {
        guard !isPrintable(text) else { return String(text) }
        var out = ""
        out.reserveCapacity(text.utf8.count + 8)
        for scalar in text.unicodeScalars {
            out += escape(scalar)
        }
        return out
    }

    /// A name given as bytes (a directory entry, a Git tree entry): valid UTF-8 is shown as by
    /// `escaped(_:)`; each byte that is not part of valid UTF-8 as `\xFF`.
    public static func escaped(bytes: some Collection<UInt8>) -> String {
        var out = ""
        var rest = Array(bytes)[...]
        while !rest.isEmpty {
            // The longest valid prefix, then one invalid byte.
            var decoder = UTF8()
            var iterator = rest.makeIterator()
            var consumed = 0
            loop: while true {
                switch decoder.decode(&iterator) {
                case .scalarValue(let scalar):
                    out += escape(scalar)
                    consumed += UTF8.width(scalar)
                case .emptyInput:
                    break loop
                case .error:
                    let byte = rest[rest.startIndex + consumed]
                    out += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
                    consumed += 1
                    break loop
                }
            }
            rest = rest.dropFirst(consumed)
        }
        return out
    }

    private static func escape(_ scalar: Unicode.Scalar) -> String {
        guard isUnsafe(scalar) else { return String(scalar) }
        switch scalar {
        case "\n": return "\\n"
        case "\r": return "\\r"
        case "\t": return "\\t"
        default: return "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
        }
    }
}
