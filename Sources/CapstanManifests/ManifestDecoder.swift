import CapstanCore

/// Decodes the YAML documents of one file into manifests and diagnostics. Pure: the same bytes
/// always give the same result, which is what makes the parse cache (keyed by blob id) sound.
public struct ManifestDecoder: Sendable {
    public var reader: YAMLReader
    /// Also keep each manifest's fields as written (for `capstan diff`).
    public var keepFields: Bool

    public init(reader: YAMLReader = YAMLReader(), keepFields: Bool = false) {
        self.reader = reader
        self.keepFields = keepFields
    }

    /// The outcome for one file.
    public struct FileResult: Sendable {
        public var manifests: [Manifest]
        /// With `keepFields`: each manifest's fields as written, aligned with `manifests`.
        public var fields: [[String: String]] = []
        public var diagnostics: [Diagnostic]
        /// The text, kept when there are diagnostics (for caret snippets).
        public var text: String?
    }

    /// Decodes one file. `declaredSize` lets a caller refuse an oversized file without reading it.
    public func decode(_ bytes: [UInt8], file: String, declaredSize: Int? = nil) -> FileResult {
        let read = reader.read(bytes, file: file, declaredSize: declaredSize)
        var diagnostics = read.diagnostics
        var manifests: [Manifest] = []
        var fields: [[String: String]] = []
        let paths = PathInterner()
        for document in read.documents where !(document.root.isNull && document.root.tag == nil) {
            var ctx = ValidationContext(file: file, paths: paths)
            if let manifest = decodeDocument(document, ctx: &ctx) {
                manifests.append(manifest)
                if keepFields { fields.append(Flatten.document(document.root)) }
            }
            diagnostics += ctx.diagnostics
        }
        return FileResult(manifests: manifests, fields: fields, diagnostics: diagnostics, text: diagnostics.isEmpty ? nil : read.text)
    }

    static let documentFields = ["apiVersion", "kind", "metadata", "spec"]

    static func documentSchema(_ kind: ManifestKind) -> ObjectSchema {
        switch kind {
        case .config: return configDocument
        case .model: return modelDocument
        case .deployment: return deploymentDocument
        }
    }

    static func makeDocumentSchema(_ kind: ManifestKind, specRequired: Bool) -> ObjectSchema {
        ObjectSchema(id: kind.rawValue, doc: ManifestSchema.kindDoc(kind), fields: [
            FieldSpec("apiVersion", .enumeration([capstanAPIVersion]), required: true, doc: "Always `capstan/v1`.", example: capstanAPIVersion),
            FieldSpec("kind", .enumeration([kind.rawValue]), required: true, doc: "`\(kind.rawValue)`.", example: kind.rawValue),
            FieldSpec("metadata", .object(ManifestSchema.metadata), required: true, doc: "Name and labels.", example: "{name: churn}"),
            FieldSpec("spec", .object(ManifestSchema.specSchema(for: kind)), required: specRequired,
                      doc: ManifestSchema.specSchema(for: kind).doc, example: nil),
        ])
    }

    static let configDocument = makeDocumentSchema(.config, specRequired: false)
    static let modelDocument = makeDocumentSchema(.model, specRequired: true)
    static let deploymentDocument = makeDocumentSchema(.deployment, specRequired: true)

