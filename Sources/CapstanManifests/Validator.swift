import Foundation
import CapstanCore

/// Collects diagnostics and field locations while one document is checked against its schema.
public struct ValidationContext {
    public let file: String
    public var diagnostics: [Diagnostic] = []
    /// Field path → position of its value.
    public var fields: [String: FieldPosition] = [:]
    /// Shares path strings between the documents of a file (they repeat in every document).
    let paths: PathInterner

    init(file: String, paths: PathInterner = PathInterner()) {
        self.file = file
        self.paths = paths
    }

    mutating func record(_ path: String, _ node: YAMLNode) {
        fields[paths.intern(path)] = FieldPosition(line: node.line, column: node.column)
    }

    func loc(_ node: YAMLNode) -> SourceLocation { node.location(in: file) }

    mutating func error(_ code: DiagnosticCode, _ message: String, _ node: YAMLNode, length: Int? = nil,
                        hint: String? = nil, related: [RelatedLocation] = []) {
        diagnostics.append(.error(code, message, at: loc(node), length: length ?? node.displayLength, hint: hint, related: related))
    }

    mutating func warning(_ code: DiagnosticCode, _ message: String, _ node: YAMLNode, length: Int? = nil,
                          hint: String? = nil, redact: Bool = false) {
        diagnostics.append(.warning(code, message, at: loc(node), length: length ?? node.displayLength, hint: hint,
                                    redactSource: redact))
    }
}

/// Checks YAML nodes against `FieldType`s.
enum Validator {
    /// Validates `node` as `type`. `path` names the field (`spec.train.timeout`) for messages.
    /// `key` is the mapping key that holds the value, where one does: problems with the value as a
    /// whole ("missing field") point at it.
    static func check(_ node: YAMLNode, as type: FieldType, path: String, ctx: inout ValidationContext, key: YAMLNode? = nil,
                      record: Bool = true) {
        if record { ctx.record(path, node) }
        switch type {
        case .string(let rule):
            guard let s = stringValue(node, path: path, ctx: &ctx) else { return }
            checkString(s, rule: rule, node: node, path: path, ctx: &ctx)
        case .integer(let min, let max):
            guard let i = integerValue(node, path: path, ctx: &ctx) else { return }
            if let min, i < min {
                ctx.error(.invalidValue, "\(path) must be at least \(min), found \(i)", node)
            } else if let max, i > max {
                ctx.error(.invalidValue, "\(path) must be at most \(max), found \(i)", node)
            }
        case .number(let min, let max):
            guard let d = numberValue(node, path: path, ctx: &ctx) else { return }
            if let min, d < min {
                ctx.error(.invalidValue, "\(path) must be at least \(fmt(min)), found \(node.scalar ?? "")", node)
            } else if let max, d > max {
                let hint = max == 1 && d <= 100 ? "rates are fractions between 0 and 1: \(fmt(d))% is \(fmt(d / 100))" : nil
                ctx.error(.invalidValue, "\(path) must be at most \(fmt(max)), found \(node.scalar ?? "")", node, hint: hint)
            }
        case .boolean:
            _ = boolValue(node, path: path, ctx: &ctx)
        case .duration(let allowZero):
            if let d = durationValue(node, path: path, ctx: &ctx), d.milliseconds == 0, !allowZero {
                ctx.error(.invalidValue, "\(path) must be longer than zero", node, hint: "give a positive duration, for example 30s or 10m")
            }
        case .enumeration(let allowed):
            guard let s = stringValue(node, path: path, ctx: &ctx) else { return }
            if !allowed.contains(s) {
                let suggestion = Suggest.closest(to: s, among: allowed)
                ctx.error(.invalidEnum, "\(path) must be one of \(allowed.map { "'\($0)'" }.joined(separator: ", ")); found '\(s)'", node,
                          hint: suggestion.map { "did you mean '\($0)'?" })
            }
        case .list(let element):
            guard let items = node.sequenceItems else {
                wrongType(node, expected: "a list", path: path, ctx: &ctx)
                return
            }
            for (i, item) in items.enumerated() {
                check(item, as: element, path: "\(path)[\(i)]", ctx: &ctx)
            }
        case .map(let keyRule, let valueType):
            if node.isNull { return }
            guard let pairs = node.mappingPairs else {
                wrongType(node, expected: "a mapping", path: path, ctx: &ctx)
                return
            }
            for (key, value) in pairs {
                guard let k = key.scalar else {
                    ctx.error(.wrongType, "keys of \(path) must be strings", key)
                    continue
                }
                checkString(k, rule: keyRule, node: key, path: "\(path) key", ctx: &ctx)
                check(value, as: valueType, path: "\(path).\(k)", ctx: &ctx, key: key, record: keyRule != .labelKey && keyRule != .any)
            }
        case .object(let schema):
            checkObject(node, schema: schema, path: path, ctx: &ctx, owner: key)
        case .argv:
            checkArgv(node, path: path, ctx: &ctx)
        case .anyValue:
            checkAny(node, path: path, ctx: &ctx)
        case .aliasTarget:
            checkAliasTarget(node, path: path, ctx: &ctx)
        case .trainInput:
            checkInput(node, path: path, ctx: &ctx)
        }
    }

