import CapstanCore
import Yams

/// Limits that keep hostile input from costing more than a moment.
public struct YAMLLimits: Sendable {
    public var maxFileBytes: Int = 1 << 20
    public var maxDocuments: Int = 1000
    public var maxDepth: Int = 64
    /// Nodes one document may expand to, aliases included.
    public var maxNodesPerDocument: Int = 100_000

    public init() {}
}

/// One YAML document of a file.
public struct YAMLDocument: Sendable {
    public var index: Int
    public var root: YAMLNode
}

/// Turns the bytes of one file into YAML documents, or into diagnostics that say why not.
/// Checks size, encoding, syntax, duplicate keys, document count, nesting and alias expansion.
public struct YAMLReader: Sendable {
    public var limits: YAMLLimits

    public init(limits: YAMLLimits = YAMLLimits()) {
        self.limits = limits
    }

    public struct Result: Sendable {
        public var text: String?
        public var documents: [YAMLDocument]
        public var diagnostics: [Diagnostic]
    }

    public func read(_ bytes: [UInt8], file: String, declaredSize: Int? = nil) -> Result {
        func fail(_ d: Diagnostic, text: String? = nil) -> Result {
            Result(text: text, documents: [], diagnostics: [d])
        }
        let start = SourceLocation(file: file, line: 1, column: 1)
        let size = max(bytes.count, declaredSize ?? 0)
        if size > limits.maxFileBytes {
            return fail(.error(
                .fileTooLarge,
                "file is \(Self.formatSize(size)); a manifest file may be at most \(Self.formatSize(limits.maxFileBytes))",
                at: start, hint: "split it into several files, or exclude it in capstan.yaml (spec.exclude) if it is not a Capstan manifest"))
        }
        var body = bytes[...]
        if body.starts(with: [0xEF, 0xBB, 0xBF]) { body = body.dropFirst(3) }
        guard let text = String(validating: body, as: UTF8.self) else {
            let (line, column) = Self.firstInvalidUTF8(in: body)
            return fail(.error(
                .notUTF8, "file is not valid UTF-8",
                at: SourceLocation(file: file, line: line, column: column),
                hint: "save the file as UTF-8; manifests must be UTF-8 text"))
        }
        if body.contains(0) {
            return fail(.error(.notUTF8, "file contains NUL bytes; it looks binary, not like YAML text", at: start,
                               hint: "exclude it in capstan.yaml (spec.exclude) or give it another extension"), text: text)
        }

        if let (line, column) = AliasKeyScanner.firstAliasInKey(text) {
            return fail(.error(
                .aliasExpansion, "YAML alias used in a mapping key",
                at: SourceLocation(file: file, line: line, column: column),
                hint: "Capstan does not accept aliases (*name) in keys; write the key out"), text: text)
        }
        var documents: [YAMLDocument] = []
        var diagnostics: [Diagnostic] = []
        do {
            let parser = try Parser(yaml: text, resolver: .basic, encoding: .utf8)
            while let root = try parser.nextRoot() {
                let index = documents.count
                if index >= limits.maxDocuments {
                    diagnostics.append(.error(
                        .tooManyDocuments, "file has more than \(limits.maxDocuments) documents",
                        at: SourceLocation(file: file, line: root.mark?.line ?? 1, column: root.mark?.column ?? 1),
                        hint: "split it into several files"))
                    return Result(text: text, documents: [], diagnostics: diagnostics)
                }
                var converter = Converter(file: file, limits: limits)
                switch converter.convert(root, depth: 1) {
                case .success(let node):
                    if node.isNull, node.tag == nil {
                        diagnostics.append(.warning(
                            .emptyDocument, "document \(index + 1) is empty and is ignored",
                            at: SourceLocation(file: file, line: Self.separatorLine(before: node.line, in: text), column: 1),
                            hint: "remove the extra `---` separator"))
                    }
                    documents.append(YAMLDocument(index: index, root: node))
                case .failure(let diagnostic):
                    diagnostics.append(diagnostic)
                    return Result(text: text, documents: [], diagnostics: diagnostics)
                }
            }
        } catch let error as YamlError {
            diagnostics.append(Self.diagnostic(for: error, file: file, text: text))
            return Result(text: text, documents: [], diagnostics: diagnostics)
        } catch {
            diagnostics.append(.error(.yamlSyntax, "cannot read YAML: \(error)", at: start))
            return Result(text: text, documents: [], diagnostics: diagnostics)
        }
        if documents.isEmpty && diagnostics.isEmpty {
            diagnostics.append(.warning(.emptyDocument, "file holds no YAML document", at: start,
                                        hint: "delete the file, or add a manifest to it"))
        }
        return Result(text: text, documents: documents, diagnostics: diagnostics)
    }