    func decodeDocument(_ document: YAMLDocument, ctx: inout ValidationContext) -> Manifest? {
        let root = document.root
        guard root.mappingPairs != nil else {
            ctx.error(.wrongType, "a manifest must be a mapping with apiVersion, kind, metadata and spec, found \(root.kindDescription)", root)
            return nil
        }
        // apiVersion and kind decide everything else: check them first and stop if they are wrong.
        guard let apiNode = root["apiVersion"] else {
            ctx.error(.missingField, "manifest is missing required field 'apiVersion'", root, length: 1,
                      hint: "add apiVersion: \(capstanAPIVersion) (if this file is not a Capstan manifest, exclude it in capstan.yaml spec.exclude)")
            return nil
        }
        guard let api = apiNode.scalar, !apiNode.isNull, api == capstanAPIVersion else {
            let found = apiNode.scalar ?? apiNode.kindDescription
            let hint = found.hasPrefix("capstan/")
                ? "this Capstan reads \(capstanAPIVersion); write apiVersion: \(capstanAPIVersion)"
                : "Capstan manifests use apiVersion: \(capstanAPIVersion); if this file is not a Capstan manifest, exclude it in capstan.yaml spec.exclude"
            ctx.error(.unknownAPIVersion, "unknown apiVersion '\(found)'", apiNode, hint: hint)
            return nil
        }
        guard let kindNode = root["kind"] else {
            ctx.error(.missingField, "manifest is missing required field 'kind'", root, length: 1,
                      hint: "add kind: Model, kind: Deployment or kind: Config")
            return nil
        }
        guard let kindText = kindNode.scalar, let kind = ManifestKind(rawValue: kindText) else {
            let found = kindNode.scalar ?? kindNode.kindDescription
            let names = ManifestKind.allCases.map(\.rawValue)
            let suggestion = names.first { $0.lowercased() == found.lowercased() } ?? Suggest.closest(to: found, among: names)
            ctx.error(.unknownKind, "unknown kind '\(found)'", kindNode,
                      hint: suggestion.map { "did you mean '\($0)'?" } ?? "kinds are \(names.joined(separator: ", "))")
            return nil
        }
        Validator.checkObject(root, schema: Self.documentSchema(kind), path: "", ctx: &ctx)

        guard let name = root["metadata"]?["name"]?.scalar, !name.isEmpty else { return nil }
        var origin = ManifestOrigin(file: ctx.file, documentIndex: document.index, location: root.location(in: ctx.file), fields: ctx.fields)
        let metadata = ObjectMeta(name: name, labels: Read.stringMap(root["metadata"]?["labels"]),
                                  annotations: Read.stringMap(root["metadata"]?["annotations"]))
        let spec = root["spec"]
        switch kind {
        case .config:
            return .config(ConfigManifest(metadata: metadata, spec: Build.config(spec), origin: origin))
        case .model:
            let (model, inputIndices) = Build.model(spec)
            origin.writtenIndices["spec.train.inputs"] = inputIndices
            return .model(ModelManifest(metadata: metadata, spec: model, origin: origin))
        case .deployment:
            return .deployment(DeploymentManifest(metadata: metadata, spec: Build.deployment(spec), origin: origin))
        }
    }
}

/// Lenient readers: the value when it is well-formed, nil otherwise (the validator has already
/// reported the problem).
enum Read {
    static func string(_ n: YAMLNode?) -> String? {
        guard let n, !n.isNull, case .scalar(let s, _) = n.value else { return nil }
        return s
    }

    static func int(_ n: YAMLNode?) -> Int? {
        guard let n, n.isPlainScalar, let s = n.scalar, let i = ScalarSyntax.integer(s) else { return nil }
        return Int(exactly: i)
    }

    static func double(_ n: YAMLNode?) -> Double? {
        guard let n, n.isPlainScalar, let s = n.scalar else { return nil }
        return ScalarSyntax.number(s)
    }

    static func bool(_ n: YAMLNode?) -> Bool? {
        guard let n, n.isPlainScalar, let s = n.scalar else { return nil }
        return ScalarSyntax.bool(s)
    }

    static func duration(_ n: YAMLNode?) -> ManifestDuration? {
        string(n).flatMap { try? ManifestDuration.parse($0).get() }
    }

    /// A relative path inside the repository, normalized; nil for absolute or escaping paths.
    static func repoPath(_ n: YAMLNode?) -> String? {
        guard let s = string(n), !s.hasPrefix("/"), !s.trimmingWhitespace().isEmpty else { return nil }
        return RepoPath.normalize(s)
    }

    static func stringList(_ n: YAMLNode?) -> [String] {
        n?.sequenceItems?.compactMap(string) ?? []
    }

    static func stringMap(_ n: YAMLNode?) -> [String: String] {
        var out: [String: String] = [:]
        for (k, v) in n?.mappingPairs ?? [] {
            if let key = k.scalar, let value = string(v) { out[key] = value }
        }
        return out
    }

    static func argv(_ n: YAMLNode?) -> [String]? {
        guard let n else { return nil }
        if let s = string(n) { return s.isEmpty ? nil : [s] }
        guard let items = n.sequenceItems else { return nil }
        let argv = items.compactMap(string)
        return argv.count == items.count && !argv.isEmpty ? argv : nil
    }