    static func checkObject(_ node: YAMLNode, schema: ObjectSchema, path: String, ctx: inout ValidationContext, owner: YAMLNode? = nil) {
        if node.isNull, schema.allOptional { return }
        guard let pairs = node.mappingPairs else {
            wrongType(node, expected: "a mapping", path: path, ctx: &ctx)
            return
        }
        var present: Set<String> = []
        var suggested: Set<String> = []
        for (key, value) in pairs {
            guard let k = key.scalar else {
                ctx.error(.wrongType, "keys of \(path.isEmpty ? "a manifest" : path) must be strings", key)
                continue
            }
            let fieldPath = path.isEmpty ? k : "\(path).\(k)"
            guard let field = schema.field(k) else {
                let names = schema.fields.map(\.name)
                let written = Set(pairs.compactMap { $0.key.scalar })
                let suggestion = Suggest.closest(to: k, among: names.filter { !written.contains($0) })
                if let suggestion { suggested.insert(suggestion) }
                let within = path.isEmpty ? "" : " in \(path)"
                ctx.error(.unknownField,
                          "unknown field '\(k)'\(within)" + (suggestion.map { " (did you mean '\($0)'?)" } ?? ""),
                          key, length: k.unicodeScalars.count,
                          hint: "allowed fields: " + names.joined(separator: ", "))
                continue
            }
            present.insert(k)
            check(value, as: field.type, path: fieldPath, ctx: &ctx, key: key)
        }
        // A required field that a misspelt key was taken for is reported once, as the typo.
        for field in schema.fields where field.required && !present.contains(field.name) && !suggested.contains(field.name) {
            let anchor = node.mappingPairs?.isEmpty == false ? (owner ?? node) : node
            let subject = path.isEmpty ? "manifest" : path
            ctx.error(.missingField, "\(subject) is missing required field '\(field.name)'", anchor,
                      length: 1, hint: field.example.map { "add it, for example: \(field.name): \($0)" })
        }
        if let choices = schema.exactlyOneOf {
            let setKeys = pairs.map(\.key).filter { $0.scalar.map(choices.contains) ?? false }
            let list = choices.map { "'\($0)'" }.joined(separator: " or ")
            if setKeys.isEmpty {
                let anchor = pairs.isEmpty ? node : (owner ?? node)
                ctx.error(.invalidValue, "\(path) must set one of \(list)", anchor, length: anchor === owner ? owner?.scalar?.count : 1)
            } else if setKeys.count > 1 {
                let second = setKeys[1]
                ctx.error(.invalidValue,
                          "\(path) sets \(setKeys.compactMap(\.scalar).map { "'\($0)'" }.joined(separator: " and ")); set only one of \(list)",
                          second, length: second.scalar?.count)
            }
        }
        schema.check?(node, owner, &ctx, path)
    }

