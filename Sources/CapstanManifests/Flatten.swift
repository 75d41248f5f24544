import CapstanCore

/// Flattens a manifest document to `path → value as written`, for field-by-field diffs.
enum Flatten {
    static func document(_ root: YAMLNode) -> [String: String] {
        var out: [String: String] = [:]
        for (key, value) in root.mappingPairs ?? [] {
            guard let k = key.scalar, k == "metadata" || k == "spec" else { continue }
            visit(value, path: k, into: &out)
        }
        return out
    }

    private static func visit(_ node: YAMLNode, path: String, into out: inout [String: String]) {
        switch node.value {
        case .scalar(let s, let style):
            out[path] = style == .plain ? (s.isEmpty ? "null" : s) : "\"\(s)\""
        case .sequence(let items):
            if items.isEmpty { out[path] = "[]" }
            for (i, item) in items.enumerated() { visit(item, path: "\(path)[\(i)]", into: &out) }
        case .mapping(let pairs):
            if pairs.isEmpty { out[path] = "{}" }
            for (k, v) in pairs {
                visit(v, path: "\(path).\(k.scalar ?? "?")", into: &out)
            }
        }
    }
}
