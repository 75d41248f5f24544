/// One object's fields as written, flattened to `path → value` (`spec.train.params.lr → 0.05`).
public struct ObjectSnapshot: Sendable, Hashable {
    public var kind: ManifestKind
    public var name: String
    public var file: String
    public var fields: [String: String]

    public init(kind: ManifestKind, name: String, file: String, fields: [String: String]) {
        self.kind = kind
        self.name = name
        self.file = file
        self.fields = fields
    }

    public var key: String { "\(kind.rawValue)/\(name)" }
}

/// What a change does to the desired state: objects added, removed, and changed field by field.
public struct ObjectChange: Sendable, Hashable, Codable {
    public enum Change: String, Sendable, Codable { case added, removed, modified }

    public struct Field: Sendable, Hashable, Codable {
        public var path: String
        /// Nil when the field was not set before.
        public var before: String?
        /// Nil when the field is no longer set.
        public var after: String?
    }

    public var kind: ManifestKind
    public var name: String
    public var file: String
    public var change: Change
    public var fields: [Field]
    /// For models: repository inputs whose content changed (a retrain is due).
    public var changedInputs: [String]
}

public enum DesiredStateDiff {
    /// Compares two desired states. `changedPaths` are the repository paths that differ between
    /// the two commits; a model whose in-repo input contains one of them is reported with that
    /// input, except for paths that are manifest files (`manifestFiles`): a manifest inside an
    /// input folder is not part of the input (DESIGN §2), so a promotion never retrains.
    public static func compare(
        base: [ObjectSnapshot], head: [ObjectSnapshot],
        headModels: [ModelManifest] = [], changedPaths: [String] = [], manifestFiles: Set<String> = []
    ) -> [ObjectChange] {
        var baseByKey: [String: ObjectSnapshot] = [:]
        for s in base { baseByKey[s.key] = s }
        var headByKey: [String: ObjectSnapshot] = [:]
        for s in head { headByKey[s.key] = s }

        let dataChanges = changedPaths.filter { !manifestFiles.contains($0) }
        var inputsByModel: [String: [String]] = [:]
        for model in headModels {
            var hits: [String] = []
            for case .repository(let input) in model.spec.train?.inputs ?? []
            where dataChanges.contains(where: { RepoPath.isInside($0, input) }) {
                hits.append(input.isEmpty ? "." : input)
            }
            if !hits.isEmpty { inputsByModel[model.metadata.name] = hits }
        }

        var changes: [ObjectChange] = []
        for key in Set(baseByKey.keys).union(headByKey.keys).sorted() {
            let before = baseByKey[key], after = headByKey[key]
            let subject = (after ?? before)!
            let inputs = subject.kind == .model ? inputsByModel[subject.name] ?? [] : []
            switch (before, after) {
            case (nil, let a?):
                changes.append(ObjectChange(kind: a.kind, name: a.name, file: a.file, change: .added, fields: [], changedInputs: []))
            case (let b?, nil):
                changes.append(ObjectChange(kind: b.kind, name: b.name, file: b.file, change: .removed, fields: [], changedInputs: []))
            case (let b?, let a?):
                var fields: [ObjectChange.Field] = []
                for path in Set(b.fields.keys).union(a.fields.keys).sorted(by: fieldOrder) where b.fields[path] != a.fields[path] {
                    fields.append(.init(path: path, before: b.fields[path], after: a.fields[path]))
                }
                if !fields.isEmpty || !inputs.isEmpty || a.file != b.file {
                    changes.append(ObjectChange(kind: a.kind, name: a.name, file: a.file, change: .modified, fields: fields, changedInputs: inputs))
                }
            case (nil, nil):
                break
            }
        }
        return changes
    }

    /// `spec.a[2]` before `spec.a[10]`.
    static func fieldOrder(_ a: String, _ b: String) -> Bool {
        a.compare(b, options: .numeric) == .orderedAscending
    }
}

import Foundation
