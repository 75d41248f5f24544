import Foundation

/// A piece of HTML. Literals are markup; every interpolated `String` is escaped, so text from the
/// state documents (model names, reasons, labels: user input) can only ever become text. Raw
/// markup goes in only as another `Markup` value.
///
///     let cell: Markup = "<td title=\"\(reason)\">\(name)</td>"   // reason and name are escaped
struct Markup: ExpressibleByStringInterpolation, Sendable, Equatable {
    private(set) var html: String

    init(stringLiteral value: String) {
        html = value
    }

    init(stringInterpolation: StringInterpolation) {
        html = stringInterpolation.html
    }

    private init(raw: String) {
        html = raw
    }

    static let empty = Markup(raw: "")

    /// Text, escaped.
    static func text(_ text: String) -> Markup {
        Markup(raw: escape(text))
    }

    static func + (lhs: Markup, rhs: Markup) -> Markup {
        Markup(raw: lhs.html + rhs.html)
    }

    static func += (lhs: inout Markup, rhs: Markup) {
        lhs.html += rhs.html
    }

    /// `&`, `<`, `>`, `"` and `'` as character references: safe in text and in quoted attributes.
    /// Control characters other than tab, newline and carriage return (NUL among them, which
    /// HTML cannot carry) become U+FFFD: text from older state or from outside cannot put them
    /// in the page.
    static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            case "\t", "\n", "\r": out.unicodeScalars.append(scalar)
            case _ where scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value): out += "\u{FFFD}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    struct StringInterpolation: StringInterpolationProtocol {
        var html = ""

        init(literalCapacity: Int, interpolationCount: Int) {
            html.reserveCapacity(literalCapacity + interpolationCount * 16)
        }

        mutating func appendLiteral(_ literal: String) {
            html += literal
        }

        mutating func appendInterpolation(_ text: String) {
            html += Markup.escape(text)
        }

        mutating func appendInterpolation(_ markup: Markup) {
            html += markup.html
        }

        mutating func appendInterpolation(_ parts: [Markup]) {
            for part in parts { html += part.html }
        }

        mutating func appendInterpolation(_ number: Int) {
            html += String(number)
        }

        mutating func appendInterpolation(_ number: Int64) {
            html += String(number)
        }
    }
}

/// Formatting shared by the page's sections.
enum PageFormat {
    /// A metric or measure, short: 0.6833, 12.5, 1234, 1.23e+06.
    static func number(_ value: Double) -> String {
        guard value.isFinite else { return value.isNaN ? "NaN" : (value < 0 ? "-∞" : "∞") }
        if value == value.rounded(), abs(value) < 1e6 { return String(Int64(value)) }
        let magnitude = abs(value)
        if magnitude >= 1e6 || magnitude < 1e-3 { return String(format: "%.3g", value) }
        let decimals = magnitude >= 100 ? 1 : 4
        var text = String(format: "%.\(decimals)f", value)
        while text.hasSuffix("0") { text.removeLast() }
        if text.hasSuffix(".") { text.removeLast() }
        return text
    }

    /// Numbers in SVG coordinates: two decimals, no exponent.
    static func coordinate(_ value: Double) -> String {
        String(format: "%.2f", value)
    }

    /// The first 7 characters of a commit id.
    static func shortCommit(_ commit: String) -> String {
        String(commit.prefix(7))
    }

    /// RFC 3339 with or without fractional seconds.
    static func date(_ text: String?) -> Date? {
        guard let text, !text.isEmpty else { return nil }
        if let date = try? Date(text, strategy: Date.ISO8601FormatStyle()) { return date }
        return try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    /// `2026-11-27 18:07:27 UTC`.
    static func absolute(_ date: Date) -> String {
        var seconds = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(format: "%04d-%02d-%02d %02d:%02d:%02d UTC", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
                      Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec))
    }

    /// `just now`, `42s ago`, `5m ago`, `3h ago`, `2d ago`, or `in 40s` for times ahead of `now`.
    static func relative(_ date: Date, now: Date) -> String {
        let delta = now.timeIntervalSince(date)
        let span = abs(delta)
        if span < 1 { return "just now" }
        let text: String
        switch span {
        case ..<60: text = "\(Int(span))s"
        case ..<3600: text = "\(Int(span / 60))m"
        case ..<86_400: text = "\(Int(span / 3600))h"
        default: text = "\(Int(span / 86_400))d"
        }
        return delta >= 0 ? text + " ago" : "in " + text
    }

    /// A `<time>` element: relative text, the absolute time as its tooltip. Unparseable times are
    /// shown as they are.
    static func time(_ text: String?, now: Date) -> Markup {
        guard let text, !text.isEmpty else { return "<span class=\"muted\">—</span>" }
        guard let date = date(text) else { return "<time>\(text)</time>" }
        return "<time datetime=\"\(text)\" title=\"\(absolute(date))\">\(relative(date, now: now))</time>"
    }

    /// An element id fragment for a name: letters, digits, `-`, `_` and `.` kept, anything else `-`.
    static func slug(_ name: String) -> String {
        var out = ""
        for scalar in name.unicodeScalars {
            let keep = ("a"..."z").contains(scalar) || ("A"..."Z").contains(scalar) || ("0"..."9").contains(scalar) || "-_.".unicodeScalars.contains(scalar)
            out.unicodeScalars.append(keep ? scalar : "-")
        }
        return out.isEmpty ? "-" : out
    }

    /// At most `limit` characters, with `…` when cut.
    static func truncated(_ text: String, _ limit: Int) -> String {
        text.count <= limit ? text : String(text.prefix(limit - 1)) + "…"
    }

    /// A CSS class fragment for a status word from the documents (`validated`, `Ready`…): lower
    /// case letters, digits and `-` only.
    static func token(_ word: String) -> String {
        var out = ""
        for scalar in word.lowercased().unicodeScalars {
            let keep = ("a"..."z").contains(scalar) || ("0"..."9").contains(scalar)
            out.unicodeScalars.append(keep ? scalar : "-")
        }
        return out
    }
}
