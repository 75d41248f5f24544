import CapstanCore

/// What a string value must look like.
public enum StringRule: Sendable, Equatable {
    case any
    case nonEmpty
    /// Lowercase letters, digits and `-`, starting and ending with a letter or digit, ≤ 63.
    case dnsLabel
    /// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
    case envName
    /// An alias name: lowercase letter first, then lowercase letters, digits, `-`, `_`; not `latest`.
    case aliasName
    /// A metric name: letters, digits, `_ - . / :`.
    case metricName
    /// A label key: `[prefix/]name`, name of letters, digits, `-_.`, ≤ 63.
    case labelKey
    /// A folder or file inside the repository: relative, not escaping it.
    case repoPath
    /// A training input path: relative (inside the repository) or absolute (under a data root).
    case inputPath
    /// An absolute folder.
    case absolutePath
    /// A glob pattern relative to the repository root.
    case glob
    /// An `http://` or `https://` URL.
    case httpURL
    /// A URL path starting with `/`.
    case urlPath
    /// A URI with a scheme (`s3://…`, `gs://…`, `https://…`).
    case uri
}

/// The type of a manifest field. One declaration drives validation, the JSON Schema and the
/// field reference in docs/manifests.md.
public indirect enum FieldType: Sendable {
    case string(StringRule)
    case integer(min: Int64?, max: Int64?)
    case number(min: Double?, max: Double?)
    case boolean
    /// A duration; `allowZero: false` refuses `0s` (timeouts, intervals).
    case duration(allowZero: Bool)
    case enumeration([String])
    case list(FieldType)
    case map(keys: StringRule, values: FieldType)
    case object(ObjectSchema)
    /// A command: a list of strings, run without a shell.
    case argv
    /// Any YAML value (training params).
    case anyValue
    /// A positive version number or `latest`.
    case aliasTarget
    /// A training input: a path string, `{path: …}` or `{uri: …, version: …}`.
    case trainInput
}

/// One field of an object.
public struct FieldSpec: Sendable {
    public var name: String
    public var type: FieldType
    public var required: Bool
    /// The default, as the user would write it (nil when there is none).
    public var defaultValue: String?
    public var doc: String
    public var example: String?

    public init(_ name: String, _ type: FieldType, required: Bool = false, default defaultValue: String? = nil,
                doc: String, example: String? = nil) {
        self.name = name
        self.type = type
        self.required = required
        self.defaultValue = defaultValue
        self.doc = doc
        self.example = example
    }
}

/// A mapping with known fields.
public final class ObjectSchema: Sendable {
    /// A stable name, used as the `$defs` key in the JSON Schema and as a docs heading.
    public let id: String
    public let doc: String
    public let fields: [FieldSpec]
    /// Exactly one of these fields must be set (a tagged union such as `strategy`).
    public let exactlyOneOf: [String]?
    /// Checks across fields of this object, run after the fields themselves.
    /// Arguments: the mapping, the key that holds it (if any), the context and the field path.
    let check: (@Sendable (YAMLNode, YAMLNode?, inout ValidationContext, String) -> Void)?

    init(id: String, doc: String, fields: [FieldSpec], exactlyOneOf: [String]? = nil,
         check: (@Sendable (YAMLNode, YAMLNode?, inout ValidationContext, String) -> Void)? = nil) {
        self.id = id
        self.doc = doc
        self.fields = fields
        self.exactlyOneOf = exactlyOneOf
        self.check = check
    }

    public func field(_ name: String) -> FieldSpec? {
        fields.first { $0.name == name }
    }

    /// True when a mapping may be written as `{}` or left empty.
    var allOptional: Bool { fields.allSatisfy { !$0.required } && exactlyOneOf == nil }
}