    static func param(_ n: YAMLNode) -> ParamValue {
        switch n.value {
        case .scalar(let s, let style):
            if style != .plain || n.tag == "tag:yaml.org,2002:str" { return .string(s) }
            if n.isNull { return .null }
            if let b = ScalarSyntax.bool(s) { return .bool(b) }
            if let i = ScalarSyntax.integer(s) { return .int(i) }
            if let d = ScalarSyntax.number(s) { return .double(d) }
            return .string(s)
        case .sequence(let items):
            return .list(items.map(param))
        case .mapping(let pairs):
            var m: [String: ParamValue] = [:]
            for (k, v) in pairs { if let key = k.scalar { m[key] = param(v) } }
            return .map(m)
        }
    }
}

/// Builds typed specs from (possibly partly invalid) nodes.
enum Build {
    static func config(_ n: YAMLNode?) -> ConfigSpec {
        var spec = ConfigSpec()
        guard let n else { return spec }
        // Kept as written and in place, so the loader can point at entry i.
        spec.manifests = n["manifests"]?.sequenceItems?.map { Read.string($0) ?? "" } ?? []
        spec.exclude = Read.stringList(n["exclude"])
        spec.dataRoots = Read.stringList(n["dataRoots"]).compactMap(HostPath.normalize)
        if let mlflow = n["registry"]?["mlflow"], let url = Read.string(mlflow["url"]) {
            spec.registry = .mlflow(MLflowRegistryConfig(
                url: url, tokenEnv: Read.string(mlflow["tokenEnv"]), usernameEnv: Read.string(mlflow["usernameEnv"]),
                passwordEnv: Read.string(mlflow["passwordEnv"]),
                experiment: Read.string(mlflow["experiment"]) ?? MLflowRegistryConfig.defaultExperiment,
                timeout: Read.duration(mlflow["timeout"]) ?? MLflowRegistryConfig.defaultTimeout))
        }
        if let local = n["serving"]?["local"] {
            spec.serving = .local(LocalServingConfig(admin: Read.string(local["admin"]) ?? LocalServingConfig.defaultAdmin,
                                                     tokenEnv: Read.string(local["tokenEnv"])))
        }
        if let p = n["policy"] {
            spec.policy.prune = Read.bool(p["prune"]) ?? false
            spec.policy.drift = Read.string(p["drift"]).flatMap(DriftPolicy.init(rawValue:)) ?? .revert
            spec.policy.parallelism = Read.int(p["parallelism"]).map { max(1, $0) } ?? 2
            if let initial = Read.duration(p["retry"]?["initial"]) { spec.policy.retry.initial = initial }
            if let maximum = Read.duration(p["retry"]?["max"]) { spec.policy.retry.max = maximum }
        }
        return spec
    }

