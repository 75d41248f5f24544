/// What an audit event, a condition or a journal entry is about: a model, one of its versions or
/// aliases, or a deployment. Stored and shown in one text form (`model/churn`, `model/churn/v3`,
/// `model/churn/alias/champion`, `deployment/churn-prod`), which only this type writes and reads.
public enum ObjectRef: Hashable, Sendable, Comparable, CustomStringConvertible {
    case model(String)
    case version(model: String, number: Int)
    case alias(model: String, alias: String)
    case deployment(String)

    /// The model an object belongs to (nil for a deployment).
    public var model: String? {
        switch self {
        case .model(let m), .version(let m, _), .alias(let m, _): return m
        case .deployment: return nil
        }
    }

    /// The deployment's name, for a deployment.
    public var deployment: String? {
        if case .deployment(let d) = self { return d }
        return nil
    }

    /// The version number, for a version.
    public var version: Int? {
        if case .version(_, let n) = self { return n }
        return nil
    }

    /// The object itself or what it belongs to: a version and an alias belong to their model.
    public var owner: ObjectRef {
        switch self {
        case .model, .deployment: return self
        case .version(let m, _), .alias(let m, _): return .model(m)
        }
    }

    /// Whether this is `other`, or belongs to it (`model/churn/v3` belongs to `model/churn`).
    public func isWithin(_ other: ObjectRef) -> Bool {
        self == other || owner == other
    }

    public var isModel: Bool { model != nil }

    /// The stored form.
    public var description: String {
        switch self {
        case .model(let m): return "model/\(m)"
        case .version(let m, let n): return "model/\(m)/v\(n)"
        case .alias(let m, let a): return "model/\(m)/alias/\(a)"
        case .deployment(let d): return "deployment/\(d)"
        }
    }

    /// Reads the stored form back; nil for text no Capstan wrote. Names never contain `/`
    /// (manifest names are DNS labels, aliases are identifiers), so the form is unambiguous.
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        switch (parts.first, parts.count) {
        case ("model", 2) where !parts[1].isEmpty:
            self = .model(parts[1])
        case ("model", 3) where parts[2].first == "v":
            guard let n = Int(parts[2].dropFirst()), n >= 1, !parts[1].isEmpty else { return nil }
            self = .version(model: parts[1], number: n)
        case ("model", 4) where parts[2] == "alias" && !parts[1].isEmpty && !parts[3].isEmpty:
            self = .alias(model: parts[1], alias: parts[3])
        case ("deployment", 2) where !parts[1].isEmpty:
            self = .deployment(parts[1])
        default:
            return nil
        }
    }

    public static func < (a: ObjectRef, b: ObjectRef) -> Bool { a.description < b.description }
}

extension ObjectRef: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let ref = ObjectRef(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath,
                                                    debugDescription: "'\(text)' is not an object reference (model/NAME, model/NAME/vN, model/NAME/alias/ALIAS, deployment/NAME)"))
        }
        self = ref
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
