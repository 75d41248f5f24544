import CapstanCore
import Foundation

/// Generates the JSON Schema (draft 2020-12) of all manifest kinds from `ManifestSchema`, for
/// editors (yaml-language-server) and CI validators.
public enum JSONSchemaGenerator {
    public static let schemaID = "https://capstan.dev/schemas/capstan-v1.json"

    public static func schema() -> [String: Any] {
        var defs: [String: Any] = [:]
        for object in ManifestSchema.allObjects { defs[object.id] = objectSchema(object) }
        for kind in ManifestKind.allCases {
            defs[kind.rawValue] = objectSchema(ManifestDecoder.documentSchema(kind))
        }
        let conditions: [[String: Any]] = ManifestKind.allCases.map { kind in
            [
                "if": ["properties": ["kind": ["const": kind.rawValue]], "required": ["kind"]],
                "then": ["$ref": "#/$defs/\(kind.rawValue)"],
            ]
        }
        return [
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": schemaID,
            "title": "Capstan manifest (\(capstanAPIVersion))",
            "description": "A Capstan manifest document: kind Config, Model or Deployment.",
            "type": "object",
            "required": ["apiVersion", "kind", "metadata"],
            "properties": [
                "apiVersion": ["const": capstanAPIVersion],
                "kind": ["enum": ManifestKind.allCases.map(\.rawValue)],
            ],
            "allOf": conditions,
            "$defs": defs,
        ]
    }

