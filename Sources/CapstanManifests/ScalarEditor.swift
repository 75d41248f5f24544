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
    /// `expected`: anything else (the file changed, a quoted or aliased value) is refused. An
    /// anchor or tag before the value (`&pin 7`, `!!int 7`) is kept.
    public static func replace(in bytes: [UInt8], line: Int, column: Int, expected: String, with replacement: String) throws(Refusal) -> [UInt8] {
        guard line >= 1, column >= 1 else { throw Refusal(message: "no position \(line):\(column)") }
        // The start of the line.
        var offset = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? 3 : 0
        var current = 1
        while current < line {
            guard let newline = bytes[offset...].firstIndex(of: UInt8(ascii: "\n")) else {
                throw Refusal(message: "the file has no line \(line)")
            }
            offset = newline + 1
            current += 1
        }
        // The column, in characters (UTF-8 sequences count once).
        for _ in 1..<column {
            guard offset < bytes.count, bytes[offset] != UInt8(ascii: "\n") else {
                throw Refusal(message: "line \(line) has no column \(column)")
            }
            offset += utf8Length(bytes[offset])
        }
        // Node properties before the value: an anchor and a tag, each followed by spaces.
        while offset < bytes.count, bytes[offset] == UInt8(ascii: "&") || bytes[offset] == UInt8(ascii: "!") {
            while offset < bytes.count, !isSpace(bytes[offset]), bytes[offset] != UInt8(ascii: "\n") { offset += 1 }
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
