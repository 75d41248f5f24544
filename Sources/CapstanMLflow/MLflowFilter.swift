/// Filter strings of MLflow's searches, quoted so that a value cannot change the condition.
///
/// MLflow strips one pair of quotes from a value and does not unescape anything inside, so a value
/// is put in single quotes, or in double quotes when it holds a single quote; a value holding
/// both cannot be written and is refused. Keys go in backticks (tag keys contain dots).
public enum MLflowFilter {
    public struct Unwritable: Error, Sendable, Equatable, CustomStringConvertible {
        public var value: String
        public var description: String {
            "'\(value)' cannot be written in an MLflow search filter (it holds both quote characters or a backtick in a key)"
        }
    }

    /// `tags.\`key\` = 'value'`.
    public static func tag(_ key: String, equals value: String) throws(Unwritable) -> String {
        guard !key.contains("`") else { throw Unwritable(value: key) }
        return "tags.`\(key)` = \(try quote(value))"
    }

    /// `name = 'value'`.
    public static func name(equals value: String) throws(Unwritable) -> String {
        "name = \(try quote(value))"
    }

    /// `run_id = 'value'`.
    public static func runID(equals value: String) throws(Unwritable) -> String {
        "run_id = \(try quote(value))"
    }

    /// The conditions joined with AND (model-version and run searches accept AND; registered-model
    /// searches take a single condition).
    public static func all(_ conditions: [String]) -> String {
        conditions.joined(separator: " AND ")
    }

    /// A string literal of the filter language.
    public static func quote(_ value: String) throws(Unwritable) -> String {
        if !value.contains("'") { return "'\(value)'" }
        if !value.contains("\"") { return "\"\(value)\"" }
        throw Unwritable(value: value)
    }
}