    public static func json() -> String {
        let data = try! JSONSerialization.data(withJSONObject: schema(), options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    static func objectSchema(_ object: ObjectSchema) -> [String: Any] {
        var properties: [String: Any] = [:]
        for field in object.fields {
            var p = typeSchema(field.type)
            p["description"] = field.doc + (field.defaultValue.map { " Default: \($0)." } ?? "")
            properties[field.name] = p
        }
        var s: [String: Any] = [
            "type": object.allOptional ? ["object", "null"] : "object",
            "description": object.doc,
            "properties": properties,
            "additionalProperties": false,
        ]
        let required = object.fields.filter(\.required).map(\.name)
        if !required.isEmpty { s["required"] = required }
        if object.id == ManifestSchema.inputObject.id {
            // {path} alone, or {uri, version}: the same rule the validator applies.
            s["oneOf"] = [
                ["required": ["path"], "not": ["anyOf": [["required": ["uri"]], ["required": ["version"]]]]],
                ["required": ["uri", "version"], "not": ["required": ["path"]]],
            ]
        }
        if let choices = object.exactlyOneOf {
            s["oneOf"] = choices.map { ["required": [$0]] }
        }
        return s
    }

    static func typeSchema(_ type: FieldType) -> [String: Any] {
        switch type {
        case .string(let rule): return stringSchema(rule)
        case .integer(let min, let max):
            var s: [String: Any] = ["type": "integer"]
            if let min { s["minimum"] = min }
            if let max { s["maximum"] = max }
            return s
        case .number(let min, let max):
            var s: [String: Any] = ["type": "number"]
            if let min { s["minimum"] = min }
            if let max { s["maximum"] = max }
            return s
        case .boolean: return ["type": "boolean"]
        case .duration:
            // Units from largest to smallest, each at most once: 1h30m, 250ms, 1d.
            return ["type": "string", "pattern": "^(?=[0-9])([0-9]+d)?([0-9]+h)?([0-9]+m(?!s))?([0-9]+s)?([0-9]+ms)?$",
                    "examples": ["90s", "30m", "2h", "1d", "1h30m", "250ms"]]
        case .enumeration(let values): return ["enum": values]
        case .list(let element): return ["type": "array", "items": typeSchema(element)]
        case .map(let keys, let values):
            var s: [String: Any] = ["type": ["object", "null"], "additionalProperties": typeSchema(values)]
            let keySchema = stringSchema(keys)
            if keySchema.count > 1 { s["propertyNames"] = keySchema }
            return s
        case .object(let object): return ["$ref": "#/$defs/\(object.id)"]
        case .argv:
            return ["oneOf": [
                ["type": "string", "minLength": 1],
                ["type": "array", "items": ["type": "string", "minLength": 1], "minItems": 1],
            ]]
        case .anyValue: return [:]
        case .aliasTarget:
            return ["oneOf": [["type": "integer", "minimum": 1], ["const": "latest"]]]
        case .trainInput:
            return ["oneOf": [["type": "string", "minLength": 1], ["$ref": "#/$defs/\(ManifestSchema.inputObject.id)"]]]
        }
    }

    static func stringSchema(_ rule: StringRule) -> [String: Any] {
        switch rule {
        case .any: return ["type": ["string", "number", "boolean"]]
        case .nonEmpty: return ["type": "string", "minLength": 1]
        case .dnsLabel: return ["type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"]
        case .envName: return ["type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"]
        case .aliasName: return ["type": "string", "pattern": "^[a-z][a-z0-9_-]{0,62}$", "not": ["enum": ["latest"]]]
        case .metricName: return ["type": "string", "pattern": "^[A-Za-z0-9_./-]{1,128}$"]
        case .labelKey: return ["type": "string", "pattern": "^([^/]{1,253}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"]
        case .repoPath: return ["type": "string", "minLength": 1, "pattern": "^[^/]"]
        case .inputPath: return ["type": "string", "minLength": 1]
        case .absolutePath: return ["type": "string", "pattern": "^/"]
        case .glob: return ["type": "string", "minLength": 1, "pattern": "^[^/]"]
        case .httpURL: return ["type": "string", "pattern": "^https?://"]
        case .urlPath: return ["type": "string", "pattern": "^/"]
        case .uri: return ["type": "string", "pattern": "^[A-Za-z][A-Za-z0-9+.-]*://"]
        }
    }

    // MARK: - Field reference (docs/manifests.md)

    /// The field reference as Markdown: one table per object.
    public static func markdownReference() -> String {
        var out = ""
        var objects: [ObjectSchema] = ManifestKind.allCases.map { ManifestDecoder.documentSchema($0) }
        objects += ManifestSchema.allObjects
        for object in objects {
            out += "### `\(object.id)`\n\n\(object.doc)"
            if let choices = object.exactlyOneOf { out += " Exactly one of " + choices.map { "`\($0)`" }.joined(separator: ", ") + " must be set." }
            out += "\n\n"
            if object.fields.isEmpty {
                out += "No fields: write `{}`.\n\n"
                continue
            }
            out += "| field | type | required | default | description | example |\n|---|---|---|---|---|---|\n"
            for f in object.fields {
                let cells = [
                    "`\(f.name)`", typeName(f.type), f.required ? "yes" : "no",
                    f.defaultValue.map { "`\($0)`" } ?? "—", f.doc, f.example.map { "`\($0)`" } ?? "—",
                ].map { $0.replacingOccurrences(of: "|", with: "\\|") }
                out += "| " + cells.joined(separator: " | ") + " |\n"
            }
            out += "\n"
        }
        return out
    }

    static func typeName(_ type: FieldType) -> String {
        switch type {
        case .string(let rule):
            switch rule {
            case .dnsLabel: return "name (DNS label)"
            case .envName: return "env var name"
            case .aliasName: return "alias name"
            case .metricName: return "metric name"
            case .repoPath: return "repository path"
            case .inputPath: return "path"
            case .absolutePath: return "absolute path"
            case .glob: return "glob"
            case .httpURL: return "URL"
            case .urlPath: return "URL path"
            case .uri: return "URI"
            case .labelKey: return "label key"
            case .any, .nonEmpty: return "string"
            }
        case .integer(let min, let max):
            if let min, let max { return "integer \(min)–\(max)" }
            if let min { return "integer ≥ \(min)" }
            return "integer"
        case .number(let min, let max):
            if let min, let max { return "number \(Validator.fmt(min))–\(Validator.fmt(max))" }
            if let min { return "number ≥ \(Validator.fmt(min))" }
            return "number"
        case .boolean: return "boolean"
        case .duration: return "duration"
        case .enumeration(let values): return values.map { "`\($0)`" }.joined(separator: " | ")
        case .list(let e): return "list of \(typeName(e))"
        case .map(_, let v): return "map of \(typeName(v))"
        case .object(let o): return "[`\(o.id)`](#\(o.id.lowercased()))"
        case .argv: return "command (argv)"
        case .anyValue: return "any"
        case .aliasTarget: return "version number or `latest`"
        case .trainInput: return "path or [`TrainInputObject`](#traininputobject)"
        }
    }
}