    // MARK: Scalars

    static func stringValue(_ node: YAMLNode, path: String, ctx: inout ValidationContext) -> String? {
        guard case .scalar(let s, _) = node.value else {
            wrongType(node, expected: "a string", path: path, ctx: &ctx)
            return nil
        }
        if node.isNull {
            wrongType(node, expected: "a string", path: path, ctx: &ctx)
            return nil
        }
        return s
    }

    static func integerValue(_ node: YAMLNode, path: String, ctx: inout ValidationContext) -> Int64? {
        guard case .scalar(let s, let style) = node.value, !node.isNull else {
            wrongType(node, expected: "an integer", path: path, ctx: &ctx)
            return nil
        }
        if style == .plain, let i = ScalarSyntax.integer(s) { return i }
        if style == .plain, ScalarSyntax.number(s) != nil {
            ctx.error(.wrongType, "\(path) must be a whole number, found \(s)", node)
            return nil
        }
        let hint = (style != .plain && ScalarSyntax.integer(s) != nil) ? "remove the quotes: \(s)" : nil
        wrongType(node, expected: "an integer", path: path, ctx: &ctx, hint: hint)
        return nil
    }

    static func numberValue(_ node: YAMLNode, path: String, ctx: inout ValidationContext) -> Double? {
        guard case .scalar(let s, let style) = node.value, !node.isNull else {
            wrongType(node, expected: "a number", path: path, ctx: &ctx)
            return nil
        }
        if style == .plain, let d = ScalarSyntax.number(s) { return d }
        let hint = (style != .plain && ScalarSyntax.number(s) != nil) ? "remove the quotes: \(s)" : nil
        wrongType(node, expected: "a number", path: path, ctx: &ctx, hint: hint)
        return nil
    }

