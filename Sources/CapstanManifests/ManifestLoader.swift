import CapstanCore
import Foundation
import Synchronization

/// Remembers decoded files by identity (a Git blob id, or size+mtime for a folder), so a pass over
/// unchanged files parses nothing.
public final class ParseCache: Sendable {
    /// Blob identity, path as displayed, and whether fields were kept: the same blob at another
    /// path yields other diagnostics, so the path is part of the key.
    struct Key: Hashable, Sendable {
        var identity: String
        var path: String
        var keepFields: Bool
    }

    private let entries = Mutex<[Key: ManifestDecoder.FileResult]>([:])
    private let decoded = Atomic<Int>(0)
    /// The last whole result, by snapshot identity and display prefix.
    private let lastLoad = Mutex<(key: String, result: LoadResult)?>(nil)

    public init() {}

    func snapshot(_ key: String) -> LoadResult? {
        lastLoad.withLock { $0?.key == key ? $0?.result : nil }
    }

    func remember(_ key: String, _ result: LoadResult) {
        lastLoad.withLock { $0 = (key, result) }
    }

    func get(_ key: Key) -> ManifestDecoder.FileResult? {
        entries.withLock { $0[key] }
    }

    /// Looks up many keys under one lock.
    func get(_ keys: [Key]) -> [ManifestDecoder.FileResult?] {
        entries.withLock { dict in keys.map { dict[$0] } }
    }

    func remove(_ keys: [Key]) {
        entries.withLock { dict in for key in keys { dict[key] = nil } }
    }

    func put(_ key: Key, _ value: ManifestDecoder.FileResult) {
        decoded.add(1, ordering: .relaxed)
        entries.withLock { $0[key] = value }
    }

    /// Drops entries not used by the last load (keys are passed in).
    func retain(only keys: Set<Key>) {
        entries.withLock { dict in
            if dict.count > keys.count { dict = dict.filter { keys.contains($0.key) } }
        }
    }

    public var count: Int { entries.withLock { $0.count } }
    /// How many files were decoded (read and parsed) into this cache since it was made: a load
    /// that finds every file in the cache adds none.
    public var decodedFiles: Int { decoded.load(ordering: .relaxed) }
}

/// The outcome of loading a source: the desired state and every problem found.
public struct LoadResult: Sendable {
    public var manifests: ManifestSet
    public var diagnostics: [Diagnostic]
    /// Text of every file that has diagnostics, by display path (for caret snippets).
    public var sources: [String: String]
    public var fileCount: Int
    /// Files actually parsed in this load (the rest came from the cache).
    public var parsedFileCount: Int
    /// With a decoder that keeps fields: every object as written (for `capstan diff`).
    public var snapshots: [ObjectSnapshot] = []
    /// The manifest files that were loaded.
    public var manifestFiles: Set<String> = []
    /// Made by patching the load of an earlier commit (`ManifestLoader.load(after:changes:)`).
    public var patched = false

