import Foundation

/// The JSON of an `EndpointSpec` as the admin API and `endpoints.json` accept it: the core type's
/// field names, with `env`, `secretEnv`, `readinessPath` and `readinessTimeoutMilliseconds`
/// optional (their defaults are the core type's).
struct EndpointSpecDocument: Decodable {
    struct Backend: Decodable {
        var version: Int
        var weight: Int
        var replicas: Int
        var command: [String]
        var workdir: String
        var modelDir: String
        var artifactDigest: String
        var env: [String: String]?
        var secretEnv: [String: String]?
        var readinessPath: String?
        var readinessTimeoutMilliseconds: Int64?
    }

    var deployment: String
    var model: String
    var backends: [Backend]

    var spec: EndpointSpec {
        EndpointSpec(deployment: deployment, model: model, backends: backends.map { b in
            BackendSpec(version: b.version, weight: b.weight, replicas: b.replicas, command: b.command, workdir: b.workdir,
                        modelDir: b.modelDir, artifactDigest: b.artifactDigest, env: b.env ?? [:], secretEnv: b.secretEnv ?? [:],
                        readinessPath: b.readinessPath ?? "/healthz", readinessTimeoutMilliseconds: b.readinessTimeoutMilliseconds ?? 60_000)
        })
    }

    /// Decodes a spec; the error says which field is wrong, in words.
    static func decode(_ data: Data) throws(EndpointSpecProblem) -> EndpointSpec {
        do {
            return try JSONDecoder().decode(EndpointSpecDocument.self, from: data).spec
        } catch let error as DecodingError {
            throw EndpointSpecProblem(message: "the body is not an endpoint spec: " + describe(error))
        } catch {
            throw EndpointSpecProblem(message: "the body is not an endpoint spec: \(error)")
        }
    }

    static func path(_ codingPath: [any CodingKey]) -> String {
        var out = ""
        for key in codingPath {
            if let index = key.intValue { out += "[\(index)]" } else { out += (out.isEmpty ? "" : ".") + key.stringValue }
        }
        return out.isEmpty ? "the document" : out
    }

    static func describe(_ error: DecodingError) -> String {
        switch error {
        case .keyNotFound(let key, let context):
            let parent = path(context.codingPath)
            return "\(parent == "the document" ? "" : parent + ".")\(key.stringValue) is missing"
        case .typeMismatch(let type, let context):
            return "\(path(context.codingPath)) must be \(typeName(type))"
        case .valueNotFound(let type, let context):
            return "\(path(context.codingPath)) must be \(typeName(type)), not null"
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty { return "it is not valid JSON" }
            return "\(path(context.codingPath)): \(context.debugDescription)"
        @unknown default:
            return "\(error)"
        }
    }

    static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type, is Int64.Type: "an integer"
        case is String.Type: "a string"
        case is [String].Type: "an array of strings"
        case is [String: String].Type: "an object of strings"
        case is Bool.Type: "true or false"
        default:
            String(describing: type).hasPrefix("Array") ? "an array" : "an object"
        }
    }
}

/// Why a spec was refused (the admin API answers 400 with it).
struct EndpointSpecProblem: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

/// The rules an endpoint spec must follow before the agent accepts it.
public enum EndpointValidation {
    /// Variables the agent sets itself; a spec may not set them.
    static let reservedVariables: Set<String> = ["PORT", "CAPSTAN_MODEL_DIR", "CAPSTAN_DEPLOYMENT", "CAPSTAN_VERSION"]

    /// Every problem of `spec` (empty when it is acceptable). `pathDeployment` is the name in the
    /// request's path, when there is one.
    public static func problems(_ spec: EndpointSpec, pathDeployment: String? = nil) -> [String] {
        var out: [String] = []
        if let pathDeployment, pathDeployment != spec.deployment {
            out.append("deployment is '\(spec.deployment)' but the path names '\(pathDeployment)'")
        }
        if let problem = Names.dnsLabelProblem(spec.deployment) {
            out.append("deployment '\(spec.deployment)' is not a DNS label: \(problem)")
        }
        if spec.model.isEmpty { out.append("model is empty") }
        var seen: Set<Int> = []
        for (i, b) in spec.backends.enumerated() {
            let at = "backends[\(i)] (version \(b.version))"
            if b.version < 1 { out.append("backends[\(i)].version is \(b.version); versions start at 1") }
            if !seen.insert(b.version).inserted { out.append("version \(b.version) appears more than once in backends") }
            if !(0...100).contains(b.weight) { out.append("\(at): weight is \(b.weight); it must be between 0 and 100") }
            if b.replicas < 0 { out.append("\(at): replicas is \(b.replicas); it must be 0 or more") }
            if b.replicas > 64 { out.append("\(at): replicas is \(b.replicas); the local agent runs at most 64 per version") }
            if b.command.isEmpty || b.command[0].isEmpty { out.append("\(at): command is empty; give the server's argv, e.g. [\"python3\", \"serve.py\"]") }
            if !b.workdir.hasPrefix("/") { out.append("\(at): workdir '\(b.workdir)' is not an absolute path") }
            if !b.modelDir.hasPrefix("/") { out.append("\(at): modelDir '\(b.modelDir)' is not an absolute path") }
            if !isDigest(b.artifactDigest) { out.append("\(at): artifactDigest '\(b.artifactDigest)' is not sha256: followed by 64 hex digits") }
            if !b.readinessPath.hasPrefix("/") { out.append("\(at): readinessPath '\(b.readinessPath)' must start with '/'") }
            if b.readinessTimeoutMilliseconds < 1 { out.append("\(at): readinessTimeoutMilliseconds must be at least 1") }
            for name in b.env.keys.sorted() {
                if !Names.isEnvName(name) { out.append("\(at): env name '\(name)' is not a valid variable name") }
                if reservedVariables.contains(name) { out.append("\(at): env may not set \(name); the agent sets it") }
            }
            for (name, source) in b.secretEnv.sorted(by: { $0.key < $1.key }) {
                if !Names.isEnvName(name) { out.append("\(at): secretEnv name '\(name)' is not a valid variable name") }
                if reservedVariables.contains(name) { out.append("\(at): secretEnv may not set \(name); the agent sets it") }
                if !Names.isEnvName(source) { out.append("\(at): secretEnv \(name) names '\(source)', which is not a valid variable name") }
            }
        }
        let weights = spec.backends.map(\.weight)
        let sum = weights.reduce(0, +)
        if weights.allSatisfy({ (0...100).contains($0) }), sum != 100, sum != 0 {
            out.append("the weights add up to \(sum); they must add up to 100 (or all be 0)")
        }
        return out
    }

    static func isDigest(_ s: String) -> Bool {
        guard s.hasPrefix("sha256:") else { return false }
        let hex = s.dropFirst(7)
        return hex.count == 64 && hex.unicodeScalars.allSatisfy { ("0"..."9").contains($0) || ("a"..."f").contains($0) }
    }
}
