/// Finds YAML aliases used inside mapping keys, before the text reaches Yams.
///
/// Yams hashes mapping keys to detect duplicates; a key that is an alias of a deeply aliased
/// node ("billion laughs" as a key) would be expanded while hashing and hang the process. Value
/// aliases are safe (the converter counts their expansion), so only keys need this guard. The scan
/// is lexical and conservative: it skips comments, quoted scalars and block scalars, and reports
/// an alias that is followed by `:` (directly or after the flow collection that holds it) or that
/// follows an explicit `?` key indicator. It only runs when the text has both `&` and `*`.
enum AliasKeyScanner {
    /// The 1-based line and column of the first alias used in a key, if any.
    static func firstAliasInKey(_ text: String) -> (line: Int, column: Int)? {
        // Byte scans: String.contains(String) goes through Foundation and is far slower.
        guard text.utf8.contains(UInt8(ascii: "&")), text.utf8.contains(UInt8(ascii: "*")) else { return nil }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { Array($0.unicodeScalars) }
        var blockIndent: Int?          // inside a block scalar: lines indented more than this are text
        var flowStack: [(line: Int, column: Int, hasAlias: Bool)] = []
        var explicitKey = false
        var quote: Unicode.Scalar?     // inside a quoted scalar that spans lines

        for (n, line) in lines.enumerated() {
            let indent = line.prefix { $0 == " " }.count
            if let b = blockIndent {
                if line.allSatisfy({ $0 == " " || $0 == "\r" }) || indent > b { continue }
                blockIndent = nil
            }
            var i = quote == nil ? indent : 0
            if quote == nil { explicitKey = false }
            var previous: Unicode.Scalar = " "
            while i < line.count {
                let c = line[i]
                if let q = quote {
                    if q == "'" && c == "'" {
                        if i + 1 < line.count, line[i + 1] == "'" { i += 2; continue }
                        quote = nil
                    } else if q == "\"" && c == "\\" {
                        i += 2; continue
                    } else if c == q {
                        quote = nil
                    }
                    previous = c; i += 1; continue
                }
                switch c {
                case "#" where previous == " " || previous == "\t" || i == 0:
                    i = line.count; continue
                case "'" where isTokenStart(previous), "\"" where isTokenStart(previous):
                    quote = c
                case "?" where isTokenStart(previous) && (i + 1 == line.count || line[i + 1] == " "):
                    explicitKey = true
                case "[", "{":
                    flowStack.append((n + 1, i + 1, false))
                case "]", "}":
                    if let top = flowStack.popLast() {
                        if top.hasAlias {
                            if followedByColon(line, after: i) || explicitKey { return (top.line, top.column) }
                            if !flowStack.isEmpty { flowStack[flowStack.count - 1].hasAlias = true }
                        }
                    }
                case "*" where isTokenStart(previous):
                    var j = i + 1
                    while j < line.count, isAnchorChar(line[j]) { j += 1 }
                    if j > i + 1 {
                        if explicitKey || followedByColon(line, after: j - 1) { return (n + 1, i + 1) }
                        if !flowStack.isEmpty { flowStack[flowStack.count - 1].hasAlias = true }
                        previous = line[j - 1]; i = j; continue
                    }
                case "|" where isTokenStart(previous) && flowStack.isEmpty, ">" where isTokenStart(previous) && flowStack.isEmpty:
                    // A block scalar header: the following more-indented lines are text.
                    let rest = line[(i + 1)...].prefix { $0 != "#" }
                    if rest.allSatisfy({ $0 == " " || $0 == "-" || $0 == "+" || $0 == "\r" || ("0"..."9").contains($0) }) {
                        blockIndent = indent
                        i = line.count; continue
                    }
                default:
                    break
                }
                previous = c
                i += 1
            }
        }
        return nil
    }

    static func isTokenStart(_ previous: Unicode.Scalar) -> Bool {
        previous == " " || previous == "\t" || previous == "[" || previous == "{" || previous == "," || previous == "-" || previous == ":" || previous == "?"
    }

    /// libyaml's anchor characters: letters, digits, `_` and `-`.
    static func isAnchorChar(_ c: Unicode.Scalar) -> Bool {
        ("a"..."z").contains(c) || ("A"..."Z").contains(c) || ("0"..."9").contains(c) || c == "_" || c == "-"
    }

    /// True when, after index `end`, the next non-space character is a `:` that starts a value.
    static func followedByColon(_ line: [Unicode.Scalar], after end: Int) -> Bool {
        var k = end + 1
        while k < line.count, line[k] == " " || line[k] == "\t" { k += 1 }
        guard k < line.count, line[k] == ":" else { return false }
        return k + 1 == line.count || [" ", "\t", ",", "]", "}", "\r"].contains(line[k + 1])
    }
}