    // MARK: - Conversion from Yams nodes

    private struct Converter {
        let file: String
        let limits: YAMLLimits
        var nodes = 0
        var sawAlias = false
        var anchored = Set<ObjectIdentifier>()
        /// Where the document starts: expansion problems are reported there, since the node being
        /// expanded stands where its anchor was defined, not where the alias is.
        var documentStart: SourceLocation?

        init(file: String, limits: YAMLLimits) {
            self.file = file
            self.limits = limits
        }

        mutating func convert(_ node: Node, depth: Int) -> Swift.Result<YAMLNode, Diagnostic> {
            let mark = (line: node.mark?.line ?? 1, column: node.mark?.column ?? 1)
            let location = SourceLocation(file: file, line: mark.line, column: mark.column)
            if documentStart == nil { documentStart = location }
            if depth > limits.maxDepth {
                return .failure(.error(
                    .nestingTooDeep, "value is nested more than \(limits.maxDepth) levels deep",
                    at: location, hint: "manifests need only a few levels; flatten this value"))
            }
            nodes += 1
            if let anchor = node.anchor {
                // Yams hands back the anchored node itself for every alias: seeing the same anchor
                // object again means an alias is being expanded.
                if !anchored.insert(ObjectIdentifier(anchor)).inserted { sawAlias = true }
            }
            if nodes > limits.maxNodesPerDocument {
                if sawAlias {
                    return .failure(.error(
                        .aliasExpansion, "YAML aliases expand this document to more than \(limits.maxNodesPerDocument) values",
                        at: documentStart ?? location, hint: "this looks like an alias bomb (\"billion laughs\"); write the values out or use fewer aliases"))
                }
                return .failure(.error(
                    .fileTooLarge, "document has more than \(limits.maxNodesPerDocument) values", at: location,
                    hint: "split it into several documents"))
            }
            let tag = Self.explicitTag(node)
            switch node {
            case .scalar(let s):
                return .success(YAMLNode(.scalar(s.string, Self.style(s.style)), line: mark.line, column: mark.column, tag: tag))
            case .sequence(let seq):
                var items: [YAMLNode] = []
                items.reserveCapacity(seq.count)
                for item in seq {
                    switch convert(item, depth: depth + 1) {
                    case .success(let n): items.append(n)
                    case .failure(let d): return .failure(d)
                    }
                }
                return .success(YAMLNode(.sequence(items), line: mark.line, column: mark.column, tag: tag))
            case .mapping(let map):
                var pairs: [(key: YAMLNode, value: YAMLNode)] = []
                pairs.reserveCapacity(map.count)
                for (k, v) in map {
                    let key: YAMLNode
                    switch convert(k, depth: depth + 1) {
                    case .success(let n): key = n
                    case .failure(let d): return .failure(d)
                    }
                    switch convert(v, depth: depth + 1) {
                    case .success(let n): pairs.append((key, n))
                    case .failure(let d): return .failure(d)
                    }
                }
                return .success(YAMLNode(.mapping(pairs), line: mark.line, column: mark.column, tag: tag))
            case .alias(let alias):
                _ = alias
                return .failure(.error(.yamlSyntax, "unsupported YAML alias node", at: location))
            }
        }

