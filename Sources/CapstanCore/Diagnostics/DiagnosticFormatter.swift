import Foundation

/// Renders diagnostics for people (compiler style with a caret snippet), for machines (JSON) and
/// for GitHub Actions (workflow commands). Pure: source lines come from a closure.
public struct DiagnosticFormatter: Sendable {
    public enum Style: Sendable { case plain, color }

    public var style: Style

    public init(style: Style = .plain) {
        self.style = style
    }

    /// `FILE:LINE:COL: error: MESSAGE [code]`, the source line, a caret line, then the hint and
    /// related locations.
    public func text(_ diagnostic: Diagnostic, sourceLine: (String, Int) -> String?) -> String {
        let d = diagnostic
        let severityWord = d.severity.rawValue
        let coloredSeverity: String
        switch (style, d.severity) {
        case (.plain, _): coloredSeverity = severityWord
        case (.color, .error): coloredSeverity = "\u{1B}[1;31m\(severityWord)\u{1B}[0m"
        case (.color, .warning): coloredSeverity = "\u{1B}[1;33m\(severityWord)\u{1B}[0m"
        }
        // Paths and messages may quote repository content: a line break or an escape sequence in
        // them must not forge lines or colours (SafeText).
        var out = "\(Self.located(d.location)): \(coloredSeverity): \(SafeText.escaped(d.message)) [\(d.code.rawValue)]\n"
        if let line = sourceLine(d.location.file, d.location.line) {
            let shown = Self.printable(d.redactFromColumn.map { redacted(line, from: $0) } ?? line)
            let expanded = shown.replacingTabs()
            out += "    \(expanded)\n"
            let prefix = String(shown.unicodeScalars.prefix(max(0, d.location.column - 1)))
            let pad = String(repeating: " ", count: prefix.replacingTabs().unicodeScalars.count)
            let available = max(1, expanded.unicodeScalars.count - pad.count)
            let underline = "^" + String(repeating: "~", count: max(0, min(d.length, available) - 1))
            out += "    \(pad)\(style == .color ? "\u{1B}[1;32m\(underline)\u{1B}[0m" : underline)\n"
        }
        if let hint = d.hint {
            out += "    hint: \(SafeText.escaped(hint))\n"
        }
        for related in d.related {
            out += "    note: \(Self.located(related.location)): \(SafeText.escaped(related.message))\n"
        }
        return out
    }

    /// `FILE:LINE:COL` with the file name escaped.
    static func located(_ location: SourceLocation) -> String {
        "\(SafeText.escaped(location.file)):\(location.line):\(location.column)"
    }

    /// One GitHub Actions workflow command per diagnostic.
    public func github(_ diagnostic: Diagnostic) -> String {
        let d = diagnostic
        // Line breaks separate the message, hint and notes; inside each they are escaped.
        var message = "\(SafeText.escaped(d.message)) [\(d.code.rawValue)]"
        if let hint = d.hint { message += "\nhint: \(SafeText.escaped(hint))" }
        for related in d.related { message += "\nnote: \(Self.located(related.location)): \(SafeText.escaped(related.message))" }
        let properties = [
            "file=\(Self.escapeProperty(SafeText.escaped(d.location.file)))",
            "line=\(d.location.line)",
            "col=\(d.location.column)",
            "title=\(Self.escapeProperty("capstan \(d.code.rawValue)"))",
        ].joined(separator: ",")
        return "::\(d.severity.rawValue) \(properties)::\(Self.escapeData(message))"
    }

    /// Replaces everything from the value's column on with a marker, so a secret-looking value
    /// is never echoed.
    private func redacted(_ line: String, from column: Int) -> String {
        String(line.unicodeScalars.prefix(max(0, column - 1))) + "<redacted>"
    }

    /// Control characters (a NUL in a binary file, an escape sequence, a bidirectional override
    /// that would reorder what a reviewer reads) are shown as U+FFFD, never sent to the terminal.
    /// Each stays one column wide, so the caret still lines up.
    static func printable(_ line: String) -> String {
        func unsafe(_ c: Unicode.Scalar) -> Bool { c != "\t" && SafeText.isUnsafe(c) }
        guard line.unicodeScalars.contains(where: unsafe) else { return line }
        var out = String.UnicodeScalarView()
        for c in line.unicodeScalars {
            out.append(unsafe(c) ? "\u{FFFD}" : c)
        }
        return String(out)
    }

    static func escapeData(_ s: String) -> String {
        s.replacingOccurrences(of: "%", with: "%25")
            .replacingOccurrences(of: "\r", with: "%0D")
            .replacingOccurrences(of: "\n", with: "%0A")
    }

    static func escapeProperty(_ s: String) -> String {
        escapeData(s)
            .replacingOccurrences(of: ":", with: "%3A")
            .replacingOccurrences(of: ",", with: "%2C")
    }
}

extension String {
    func replacingTabs() -> String {
        replacingOccurrences(of: "\t", with: "    ")
    }
}
