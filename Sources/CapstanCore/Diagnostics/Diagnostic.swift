/// Where something is in a manifest file: a path as the user knows it (relative to the folder or
/// repository being loaded) and a 1-based line and column (columns count Unicode scalars).
public struct SourceLocation: Hashable, Sendable, Codable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// How bad a diagnostic is. Errors make `capstan validate` fail; warnings only with `--strict`.
public enum Severity: String, Sendable, Codable, Comparable {
    case error
    case warning

    public static func < (lhs: Severity, rhs: Severity) -> Bool {
        lhs == .error && rhs == .warning
    }
}

/// One problem found in the manifests, compiler style.
///
/// `code` is stable across releases (see `DiagnosticCode`); `message` says what is wrong and
/// quotes the subject; `hint` says what to do about it. `related` points at other places that
/// take part in the problem (the first definition of a duplicate, for example).
public struct Diagnostic: Hashable, Sendable, Codable, Error {
    public var severity: Severity
    public var code: DiagnosticCode
    public var message: String
    public var location: SourceLocation
    /// How many columns the caret underline spans (at least 1).
    public var length: Int
    public var hint: String?
    public var related: [RelatedLocation]
    /// When set, the source line is echoed only up to this column: from there on it may hold
    /// something that looks like a secret.
    public var redactFromColumn: Int?

    /// True when part of the source line is withheld.
    public var redactSource: Bool {
        get { redactFromColumn != nil }
        set { redactFromColumn = newValue ? min(redactFromColumn ?? location.column, location.column) : nil }
    }

    public init(
        _ severity: Severity,
        _ code: DiagnosticCode,
        _ message: String,
        at location: SourceLocation,
        length: Int = 1,
        hint: String? = nil,
        related: [RelatedLocation] = [],
        redactSource: Bool = false
    ) {
        self.severity = severity
        self.code = code
        self.message = message
        self.location = location
        self.length = max(1, length)
        self.hint = hint
        self.related = related
        self.redactFromColumn = redactSource ? location.column : nil
    }

    public static func error(
        _ code: DiagnosticCode, _ message: String, at location: SourceLocation,
        length: Int = 1, hint: String? = nil, related: [RelatedLocation] = []
    ) -> Diagnostic {
        Diagnostic(.error, code, message, at: location, length: length, hint: hint, related: related)
    }

    public static func warning(
        _ code: DiagnosticCode, _ message: String, at location: SourceLocation,
        length: Int = 1, hint: String? = nil, related: [RelatedLocation] = [], redactSource: Bool = false
    ) -> Diagnostic {
        Diagnostic(.warning, code, message, at: location, length: length, hint: hint, related: related,
                   redactSource: redactSource)
    }
}

/// A second place that belongs to a diagnostic ("first defined here").
public struct RelatedLocation: Hashable, Sendable, Codable {
    public var location: SourceLocation
    public var message: String

    public init(_ location: SourceLocation, _ message: String) {
        self.location = location
        self.message = message
    }
}

extension Array where Element == Diagnostic {
    /// Withholds every secret-looking value from every diagnostic's source line: a line that
    /// one diagnostic redacts is redacted (from the same column) in all diagnostics on it.
    public func redactingSharedLines() -> [Diagnostic] {
        var sensitive: [String: Int] = [:]
        for d in self {
            guard let column = d.redactFromColumn else { continue }
            let key = "\(d.location.file):\(d.location.line)"
            sensitive[key] = Swift.min(sensitive[key] ?? column, column)
        }
        guard !sensitive.isEmpty else { return self }
        return map { d in
            guard let column = sensitive["\(d.location.file):\(d.location.line)"] else { return d }
            var copy = d
            copy.redactFromColumn = Swift.min(d.redactFromColumn ?? column, column)
            return copy
        }
    }

    public var errorCount: Int { lazy.filter { $0.severity == .error }.count }
    public var warningCount: Int { lazy.filter { $0.severity == .warning }.count }
    public var hasErrors: Bool { contains { $0.severity == .error } }

    /// Sorted by file, line, column, then code: the order users read them in.
    public func sortedForDisplay() -> [Diagnostic] {
        sorted { a, b in
            if a.location.file != b.location.file { return a.location.file < b.location.file }
            if a.location.line != b.location.line { return a.location.line < b.location.line }
            if a.location.column != b.location.column { return a.location.column < b.location.column }
            if a.severity != b.severity { return a.severity < b.severity }
            return a.code.rawValue < b.code.rawValue
        }
    }
}
