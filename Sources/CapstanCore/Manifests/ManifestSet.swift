/// The desired state at one source revision: every valid object, by kind.
public struct ManifestSet: Sendable, Hashable {
    public var config: ConfigManifest?
    public var models: [ModelManifest]
    public var deployments: [DeploymentManifest]

    public init(config: ConfigManifest? = nil, models: [ModelManifest] = [], deployments: [DeploymentManifest] = []) {
        self.config = config
        self.models = models
        self.deployments = deployments
    }

    /// The effective configuration: the Config manifest's spec, or the defaults.
    public var configSpec: ConfigSpec { config?.spec ?? ConfigSpec() }

    public func model(named name: String) -> ModelManifest? {
        models.first { $0.metadata.name == name }
    }

    public var objectCount: Int { models.count + deployments.count + (config == nil ? 0 : 1) }
}

/// Checks that need more than one document: duplicate names and references between objects.
public enum ReferenceChecker {
    /// Builds the set from decoded documents and returns it with the problems found. An object
    /// defined twice is reported at both places; the first definition is kept.
    public static func assemble(_ manifests: [Manifest]) -> (ManifestSet, [Diagnostic]) {
        var diagnostics: [Diagnostic] = []
        var set = ManifestSet()
        struct Key: Hashable { var kind: ManifestKind; var name: String }
        var seen: [Key: ManifestOrigin] = [:]
        seen.reserveCapacity(manifests.count)

        for manifest in manifests {
            let key = Key(kind: manifest.kind, name: manifest.metadata.name)
            let origin = manifest.origin
            if case .config = manifest, let first = set.config, first.metadata.name != manifest.metadata.name {
                diagnostics.append(.error(
                    .duplicateObject, "only one Config manifest is allowed; '\(first.metadata.name)' is already defined",
                    at: origin.location, hint: "merge the two into one Config document",
                    related: [RelatedLocation(first.origin.location, "the Config in force is defined here")]))
                continue
            }
            if let first = seen[key] {
                let name = manifest.metadata.name
                let here = origin.location(of: "metadata.name")
                let there = first.location(of: "metadata.name")
                diagnostics.append(.error(
                    .duplicateObject, "\(manifest.kind.rawValue) '\(name)' is defined more than once",
                    at: here, length: name.count,
                    hint: "rename one of them or delete the copy; names are unique per kind",
                    related: [RelatedLocation(there, "'\(name)' is first defined here")]))
                diagnostics.append(.error(
                    .duplicateObject, "\(manifest.kind.rawValue) '\(name)' is defined more than once",
                    at: there, length: name.count,
                    hint: "rename one of them or delete the copy; names are unique per kind",
                    related: [RelatedLocation(here, "'\(name)' is defined again here")]))
                continue
            }
            seen[key] = origin
            switch manifest {
            case .config(let c): set.config = c
            case .model(let m): set.models.append(m)
            case .deployment(let d): set.deployments.append(d)
            }
        }

        var modelsByName: [String: Int] = [:]
        modelsByName.reserveCapacity(set.models.count)
        for (i, m) in set.models.enumerated() { modelsByName[m.metadata.name] = i }
        for deployment in set.deployments {
            let model = modelsByName[deployment.spec.model].map { set.models[$0] }
            diagnostics += problems(of: deployment, model: model, modelNames: set.models.map(\.metadata.name))
        }
        return (set, diagnostics)
    }

    /// What is wrong between `deployment` and the model it serves (`model`: the one of that name,
    /// nil when none is defined): an unknown model, a model without `spec.serve`, an alias it
    /// does not declare. `modelNames` (every model's name) is read only to suggest a name.
    public static func problems(of deployment: DeploymentManifest, model: ModelManifest?,
                                modelNames: @autoclosure () -> [String]) -> [Diagnostic] {
        var diagnostics: [Diagnostic] = []
        let origin = deployment.origin
        let modelName = deployment.spec.model
        guard !modelName.isEmpty else { return [] }
        guard let model else {
            // An invalid name was reported where it is written; do not pile a lookup failure on it.
            if Names.dnsLabelProblem(modelName) != nil { return [] }
            let suggestion = Suggest.closest(to: modelName, among: modelNames())
            return [.error(
                .unknownModel, "Deployment '\(deployment.metadata.name)' refers to model '\(modelName)', which no manifest defines",
                at: origin.location(of: "spec.model"), length: modelName.count,
                hint: suggestion.map { "did you mean '\($0)'?" }
                    ?? "add a Model manifest named '\(modelName)' or correct spec.model")]
        }
        if model.spec.serve == nil {
            diagnostics.append(.error(
                .missingField, "Deployment '\(deployment.metadata.name)' serves model '\(modelName)', which has no spec.serve",
                at: origin.location(of: "spec.model"), length: modelName.count,
                hint: "add spec.serve (the command that serves a version) to Model '\(modelName)' in \(model.origin.file)",
                related: [RelatedLocation(model.origin.location(of: "metadata.name"), "model '\(modelName)' is defined here")]))
        }
        // An alias written with an invalid target is still declared (its target was reported).
        if case .alias(let alias)? = deployment.spec.target, model.spec.alias(named: alias) == nil,
           model.origin.fields["spec.aliases.\(alias)"] == nil {
            let declared = model.spec.aliases.map(\.name)
            let suggestion = Suggest.closest(to: alias, among: declared)
            let list = declared.isEmpty ? "it declares no aliases" : "it declares " + declared.map { "'\($0)'" }.joined(separator: ", ")
            diagnostics.append(.error(
                .undeclaredAlias, "alias '\(alias)' is not declared by model '\(modelName)' (\(list))",
                at: origin.location(of: "spec.alias"), length: alias.count,
                hint: suggestion.map { "did you mean '\($0)'?" }
                    ?? "declare it under spec.aliases of Model '\(modelName)' (\(model.origin.file)), or use `version: N`",
                related: [RelatedLocation(model.origin.location(of: "metadata.name"), "model '\(modelName)' is defined here")]))
        }
        return diagnostics
    }
}
