/// A duration written in a manifest: one or more `<integer><unit>` parts, units `ms`, `s`, `m`,
/// `h`, `d` (for example `250ms`, `90s`, `30m`, `2h`, `1d`, `1h30m`). Stored in milliseconds.
public struct ManifestDuration: Hashable, Sendable, Codable, Comparable, CustomStringConvertible {
    public var milliseconds: Int64
    /// The text as written, so plans and diffs show what the user wrote.
    public var text: String

    public init(milliseconds: Int64, text: String? = nil) {
        self.milliseconds = milliseconds
        self.text = text ?? Self.format(milliseconds)
    }

    public var seconds: Double { Double(milliseconds) / 1000 }

    public var description: String { text }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.milliseconds < rhs.milliseconds }

    public enum ParseError: Error, Equatable, Sendable {
        case empty
        case missingUnit
        case unknownUnit(String)
        case missingNumber
        case tooLarge
        /// Units must go from largest to smallest, each at most once (`1h30m`, not `30m1h`).
        case unitOrder
    }

    /// Parses `90s`, `30m`, `2h`, `1d`, `250ms`, `1h30m`. Rejects bare numbers, negative values,
    /// spaces and unknown units.
    public static func parse(_ text: String) -> Result<ManifestDuration, ParseError> {
        guard !text.isEmpty else { return .failure(.empty) }
        var total: Int64 = 0
        var lastFactor = Int64.max
        var scalars = Array(text.unicodeScalars)[...]
        while !scalars.isEmpty {
            var number: Int64 = 0
            var digits = 0
            while let c = scalars.first, c.properties.numericType != nil, ("0"..."9").contains(c) {
                let (m, o1) = number.multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(Int64(c.value - 48))
                if o1 || o2 { return .failure(.tooLarge) }
                number = a
                digits += 1
                scalars = scalars.dropFirst()
            }
            if digits == 0 { return .failure(.missingNumber) }
            var unit = ""
            while let c = scalars.first, !("0"..."9").contains(c) {
                unit.unicodeScalars.append(c)
                scalars = scalars.dropFirst()
            }
            let factor: Int64
            switch unit {
            case "": return .failure(.missingUnit)
            case "ms": factor = 1
            case "s": factor = 1000
            case "m": factor = 60_000
            case "h": factor = 3_600_000
            case "d": factor = 86_400_000
            default: return .failure(.unknownUnit(unit))
            }
            if factor >= lastFactor { return .failure(.unitOrder) }
            lastFactor = factor
            let (part, o3) = number.multipliedReportingOverflow(by: factor)
            let (sum, o4) = total.addingReportingOverflow(part)
            if o3 || o4 { return .failure(.tooLarge) }
            total = sum
        }
        return .success(ManifestDuration(milliseconds: total, text: text))
    }

    /// The shortest exact spelling: `1h30m`, `250ms`, `0s`.
    public static func format(_ milliseconds: Int64) -> String {
        if milliseconds == 0 { return "0s" }
        var rest = milliseconds
        var out = ""
        for (unit, factor) in [("d", Int64(86_400_000)), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)] {
            if rest >= factor {
                out += "\(rest / factor)\(unit)"
                rest %= factor
            }
        }
        return out
    }
}