    /// Line `line` (1-based) of a file with diagnostics, without its line break. Works on bytes,
    /// so CRLF files (where Swift sees "\r\n" as one Character) split correctly.
    public func sourceLine(file: String, line: Int) -> String? {
        guard let text = sources[file], line >= 1 else { return nil }
        let lines = text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        guard line <= lines.count else { return nil }
        var bytes = lines[line - 1]
        if bytes.last == UInt8(ascii: "\r") { bytes = bytes.dropLast() }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Loads every manifest from a source: `capstan.yaml` at the root first (it may name the
/// manifest folders, exclusions and data roots), then every YAML file below those folders.
public struct ManifestLoader: Sendable {
    public static let configFileNames = ["capstan.yaml", "capstan.yml"]
    /// Beyond this many changed manifest files, `load(after:changes:)` loads in full.
    static let patchLimit = 64

    public var source: any ManifestSource
    /// Prepended to repository paths in diagnostics (`examples/quickstart/`), so paths are clickable.
    public var displayPrefix: String
    public var decoder: ManifestDecoder
    public var cache: ParseCache?
    /// How many files are decoded at once.
    public var concurrency: Int

    public init(source: any ManifestSource, displayPrefix: String = "", decoder: ManifestDecoder = ManifestDecoder(),
                cache: ParseCache? = nil, concurrency: Int = ProcessInfo.processInfo.activeProcessorCount) {
        self.source = source
        self.displayPrefix = displayPrefix
        self.decoder = decoder
        self.cache = cache
        self.concurrency = max(1, concurrency)
    }

    func display(_ path: String) -> String { displayPrefix + path }

    public func load() async throws -> LoadResult {
        try await kept { try await loadUncached() }
    }

    /// The last whole result for this source's snapshot (nothing parsed then), or `compute`'s,
    /// remembered for the next load of the same snapshot.
    private func kept(otherwise compute: () async throws -> LoadResult) async throws -> LoadResult {
        let snapshotKey = source.snapshotIdentity.map { "\($0)\u{0}\(displayPrefix)\(decoder.keepFields ? "\u{0}fields" : "")" }
        if let snapshotKey, let cached = cache?.snapshot(snapshotKey) {
            var result = cached
            result.parsedFileCount = 0
            result.patched = false
            return result
        }
        let result = try await compute()
        if let snapshotKey { cache?.remember(snapshotKey, result) }
        return result
    }

    /// The load of a commit that differs from the one `previous` was loaded from only in the
    /// contents listed by `changes` (the same paths, each of the same kind): the changed manifest
    /// files are decoded and checked again, and the rest of `previous` stands. It is exactly what
    /// `load()` would return, and it falls back to `load()` whenever that is not certain:
    /// `previous` has diagnostics or kept fields, capstan.yaml changed, or a changed file now has
    /// a problem (of its own, in the paths it names, or with a Deployment) or holds other objects
    /// (kinds, names, order) than before.
    public func load(after previous: LoadResult, changes: SourceChanges) async throws -> LoadResult {
        try await kept {
            if let result = try await patched(previous, changes) { return result }
            return try await loadUncached()
        }
    }

    private func patched(_ previous: LoadResult, _ changes: SourceChanges) async throws -> LoadResult? {
        guard !decoder.keepFields, previous.diagnostics.isEmpty, previous.snapshots.isEmpty,
              !Self.configFileNames.contains(where: { changes.files[$0] != nil }) else { return nil }
        let changed = changes.files.keys.filter { previous.manifestFiles.contains($0) }.sorted()
        guard changed.count <= Self.patchLimit else { return nil }
        var result = previous
        result.parsedFileCount = 0
        result.patched = true
        if changed.isEmpty { return result }
        var files: [ManifestFile] = []
        for path in changed {
            guard let file = try await source.file(at: path), file.refusal == nil, file.path == path else { return nil }
            files.append(file)
        }
        let decoded = try await decodeAll(files)
        // Where each changed file's objects are in the set: they must be the same objects, in
        // the same order, now as before.
        var set = previous.manifests
        var changedModels: [ModelManifest] = []
        var changedNames = Set<String>()
        var changedDeployments = Set<Int>()
        for (file, fileResult, _, _) in decoded {
            guard fileResult.diagnostics.isEmpty else { return nil }
            let shown = display(file.path)
            let modelAt = set.models.indices.filter { set.models[$0].origin.file == shown }
            let deploymentAt = set.deployments.indices.filter { set.deployments[$0].origin.file == shown }
            var models = modelAt.makeIterator(), deployments = deploymentAt.makeIterator()
            for manifest in fileResult.manifests {
                switch manifest {
                case .model(let m):
                    guard let i = models.next(), set.models[i].metadata.name == m.metadata.name else { return nil }
                    set.models[i] = m
                    changedModels.append(m)
                    changedNames.insert(m.metadata.name)
                case .deployment(let d):
                    guard let i = deployments.next(), set.deployments[i].metadata.name == d.metadata.name else { return nil }
                    set.deployments[i] = d
                    changedDeployments.insert(i)
                case .config:
                    return nil
                }
            }
            guard models.next() == nil, deployments.next() == nil else { return nil }
        }
        guard try await checkPaths(changedModels, config: set.configSpec).isEmpty else { return nil }
        if !set.deployments.isEmpty {
            var modelsByName: [String: Int] = [:]
            for (i, d) in set.deployments.enumerated() where changedDeployments.contains(i) || changedNames.contains(d.spec.model) {
                if modelsByName.isEmpty {
                    for (j, m) in set.models.enumerated() { modelsByName[m.metadata.name] = j }
                }
                let model = modelsByName[d.spec.model].map { set.models[$0] }
                guard ReferenceChecker.problems(of: d, model: model, modelNames: []).isEmpty else { return nil }
            }
        }
        // The parse cache forgets what the changed files held before.
        cache?.remove(changed.compactMap { path in
            changes.files[path].map { ParseCache.Key(identity: $0.old, path: display(path), keepFields: decoder.keepFields) }
        })
        result.manifests = set
        result.parsedFileCount = decoded.filter(\.3).count
        result.patched = true
        return result
    }

    private func loadUncached() async throws -> LoadResult {
        var diagnostics: [Diagnostic] = []
        var sources: [String: String] = [:]
        var usedKeys = Set<ParseCache.Key>()
        var parsed = 0

        // 1. capstan.yaml
        var configFile: ManifestFile?
        // Paths reported as not read (a symlink out of the repository, a FIFO): never read for a snippet.
        var refused = Set<String>()
        for name in Self.configFileNames {
            guard let f = try await source.file(at: name) else { continue }
            if let refusal = f.refusal {
                diagnostics.append(refusal.diagnostic(at: display(f.path)))
                refused.insert(display(f.path))
            } else {
                configFile = f
            }
            break
        }
        var configResult: ManifestDecoder.FileResult?
        if let configFile {
            let (result, didParse) = try await decode(configFile, usedKeys: &usedKeys)
            parsed += didParse ? 1 : 0
            configResult = result
            diagnostics += result.diagnostics
            if let text = result.text { sources[display(configFile.path)] = text }
        }
        let configManifest: ConfigManifest? = configResult?.manifests.lazy.compactMap {
            if case .config(let c) = $0 { return c } else { return nil }
        }.first
        let config = configManifest?.spec ?? ConfigSpec()

        // 2. Folders to load and the files in them
        var folders: [String] = []
        if config.manifests.isEmpty { folders = [""] }
        for (i, written) in config.manifests.enumerated() {
            guard !written.hasPrefix("/"), let folder = RepoPath.normalize(written), !written.isEmpty else { continue }
            let kind = folder.isEmpty ? PathKind.directory : try await source.kind(of: folder)
            if kind == .directory {
                folders.append(folder)
                continue
            }
            let location = configManifest?.origin.location(of: "spec.manifests[\(i)]")
                ?? SourceLocation(file: display(configFile?.path ?? "capstan.yaml"), line: 1, column: 1)
            if case .refused(let refusal) = kind {
                diagnostics.append(Self.refused("manifest folder '\(written)'", refusal, at: location, length: written.count))
                continue
            }
            diagnostics.append(.error(
                .pathNotFound, kind == .missing ? "manifest folder '\(written)' does not exist" : "manifest folder '\(written)' is not a folder",
                at: location, length: written.count, hint: "create it, or correct spec.manifests in capstan.yaml"))
        }
        let excludes = config.exclude.map(Glob.init)
        var seenPaths = Set<String>()
        var files: [ManifestFile] = []
        for folder in folders {
            for f in try await source.yamlFiles(under: folder) where f.path != configFile?.path {
                if excludes.contains(where: { $0.matches(f.path) }) { continue }
                guard seenPaths.insert(f.path).inserted else { continue }
                if let refusal = f.refusal {
                    // (A refused capstan.yaml is reported once, above.)
                    if refused.insert(display(f.path)).inserted { diagnostics.append(refusal.diagnostic(at: display(f.path))) }
                } else {
                    files.append(f)
                }
            }
        }
        files.sort { $0.path < $1.path }

        // 3. Decode, in parallel
        let results = try await decodeAll(files)
        var manifests: [Manifest] = configResult?.manifests ?? []
        var snapshots: [ObjectSnapshot] = []
        var manifestFiles = Set(files.map(\.path))
        if let configFile { manifestFiles.insert(configFile.path) }
        if let configResult {
            for (m, f) in zip(configResult.manifests, configResult.fields) {
                snapshots.append(ObjectSnapshot(kind: m.kind, name: m.metadata.name, file: m.origin.file, fields: f))
            }
        }
        for (file, result, key, didParse) in results {
            for (m, f) in zip(result.manifests, result.fields) where m.kind != .config {
                snapshots.append(ObjectSnapshot(kind: m.kind, name: m.metadata.name, file: m.origin.file, fields: f))
            }
            usedKeys.insert(key)
            parsed += didParse ? 1 : 0
            diagnostics += result.diagnostics
            if let text = result.text { sources[display(file.path)] = text }
            for m in result.manifests {
                if case .config(let c) = m {
                    diagnostics.append(.error(
                        .misplacedConfig, "a Config manifest is only read from capstan.yaml at the repository root",
                        at: c.origin.location, hint: "move it into capstan.yaml at the root of the repository"))
                    continue
                }
                manifests.append(m)
            }
        }
        cache?.retain(only: usedKeys)

        // 4. References between objects and 5. paths (data roots, existence), side by side.
        let allManifests = manifests
        async let assembled = ReferenceChecker.assemble(allManifests)
        let models = manifests.compactMap { m -> ModelManifest? in
            if case .model(let model) = m { return model } else { return nil }
        }
        let pathProblems = try await checkPaths(models, config: config)
        var (set, referenceProblems) = await assembled
        diagnostics += referenceProblems
        diagnostics += pathProblems
        if set.config == nil { set.config = configManifest }

        // Make sure every file with diagnostics has its text for snippets (never a refused one:
        // those are not read at all).
        var byDisplay: [String: ManifestFile] = [:]
        for f in files { byDisplay[display(f.path)] = f }
        if let configFile { byDisplay[display(configFile.path)] = configFile }
        var wantText = Set<String>()
        for d in diagnostics where sources[d.location.file] == nil && !refused.contains(d.location.file) {
            wantText.insert(d.location.file)
        }
        for file in wantText.sorted() {
            if let f = byDisplay[file],
               (try? await source.size(of: f)).map({ $0 <= decoder.reader.limits.maxFileBytes }) == true,
               let bytes = try? await source.read(f),
               let text = String(validating: bytes, as: UTF8.self) {
                sources[file] = text
            }
        }
        return LoadResult(manifests: set, diagnostics: diagnostics.redactingSharedLines().sortedForDisplay(), sources: sources,
                          fileCount: files.count + (configFile == nil ? 0 : 1), parsedFileCount: parsed,
                          snapshots: snapshots, manifestFiles: manifestFiles)
    }

    private func cacheKey(_ file: ManifestFile) -> ParseCache.Key {
        ParseCache.Key(identity: file.identity, path: display(file.path), keepFields: decoder.keepFields)
    }

    private func decode(_ file: ManifestFile, usedKeys: inout Set<ParseCache.Key>) async throws -> (ManifestDecoder.FileResult, Bool) {
        let key = cacheKey(file)
        usedKeys.insert(key)
        if let hit = cache?.get(key) { return (hit, false) }
        let result = try await decodeUncached(file)
        cache?.put(key, result)
        return (result, true)
    }

    private func decodeUncached(_ file: ManifestFile) async throws -> ManifestDecoder.FileResult {
        try await decode(file, try await source.read([file], limit: decoder.reader.limits.maxFileBytes)[0])
    }

    private func decode(_ file: ManifestFile, _ read: ManifestRead) async throws -> ManifestDecoder.FileResult {
        let shown = display(file.path)
        switch read {
        case .tooLarge(let size):
            // Refused before reading a byte.
            return decoder.decode([], file: shown, declaredSize: size)
        case .unreadable(let error):
            // One unreadable file is one problem among others, not the end of the run.
            return ManifestDecoder.FileResult(manifests: [], diagnostics: [.error(
                .fileUnreadable, "cannot read the file: \(error.message)", at: SourceLocation(file: shown, line: 1, column: 1),
                hint: "check its permissions, or exclude it in capstan.yaml (spec.exclude)")], text: nil)
        case .bytes(let bytes):
            return decoder.decode(bytes, file: shown)
        }
    }

    private func decodeAll(_ files: [ManifestFile]) async throws -> [(ManifestFile, ManifestDecoder.FileResult, ParseCache.Key, Bool)] {
        var results = [(ManifestFile, ManifestDecoder.FileResult, ParseCache.Key, Bool)?](repeating: nil, count: files.count)
        // Cache hits are taken at once, under one lock; only misses become tasks.
        var misses: [Int] = []
        let keys = files.map(cacheKey)
        let hits = cache?.get(keys) ?? Array(repeating: nil, count: files.count)
        for (index, file) in files.enumerated() {
            if let hit = hits[index] { results[index] = (file, hit, keys[index], false) } else { misses.append(index) }
        }
        // Misses are read in batches (one round trip each) and parsed in parallel.
        let batchSize = 32
        let batches = stride(from: 0, to: misses.count, by: batchSize).map { Array(misses[$0..<min($0 + batchSize, misses.count)]) }
        let limit = decoder.reader.limits.maxFileBytes
        try await withThrowingTaskGroup(of: [(Int, ManifestDecoder.FileResult)].self) { group in
            var next = 0
            func submit() {
                let batch = batches[next]
                next += 1
                group.addTask {
                    let batchFiles = batch.map { files[$0] }
                    let reads = try await source.read(batchFiles, limit: limit)
                    var out: [(Int, ManifestDecoder.FileResult)] = []
                    for (index, read) in zip(batch, reads) {
                        let result = try await decode(files[index], read)
                        cache?.put(keys[index], result)
                        out.append((index, result))
                    }
                    return out
                }
            }
            while next < batches.count && next < concurrency * 2 { submit() }
            while let done = try await group.next() {
                for (index, result) in done { results[index] = (files[index], result, keys[index], true) }
                if next < batches.count { submit() }
            }
        }
        return results.map { $0! }
    }

    /// A path named in a manifest that leads through a refused symlink: the refusal's code and
    /// message, at the field.
    static func refused(_ subject: String, _ refusal: ManifestRefusal, at location: SourceLocation, length: Int) -> Diagnostic {
        var d = refusal.diagnostic(at: location.file)
        d.location = location
        d.length = max(1, length)
        d.message = "\(subject): \(d.message)"
        return d
    }

    private func checkPaths(_ models: [ModelManifest], config: ConfigSpec) async throws -> [Diagnostic] {
        var out: [Diagnostic] = []
        // Ask the source about every path at once (a Git tree answers from its index), in the
        // order they are checked below: each model's repository inputs, then its workdirs that
        // are written and not empty. `kind` takes the answers in that order.
        var paths: [String] = []
        paths.reserveCapacity(models.count * 3)
        for model in models {
            for case .repository(let path) in model.spec.train?.inputs ?? [] { paths.append(path) }
            for dir in [model.spec.train?.workdir, model.spec.validate?.workdir, model.spec.serve?.workdir] {
                if let dir, !dir.isEmpty { paths.append(dir) }
            }
        }
        let kinds = try await source.kinds(of: paths)
        var next = 0
        func kind(_ path: String) -> PathKind {
            defer { next += 1 }
            precondition(paths[next] == path, "checkPaths asks for the paths in the order it listed them")
            return path.isEmpty ? .directory : kinds[next]
        }
        for model in models {
            let origin = model.origin
            let train = model.spec.train
            for (i, input) in (train?.inputs ?? []).enumerated() {
                // Built only when there is something to report.
                var field: String {
                    let item = origin.itemPath("spec.train.inputs", i)
                    return origin.fields[item + ".path"] != nil ? item + ".path" : item
                }
                switch input {
                case .external(let path):
                    if !config.dataRoots.contains(where: { HostPath.isUnder(path, root: $0) }) {
                        let roots = config.dataRoots.isEmpty ? "no data roots are configured" : "data roots: " + config.dataRoots.joined(separator: ", ")
                        out.append(.error(.pathOutsideDataRoots, "input '\(path)' is outside the configured data roots (\(roots))",
                                          at: origin.location(of: field), length: path.count,
                                          hint: "add its folder to spec.dataRoots in capstan.yaml, or move the data under a data root"))
                    }
                case .repository(let path):
                    switch kind(path) {
                    case .missing:
                        out.append(.error(.pathNotFound, "input '\(path)' does not exist in the repository",
                                          at: origin.location(of: field), length: path.count,
                                          hint: "paths are relative to the repository root; commit the file or correct the path"))
                    case .refused(let refusal):
                        out.append(Self.refused("input '\(path)'", refusal, at: origin.location(of: field), length: path.count))
                    default:
                        break
                    }
                case .uri:
                    break
                }
            }
            // Only workdirs that were written and valid (the others were reported already; an
            // empty workdir is the root).
            let workdirs: [(String, String?)] = [
                ("spec.train.workdir", train?.workdir),
                ("spec.validate.workdir", model.spec.validate?.workdir),
                ("spec.serve.workdir", model.spec.serve?.workdir),
            ]
            for (field, dir) in workdirs {
                guard let dir, !dir.isEmpty else { continue }
                let k = kind(dir)
                if case .refused(let refusal) = k {
                    out.append(Self.refused("\(field) '\(dir)'", refusal, at: origin.location(of: field), length: dir.count))
                } else if k != .directory {
                    out.append(.error(.pathNotFound,
                                      k == .missing ? "\(field) '\(dir)' does not exist in the repository"
                                                    : "\(field) '\(dir)' is not a folder",
                                      at: origin.location(of: field), length: dir.count,
                                      hint: "give a folder relative to the repository root"))
                }
            }
        }
        return out
    }
}