    /// The spec, and for each typed input the index it was written at.
    static func model(_ n: YAMLNode?) -> (ModelSpec, [Int]) {
        // No `train`: a registry-only model (`null` is an invalid value, reported by the schema).
        let t = n?["train"]
        var train = TrainSpec(command: Read.argv(t?["command"]) ?? [])
        train.workdir = Read.repoPath(t?["workdir"]) ?? ""
        var inputIndices: [Int] = []
        for (i, item) in (t?["inputs"]?.sequenceItems ?? []).enumerated() {
            if let typed = input(item) {
                train.inputs.append(typed)
                inputIndices.append(i)
            }
        }
        for (k, v) in t?["params"]?.mappingPairs ?? [] {
            if let key = k.scalar { train.params[key] = Read.param(v) }
        }
        train.env = Read.stringMap(t?["env"])
        train.secretEnv = Read.stringMap(t?["secretEnv"])
        train.timeout = Read.duration(t?["timeout"]) ?? TrainSpec.defaultTimeout

        var spec = ModelSpec(description: Read.string(n?["description"]), train: t == nil ? nil : train)
        if let v = n?["validate"], v.mappingPairs != nil || v.isNull {
            var validate = ValidateSpec()
            for (k, g) in v["metrics"]?.mappingPairs ?? [] {
                guard let metric = k.scalar else { continue }
                validate.metrics.append(NamedGate(metric: metric, gate: MetricGate(min: Read.double(g["min"]), max: Read.double(g["max"]))))
            }
            validate.noRegressionAgainst = Read.string(v["noRegressionAgainst"])
            for (k, tol) in v["tolerance"]?.mappingPairs ?? [] {
                if let metric = k.scalar, let d = Read.double(tol) { validate.tolerance[metric] = d }
            }
            validate.command = Read.argv(v["command"])
            validate.workdir = Read.repoPath(v["workdir"])
            validate.timeout = Read.duration(v["timeout"]) ?? ValidateSpec.defaultTimeout
            spec.validate = validate
        }
        if let s = n?["serve"], let command = Read.argv(s["command"]) {
            var serve = ServeSpec(command: command)
            serve.workdir = Read.repoPath(s["workdir"]) ?? ""
            serve.env = Read.stringMap(s["env"])
            serve.secretEnv = Read.stringMap(s["secretEnv"])
            if let r = s["readiness"] {
                serve.readiness.path = Read.string(r["path"]) ?? serve.readiness.path
                serve.readiness.timeout = Read.duration(r["timeout"]) ?? serve.readiness.timeout
            }
            spec.serve = serve
        }
        for (k, v) in n?["aliases"]?.mappingPairs ?? [] {
            guard let name = k.scalar, let text = Read.string(v) else { continue }
            if text == "latest" {
                spec.aliases.append(AliasPin(name: name, target: .latest))
            } else if let number = Read.int(v), number >= 1 {
                spec.aliases.append(AliasPin(name: name, target: .version(number)))
            }
        }
        if let keep = Read.int(n?["retention"]?["keepVersions"]), keep >= 1 {
            spec.retention = RetentionSpec(keepVersions: keep)
        }
        if let c = n?["card"], c.mappingPairs != nil {
            spec.card = CardSpec(owners: Read.stringList(c["owners"]), intendedUse: Read.string(c["intendedUse"]),
                                 limitations: Read.string(c["limitations"]), ethicalConsiderations: Read.string(c["ethicalConsiderations"]))
        }
        return (spec, inputIndices)
    }

    static func input(_ n: YAMLNode) -> TrainInput? {
        if let s = Read.string(n) { return pathInput(s) }
        if let uri = Read.string(n["uri"]), let version = Read.string(n["version"]) { return .uri(uri, version: version) }
        if let path = Read.string(n["path"]) { return pathInput(path) }
        return nil
    }

    static func pathInput(_ s: String) -> TrainInput? {
        if s.trimmingWhitespace().isEmpty { return nil }
        if s.hasPrefix("/") { return HostPath.normalize(s).map(TrainInput.external) }
        return RepoPath.normalize(s).map(TrainInput.repository)
    }

    static func deployment(_ n: YAMLNode?) -> DeploymentSpec {
        var target: DeploymentTarget?
        let alias = Read.string(n?["alias"]), version = Read.int(n?["version"])
        if let alias, version == nil { target = .alias(alias) }
        if let version, alias == nil, n?["alias"] == nil { target = .version(version) }
        var spec = DeploymentSpec(model: Read.string(n?["model"]) ?? "", target: target)
        spec.replicas = Read.int(n?["replicas"]).map { max(1, $0) } ?? 1
        if let canary = n?["strategy"]?["canary"] {
            var c = CanarySpec(steps: [])
            for step in canary["steps"]?.sequenceItems ?? [] {
                if let w = Read.int(step["weight"]), let p = Read.duration(step["pause"]) {
                    c.steps.append(CanaryStep(weight: w, pause: p))
                }
            }
            if let a = canary["analysis"] {
                c.analysis.interval = Read.duration(a["interval"]) ?? c.analysis.interval
                c.analysis.minRequests = Read.int(a["minRequests"]) ?? c.analysis.minRequests
                c.analysis.maxErrorRate = Read.double(a["maxErrorRate"]) ?? c.analysis.maxErrorRate
                c.analysis.maxLatencyP95 = Read.duration(a["maxLatencyP95"])
            }
            spec.strategy = .canary(c)
        }
        return spec
    }
}