    static func boolValue(_ node: YAMLNode, path: String, ctx: inout ValidationContext) -> Bool? {
        guard case .scalar(let s, let style) = node.value, !node.isNull else {
            wrongType(node, expected: "true or false", path: path, ctx: &ctx)
            return nil
        }
        if style == .plain, let b = ScalarSyntax.bool(s) { return b }
        if ScalarSyntax.looksBooleanish(s) {
            let meant = ["yes", "on", "y", "true"].contains(s.lowercased()) ? "true" : "false"
            ctx.error(.invalidBoolean, "\(path) must be true or false, found \(style == .plain ? s : "\"\(s)\"")", node,
                      hint: "write \(meant) (lowercase, unquoted); Capstan does not read yes/no/on/off or quoted booleans")
            return nil
        }
        wrongType(node, expected: "true or false", path: path, ctx: &ctx)
        return nil
    }

    static func durationValue(_ node: YAMLNode, path: String, ctx: inout ValidationContext) -> ManifestDuration? {
        guard case .scalar(let s, _) = node.value, !node.isNull else {
            wrongType(node, expected: "a duration such as 90s, 30m or 2h", path: path, ctx: &ctx)
            return nil
        }
        switch ManifestDuration.parse(s) {
        case .success(let d): return d
        case .failure(let e):
            let hint: String
            switch e {
            case .missingUnit where ScalarSyntax.integer(s) != nil:
                hint = "add a unit: \(s)s, \(s)m or \(s)h"
            case .unknownUnit(let u) where u.hasPrefix(" ") || s.contains(" "):
                hint = "remove the space: \(s.replacingOccurrences(of: " ", with: ""))"
            case .unknownUnit(let u) where u.hasPrefix("."):
                hint = Self.wholeNumberHint(s)
            case .unknownUnit(let u):
                hint = "'\(u)' is not a unit; use ms, s, m, h or d (for example 90s, 30m, 2h, 1d)"
            case .unitOrder:
                hint = "write units from largest to smallest, each once (for example 1h30m)"
            default:
                hint = "write a whole number and a unit: ms, s, m, h or d (for example 90s, 30m, 2h, 1d, 1h30m)"
            }
            ctx.error(.invalidDuration, "\(path) is not a valid duration: '\(s)'", node, hint: hint)
            return nil
        }
    }

    static func wrongType(_ node: YAMLNode, expected: String, path: String, ctx: inout ValidationContext, hint: String? = nil) {
        let subject = path.isEmpty ? "a manifest" : path
        ctx.error(.wrongType, "\(subject) must be \(expected), found \(node.kindDescription)", node, hint: hint)
    }

    // MARK: Strings

    static func checkString(_ s: String, rule: StringRule, node: YAMLNode, path: String, ctx: inout ValidationContext) {
        switch rule {
        case .any:
            return
        case .nonEmpty:
            if s.isEmpty { ctx.error(.invalidValue, "\(path) must not be empty", node) }
        case .dnsLabel:
            if let problem = Names.dnsLabelProblem(s) {
                ctx.error(.invalidName, "'\(s)' is not a valid name: \(problem)", node,
                          hint: Names.dnsLabelSuggestion(s).map { "names are DNS labels: lowercase letters, digits and '-', at most 63 characters; for example '\($0)'" }
                            ?? "names are DNS labels: lowercase letters, digits and '-', at most 63 characters")
            }
        case .envName:
            if path.contains(".secretEnv."), !s.hasPrefix("$"), SecretHeuristics.valueLooksLikeSecret(s) {
                ctx.diagnostics.append(Diagnostic(
                    .error, .invalidEnvName, "\(path) looks like a secret value; secretEnv maps to the name of a variable that holds it",
                    at: ctx.loc(node), length: 1,
                    hint: "put the value in a variable where Capstan runs (for example CAPSTAN_SECRET_API_TOKEN) and write that name here; rotate the value, it is now in Git",
                    redactSource: true))
            } else if !Names.isEnvName(s) {
                if s.hasPrefix("$"), Names.isEnvName(String(s.dropFirst())) {
                    ctx.error(.invalidEnvName, "\(path) '\(s)' is not an environment variable name", node,
                              hint: "write the name without '$': \(s.dropFirst())")
                } else if path.contains(".secretEnv.") {
                    // The value may be the secret itself, pasted by mistake: never echo it.
                    ctx.diagnostics.append(Diagnostic(
                        .error, .invalidEnvName, "\(path) must name an environment variable of the reconciler, not hold a value",
                        at: ctx.loc(node), length: 1,
                        hint: "write the name of the variable that holds the secret (for example CAPSTAN_SECRET_API_TOKEN) and set that variable where Capstan runs",
                        redactSource: true))
                } else {
                    ctx.error(.invalidEnvName, "\(path) '\(s)' is not an environment variable name", node,
                              hint: "use letters, digits and '_', not starting with a digit (for example API_TOKEN)")
                }
            }
        case .aliasName:
            if let problem = Names.aliasNameProblem(s) {
                ctx.error(.invalidName, "alias name '\(s)' is not valid: \(problem)", node)
            }
        case .metricName:
            if let problem = Names.metricNameProblem(s) {
                ctx.error(.invalidName, "'\(PrintableText.escaped(s))' is not a valid metric name: \(problem)", node,
                          hint: "use 1 to \(Names.metricNameLimit) letters, digits and _ . - / (the rule of the metrics file)")
            }
        case .labelKey:
            if let problem = Names.labelKeyProblem(s) {
                ctx.error(.invalidName, "label key '\(s)' is not valid: \(problem)", node)
            }
        case .repoPath:
            checkPath(s, node: node, path: path, allowAbsolute: false, ctx: &ctx)
        case .inputPath:
            checkPath(s, node: node, path: path, allowAbsolute: true, ctx: &ctx)
        case .absolutePath:
            if s.isEmpty {
                ctx.error(.emptyPath, "\(path) is an empty path", node)
            } else if !s.hasPrefix("/") {
                ctx.error(.invalidValue, "\(path) must be an absolute path, found '\(s)'", node, hint: "write it starting with /")
            }
        case .glob:
            if s.isEmpty { ctx.error(.emptyPath, "\(path) is an empty pattern", node) }
            else if s.hasPrefix("/") { ctx.error(.invalidValue, "\(path) must be relative to the repository root", node) }
        case .httpURL:
            if s.contains("@"), let scheme = s.range(of: "://"), s[scheme.upperBound...].split(separator: "/").first?.contains("@") == true {
                ctx.diagnostics.append(Diagnostic(
                    .error, .invalidValue, "\(path) must not carry credentials", at: ctx.loc(node), length: 1,
                    hint: "remove the user and password from the URL; put the token in an environment variable and name it with tokenEnv",
                    redactSource: true))
            } else if !(s.hasPrefix("http://") || s.hasPrefix("https://")) || s.count < 10 {
                ctx.error(.invalidValue, "\(path) must be an http:// or https:// URL, found '\(s)'", node,
                          hint: s.contains("://") ? "only http and https are supported" : "write it with its scheme, for example http://\(s)")
            }
        case .urlPath:
            if !s.hasPrefix("/") { ctx.error(.invalidValue, "\(path) must start with '/', found '\(s)'", node) }
        case .uri:
            if !s.contains("://") || s.hasPrefix("://") {
                ctx.error(.invalidValue, "\(path) must be a URI with a scheme (for example s3://bucket/prefix/), found '\(s)'", node)
            }
        }
    }

    static func checkPath(_ s: String, node: YAMLNode, path: String, allowAbsolute: Bool, ctx: inout ValidationContext) {
        if s.trimmingWhitespace().isEmpty {
            ctx.error(.emptyPath, "\(path) is an empty path", node, hint: "write a path relative to the repository root, or '.' for the root")
            return
        }
        if s.hasPrefix("/") {
            if !allowAbsolute {
                ctx.error(.pathEscapesRepository, "\(path) must be relative to the repository root, found absolute path '\(s)'", node,
                          hint: "write it relative to the repository root (for example models/churn)")
            }
            return
        }
        if RepoPath.normalize(s) == nil {
            ctx.error(.pathEscapesRepository, "\(path) '\(s)' points outside the repository", node,
                      hint: allowAbsolute
                        ? "inputs outside the repository need an absolute path under one of spec.dataRoots in capstan.yaml"
                        : "paths are relative to the repository root and may not climb above it with '..'")
        }
    }

    // MARK: Composite values

    static func checkArgv(_ node: YAMLNode, path: String, ctx: inout ValidationContext) {
        var argv: [String]
        switch node.value {
        case .scalar(let s, _) where !node.isNull:
            argv = [s]
        case .sequence(let items):
            argv = []
            for (i, item) in items.enumerated() {
                guard case .scalar(let s, _) = item.value, !item.isNull else {
                    wrongType(item, expected: "a string", path: "\(path)[\(i)]", ctx: &ctx)
                    return
                }
                if s.isEmpty {
                    ctx.error(.emptyCommand, "\(path)[\(i)] is an empty argument", item)
                    return
                }
                argv.append(s)
            }
        default:
            wrongType(node, expected: "a list of strings (argv)", path: path, ctx: &ctx, hint: "for example [python3, train.py]")
            return
        }
        if argv.isEmpty || argv == [""] {
            ctx.error(.emptyCommand, "\(path) is empty", node, length: 1, hint: "give the program and its arguments as a list, for example [python3, script.py]")
            return
        }
        if argv.count == 1, argv[0].contains(where: { $0 == " " || $0 == "\t" }) {
            let words = argv[0].split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            ctx.warning(.commandLooksLikeShell,
                        "\(path) is a single string with spaces; it runs a program named '\(argv[0])', without a shell",
                        node, hint: "did you mean [\(words.joined(separator: ", "))]?")
        }
    }

    static func checkAny(_ node: YAMLNode, path: String, ctx: inout ValidationContext) {
        switch node.value {
        case .scalar: return
        case .sequence(let items):
            for (i, item) in items.enumerated() { checkAny(item, path: "\(path)[\(i)]", ctx: &ctx) }
        case .mapping(let pairs):
            for (k, v) in pairs {
                guard let key = k.scalar else {
                    ctx.error(.wrongType, "keys of \(path) must be strings", k)
                    continue
                }
                checkAny(v, path: "\(path).\(key)", ctx: &ctx)
            }
        }
    }

    static func checkAliasTarget(_ node: YAMLNode, path: String, ctx: inout ValidationContext) {
        guard case .scalar(let s, let style) = node.value, !node.isNull else {
            ctx.error(.invalidAliasTarget, "\(path) must be a version number or 'latest', found \(node.kindDescription)", node)
            return
        }
        if s == "latest" { return }
        if style == .plain, let i = ScalarSyntax.integer(s) {
            if i >= 1 { return }
            ctx.error(.invalidAliasTarget, "\(path) must be a positive version number or 'latest', found \(s)", node,
                      hint: "versions are numbered from 1")
            return
        }
        var hint = "write a version number (champion: 7) or latest (candidate: latest)"
        if s.lowercased() == "latest" { hint = "write 'latest' in lowercase" }
        else if let i = ScalarSyntax.integer(s.hasPrefix("v") || s.hasPrefix("V") ? String(s.dropFirst()) : s), i >= 1 {
            hint = "write the number without quotes or prefix: \(i)"
        }
        ctx.error(.invalidAliasTarget, "\(path) must be a positive version number or 'latest', found '\(s)'", node, hint: hint)
    }

    static func checkInput(_ node: YAMLNode, path: String, ctx: inout ValidationContext) {
        switch node.value {
        case .scalar(let s, _) where !node.isNull:
            checkPath(s, node: node, path: path, allowAbsolute: true, ctx: &ctx)
        case .mapping:
            checkObject(node, schema: ManifestSchema.inputObject, path: path, ctx: &ctx)
            let hasPath = node["path"] != nil, hasURI = node["uri"] != nil
            if hasPath && hasURI {
                ctx.error(.invalidValue, "\(path) sets both 'path' and 'uri'; an input is one or the other", node, length: 1)
            } else if !hasPath && !hasURI {
                ctx.error(.missingField, "\(path) needs 'path' or 'uri'", node, length: 1,
                          hint: "for example {path: /srv/data/events.parquet} or {uri: s3://bucket/events/, version: \"2026-11-01\"}")
            } else if hasURI && node["version"] == nil {
                ctx.error(.missingField, "\(path) is missing required field 'version'", node, length: 1,
                          hint: "a uri input needs a version (for example version: \"2026-11-01\") so Capstan can tell when it changes")
            } else if hasPath && node["version"] != nil {
                ctx.error(.invalidValue, "\(path) sets 'version' on a path input; only uri inputs take a version", node["version"]!)
            }
        default:
            wrongType(node, expected: "a path or a mapping with path or uri", path: path, ctx: &ctx)
        }
    }

    /// `1.5h` → "durations take whole numbers: write 1h30m".
    static func wholeNumberHint(_ s: String) -> String {
        let units: [(String, Double)] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)]
        for (unit, factor) in units.reversed() where s.hasSuffix(unit) {
            if let value = Double(s.dropLast(unit.count)), value > 0 {
                let ms = Int64((value * factor).rounded())
                return "durations take whole numbers: write \(ManifestDuration.format(ms))"
            }
        }
        return "durations take whole numbers and a unit, for example 90s, 30m, 1h30m"
    }

    static func fmt(_ d: Double) -> String {
        d == d.rounded() && abs(d) < 1e15 ? String(Int64(d)) : String(d)
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}

/// Hands out one shared copy of each path string. Used by one decode call at a time.
final class PathInterner {
    private var table: [String: String] = [:]

    func intern(_ s: String) -> String {
        if let existing = table[s] { return existing }
        table[s] = s
        return s
    }
}
