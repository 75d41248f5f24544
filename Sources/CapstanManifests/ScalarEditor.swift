/// Changes one plain scalar of a YAML file in place, at the line and column the loader recorded
/// for it (`ManifestOrigin.fields`), and nothing else: comments, order, quoting, indentation,
/// line breaks (CRLF stays CRLF) and a byte order mark are the bytes they were. The file is never
/// parsed and written out again.
public enum ScalarEditor {
    public struct Refusal: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// `bytes` with the plain scalar that starts at `line`:`column` (1-based; the column counts
    /// characters, as the YAML reader does) replaced by `replacement`. The scalar must read
    /// `expected`: anything else (the file changed, a quoted, anchored or aliased value) is
    /// refused. A tag before the value (`!!int 7`) is kept.
    public static func replace(in bytes: [UInt8], line: Int, column: Int, expected: String, with replacement: String) throws(Refusal) -> [UInt8] {
        guard line >= 1, column >= 1 else { throw Refusal(message: "no position \(line):\(column)") }
        // The start of the line. Line breaks are counted as the YAML reader (libyaml) counts
        // them: CRLF, CR, LF, NEL, LS and PS.
        var offset = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? 3 : 0
        var current = 1
        while current < line {
            guard offset < bytes.count else { throw Refusal(message: "the file has no line \(line)") }
            if let length = breakLength(bytes, at: offset) {
                offset += length
                current += 1
            } else {
                offset += utf8Length(bytes[offset])
            }
        }
        // The column, in characters (UTF-8 sequences count once).
        for _ in 1..<column {
            guard offset < bytes.count, breakLength(bytes, at: offset) == nil else {
                throw Refusal(message: "line \(line) has no column \(column)")
            }
            offset += utf8Length(bytes[offset])
        }
        // An anchor is refused: the value may be shared by aliases elsewhere in the file (and the
        // position of an alias is its anchor's). A tag before the value is kept.
        if offset < bytes.count, bytes[offset] == UInt8(ascii: "&") {
            throw Refusal(message: "the value at line \(line) carries a YAML anchor (&…) that other places may share; change it by hand")
        }
        while offset < bytes.count, bytes[offset] == UInt8(ascii: "!") {
            while offset < bytes.count, !isSpace(bytes[offset]), breakLength(bytes, at: offset) == nil { offset += 1 }
            while offset < bytes.count, isSpace(bytes[offset]) { offset += 1 }
        }
        guard offset < bytes.count else { throw Refusal(message: "line \(line) ends before its value") }
        switch bytes[offset] {
        case UInt8(ascii: "*"):
            throw Refusal(message: "the value at line \(line) is a YAML alias (*…) that other places may share; change it by hand")
        case UInt8(ascii: "\""), UInt8(ascii: "'"):
            throw Refusal(message: "the value at line \(line) is quoted; Capstan changes only plain values")
        default:
            break
        }
        var end = offset
        while end < bytes.count, !isEnd(bytes[end]) { end += 1 }
        let found = String(decoding: bytes[offset..<end], as: UTF8.self)
        guard found == expected else {
            throw Refusal(message: "line \(line), column \(column) reads '\(found)', not '\(expected)'; the file changed since it was read")
        }
        return Array(bytes[..<offset]) + Array(replacement.utf8) + Array(bytes[end...])
    }

    static func isSpace(_ b: UInt8) -> Bool { b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") }

    /// The length of the line break at `i` (CRLF, CR, LF, NEL, LS, PS), or nil.
    static func breakLength(_ bytes: [UInt8], at i: Int) -> Int? {
        switch bytes[i] {
        case UInt8(ascii: "\r"): return i + 1 < bytes.count && bytes[i + 1] == UInt8(ascii: "\n") ? 2 : 1
        case UInt8(ascii: "\n"): return 1
        case 0xC2 where i + 1 < bytes.count && bytes[i + 1] == 0x85: return 2
        case 0xE2 where i + 2 < bytes.count && bytes[i + 1] == 0x80 && (bytes[i + 2] == 0xA8 || bytes[i + 2] == 0xA9): return 3
        default: return nil
        }
    }

    /// Where a plain value in block or flow context ends (values here are numbers and words).
    static func isEnd(_ b: UInt8) -> Bool {
        isSpace(b) || b == UInt8(ascii: "\n") || b == UInt8(ascii: "\r") || b == UInt8(ascii: ",")
            || b == UInt8(ascii: "}") || b == UInt8(ascii: "]") || b == UInt8(ascii: "#")
    }

    static func utf8Length(_ lead: UInt8) -> Int {
        switch lead {
        case 0xF0...: return 4
        case 0xE0...: return 3
        case 0xC0...: return 2
        default: return 1
        }
    }
}
