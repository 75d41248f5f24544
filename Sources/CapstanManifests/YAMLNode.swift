import CapstanCore

/// A YAML node with its position: Capstan's own tree, built from Yams' once per document, so the
/// rest of the loader does not depend on Yams types and every value keeps its line and column.
public final class YAMLNode: Sendable {
    public enum Style: Sendable, Equatable {
        case plain, singleQuoted, doubleQuoted, literal, folded
    }

    public enum Value: Sendable {
        case scalar(String, Style)
        case sequence([YAMLNode])
        case mapping([(key: YAMLNode, value: YAMLNode)])
    }

    public let value: Value
    public let line: Int
    public let column: Int
    /// An explicit tag (`!!str`, `!custom`), if any.
    public let tag: String?

    init(_ value: Value, line: Int, column: Int, tag: String?) {
        self.value = value
        self.line = line
        self.column = column
        self.tag = tag
    }

    public func location(in file: String) -> SourceLocation {
        SourceLocation(file: file, line: line, column: column)
    }

    public var scalar: String? {
        if case .scalar(let s, _) = value { return s }
        return nil
    }

    public var isPlainScalar: Bool {
        if case .scalar(_, .plain) = value { return tag == nil }
        return false
    }

    /// A plain `null`, `~` or empty scalar.
    public var isNull: Bool {
        guard case .scalar(let s, .plain) = value, tag == nil || tag == "tag:yaml.org,2002:null" else { return false }
        return s.isEmpty || s == "~" || s == "null" || s == "Null" || s == "NULL"
    }

    public var mappingPairs: [(key: YAMLNode, value: YAMLNode)]? {
        if case .mapping(let pairs) = value { return pairs }
        return nil
    }

    public var sequenceItems: [YAMLNode]? {
        if case .sequence(let items) = value { return items }
        return nil
    }

    /// The value for a scalar key, if this is a mapping that has it.
    public subscript(key: String) -> YAMLNode? {
        guard case .mapping(let pairs) = value else { return nil }
        for pair in pairs where pair.key.scalar == key { return pair.value }
        return nil
    }

    /// What kind of YAML value this is, in words, for "expected X, found Y" messages.
    public var kindDescription: String {
        switch value {
        case .sequence: return "a list"
        case .mapping: return "a mapping"
        case .scalar(let s, let style):
            if style != .plain { return "a string" }
            if isNull { return "null" }
            if ScalarSyntax.bool(s) != nil { return "a boolean" }
            if ScalarSyntax.integer(s) != nil { return "an integer" }
            if ScalarSyntax.number(s) != nil { return "a number" }
            return "a string"
        }
    }

    /// How many columns the value's text spans on its line (for the caret underline).
    public var displayLength: Int {
        switch value {
        case .scalar(let s, let style):
            let base = s.unicodeScalars.count
            switch style {
            case .plain: return max(1, s.split(separator: "\n").first.map { $0.unicodeScalars.count } ?? base)
            case .singleQuoted, .doubleQuoted: return max(1, (s.split(separator: "\n").first.map { $0.unicodeScalars.count } ?? base) + 2)
            case .literal, .folded: return 1
            }
        case .sequence, .mapping: return 1
        }
    }
}

/// How Capstan reads plain scalars: a strict, YAML 1.2 core-schema-like reading, so `yes`, `on`
/// and `True` are not booleans and `0x1F` is not a number.
public enum ScalarSyntax {
    public static func bool(_ s: String) -> Bool? {
        switch s {
        case "true": return true
        case "false": return false
        default: return nil
        }
    }

    /// Spellings other YAML readers take as booleans; Capstan refuses them where a boolean is due.
    public static func looksBooleanish(_ s: String) -> Bool {
        ["yes", "no", "on", "off", "y", "n", "true", "false"].contains(s.lowercased())
    }

    public static func integer(_ s: String) -> Int64? {
        var digits = s.utf8[...]
        if let first = digits.first, first == UInt8(ascii: "-") || first == UInt8(ascii: "+") { digits = digits.dropFirst() }
        guard !digits.isEmpty, digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        if digits.count > 1 && digits.first == UInt8(ascii: "0") { return nil }
        return Int64(s.utf8.first == UInt8(ascii: "+") ? String(s.dropFirst()) : s)
    }

    public static func number(_ s: String) -> Double? {
        if let i = integer(s) { return Double(i) }
        // Digits, sign, point and exponent only: no `inf`, `nan`, hex or `1_000`.
        var sawDigit = false
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): sawDigit = true
            case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"): continue
            default: return nil
            }
        }
        guard sawDigit, let d = Double(s), d.isFinite else { return nil }
        return d
    }
}