        static func explicitTag(_ node: Node) -> String? {
            let written: String
            switch node {
            case .scalar(let s): written = s.tag.rawValue
            case .sequence(let s): written = s.tag.rawValue
            case .mapping(let m): written = m.tag.rawValue
            case .alias: return nil
            }
            return written.isEmpty || written == "!" ? nil : written
        }

        static func style(_ s: Node.Scalar.Style) -> YAMLNode.Style {
            switch s {
            case .singleQuoted: return .singleQuoted
            case .doubleQuoted: return .doubleQuoted
            case .literal: return .literal
            case .folded: return .folded
            case .any, .plain: return .plain
            }
        }
    }

    // MARK: - Errors

    static func diagnostic(for error: YamlError, file: String, text: String) -> Diagnostic {
        let lineCount = max(1, text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).count
            - (text.hasSuffix("\n") ? 1 : 0))
        func at(_ mark: Mark) -> SourceLocation {
            // libyaml reports end-of-input problems one line past the end; keep carets on a real line.
            if mark.line > lineCount { return SourceLocation(file: file, line: lineCount, column: 1) }
            return SourceLocation(file: file, line: max(1, mark.line), column: max(1, mark.column))
        }
        switch error {
        case .scanner(let context, let problem, var mark, _), .parser(let context, let problem, var mark, _),
             .composer(let context, let problem, var mark, _):
            var message = problem
            if let context {
                message = "\(problem) (\(context.text) at line \(context.mark.line))"
                // An unclosed quote or bracket is best shown where it opens.
                if problem.contains("found unexpected end of stream") || problem.contains("did not find expected ','") {
                    let construct = context.text.replacingOccurrences(of: "while scanning ", with: "")
                        .replacingOccurrences(of: "while parsing ", with: "")
                    message = "\(construct) opened here is never closed (\(problem) at line \(min(lineCount, mark.line)))"
                    mark = context.mark
                }
            }
            if problem.contains("Maximum nesting level") {
                return .error(.nestingTooDeep, "value is nested more than 64 levels deep", at: at(mark),
                              hint: "manifests need only a few levels; flatten this value")
            }
            return .error(.yamlSyntax, "YAML syntax error: \(message)", at: at(mark), hint: syntaxHint(problem: problem, mark: mark, text: text))
        case .duplicatedKeysInMapping(let duplicates, let context):
            let key = duplicates.first ?? "?"
            let first = context.mark
            let second = Self.findRepeatedKey(key, after: first, in: text) ?? (first.line, first.column)
            return .error(
                .duplicateKey, "key '\(key)' appears twice in the same mapping",
                at: SourceLocation(file: file, line: second.0, column: second.1), length: key.count,
                hint: "YAML keeps only one of them; delete or rename one",
                related: second.0 == first.line ? [] : [RelatedLocation(at(first), "'\(key)' is first set here")])
        case .reader(let problem, let offset, _, _):
            let loc = offset.map { Self.lineColumn(ofCharacterOffset: $0, in: text) } ?? (1, 1)
            return .error(.yamlSyntax, "YAML reader error: \(problem)", at: SourceLocation(file: file, line: loc.0, column: loc.1))
        case .memory:
            return .error(.yamlSyntax, "out of memory while reading YAML", at: SourceLocation(file: file, line: 1, column: 1))
        case .dataCouldNotBeDecoded:
            return .error(.notUTF8, "file is not valid UTF-8", at: SourceLocation(file: file, line: 1, column: 1))
        default:
            return .error(.yamlSyntax, "cannot read YAML", at: SourceLocation(file: file, line: 1, column: 1))
        }
    }

    /// The line of the `---` that opens the document whose content starts at `line`.
    static func separatorLine(before line: Int, in text: String) -> Int {
        let lines = text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        var n = min(line, lines.count)
        while n >= 1 {
            if lines[n - 1].starts(with: "---".utf8) { return n }
            n -= 1
        }
        return max(1, min(line, lines.count))
    }

    static func syntaxHint(problem: String, mark: Mark, text: String) -> String? {
        let line = text.split(separator: "\n", omittingEmptySubsequences: false).dropFirst(mark.line - 1).first ?? ""
        if line.unicodeScalars.dropFirst(max(0, mark.column - 1)).first == "\t" || (problem.contains("cannot start any token") && line.contains("\t")) {
            return "YAML indentation must use spaces, not tabs"
        }
        if problem.contains("mapping values are not allowed") {
            return "a value containing ': ' must be quoted, or the line is indented wrongly"
        }
        if problem.contains("did not find expected key") || problem.contains("did not find expected '-' indicator") {
            return "check the indentation of this line against the lines above it"
        }
        if problem.contains("found unexpected end") || problem.contains("did not find expected ','")
            || problem.contains("did not find expected node content") && text.contains("[") {
            return "a quote or bracket opened earlier is never closed"
        }
        return nil
    }

    /// Yams reports the first occurrence of a duplicated key; find the next occurrence at the same
    /// column so the error points at the line to fix.
    static func findRepeatedKey(_ key: String, after first: Mark, in text: String) -> (Int, Int)? {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let candidates = [key + ":", "\"" + key + "\":", "'" + key + "':"]
        // Flow mapping ({a: 1, a: 2}): the repeat is later on the same line, after `,` or `{`.
        if first.line >= 1, first.line <= lines.count {
            let scalars = Array(lines[first.line - 1].unicodeScalars)
            var i = first.column  // just after the first key's first character
            while i < scalars.count {
                if scalars[i - 1] == "," || scalars[i - 1] == "{" || scalars[i - 1] == " " {
                    let rest = String(String.UnicodeScalarView(scalars[i...]))
                    if i > first.column + key.unicodeScalars.count - 1, candidates.contains(where: { rest.hasPrefix($0) }) {
                        return (first.line, i + 1)
                    }
                }
                i += 1
            }
        }
        var lineNumber = first.line + 1
        for line in lines.dropFirst(first.line) {
            let scalars = Array(line.unicodeScalars)
            let indent = first.column - 1
            if scalars.count > indent {
                let rest = String(String.UnicodeScalarView(scalars[indent...]))
                let leading = String(String.UnicodeScalarView(scalars[..<indent]))
                if leading.allSatisfy({ $0 == " " || $0 == "-" }), candidates.contains(where: { rest.hasPrefix($0) }) {
                    return (lineNumber, first.column)
                }
            }
            lineNumber += 1
        }
        // Flow mappings ({a: 1, a: 2}) keep both keys on one line: look after the first one.
        return nil
    }

    static func lineColumn(ofCharacterOffset offset: Int, in text: String) -> (Int, Int) {
        var line = 1, column = 1
        for (i, c) in text.unicodeScalars.enumerated() {
            if i >= offset { break }
            if c == "\n" { line += 1; column = 1 } else { column += 1 }
        }
        return (line, column)
    }

    static func firstInvalidUTF8(in bytes: ArraySlice<UInt8>) -> (Int, Int) {
        var line = 1, column = 1
        var index = bytes.startIndex
        while index < bytes.endIndex {
            let b = bytes[index]
            let length: Int
            switch b {
            case 0x00...0x7F: length = 1
            case 0xC2...0xDF: length = 2
            case 0xE0...0xEF: length = 3
            case 0xF0...0xF4: length = 4
            default: return (line, column)
            }
            let end = index + length
            if end > bytes.endIndex { return (line, column) }
            if length > 1, String(validating: bytes[index..<end], as: UTF8.self) == nil { return (line, column) }
            if b == 0x0A { line += 1; column = 1 } else { column += 1 }
            index = end
        }
        return (line, column)
    }

    static func formatSize(_ bytes: Int) -> String {
        if bytes >= 1 << 20, bytes % 1024 != 0 || bytes % (1 << 20) != 0, bytes < 2 << 20 {
            return "\(bytes) bytes"
        }
        if bytes >= 1 << 20 {
            let mib = Double(bytes) / Double(1 << 20)
            return mib == mib.rounded() ? "\(Int(mib)) MiB" : "\((mib * 10).rounded() / 10) MiB"
        }
        if bytes >= 1024 { return "\(bytes / 1024) KiB" }
        return "\(bytes) bytes"
    }
}
