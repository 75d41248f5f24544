import CapstanCore
import Foundation
import Synchronization

/// Remembers decoded files by identity (a Git blob id, or size+mtime for a folder), so a pass over
/// unchanged files parses nothing.
public final class ParseCache: Sendable {
    private let entries = Mutex<[String: ManifestDecoder.FileResult]>([:])
    private let counters = Mutex<(hits: Int, misses: Int)>((0, 0))
    /// The last whole result, by snapshot identity and display prefix.
    private let lastLoad = Mutex<(key: String, result: LoadResult)?>(nil)

    public init() {}

    func snapshot(_ key: String) -> LoadResult? {
        lastLoad.withLock { $0?.key == key ? $0?.result : nil }
    }

    func remember(_ key: String, _ result: LoadResult) {
        lastLoad.withLock { $0 = (key, result) }
    }

    func get(_ key: String) -> ManifestDecoder.FileResult? {
        let hit = entries.withLock { $0[key] }
        counters.withLock { hit == nil ? ($0.misses += 1) : ($0.hits += 1) }
        return hit
    }

    func put(_ key: String, _ value: ManifestDecoder.FileResult) {
        entries.withLock { $0[key] = value }
    }

    /// Drops entries not used by the last load (keys are passed in).
    func retain(only keys: Set<String>) {
        entries.withLock { dict in dict = dict.filter { keys.contains($0.key) } }
    }

    public var stats: (hits: Int, misses: Int) { counters.withLock { $0 } }
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
        let snapshotKey = source.snapshotIdentity.map { "\($0)\u{0}\(displayPrefix)\(decoder.keepFields ? "\u{0}fields" : "")" }
        if let snapshotKey, let cached = cache?.snapshot(snapshotKey) {
            var result = cached
            result.parsedFileCount = 0
            return result
        }
        let result = try await loadUncached()
        if let snapshotKey { cache?.remember(snapshotKey, result) }
        return result
    }

    private func loadUncached() async throws -> LoadResult {
        var diagnostics: [Diagnostic] = []
        var sources: [String: String] = [:]
        var usedKeys = Set<String>()
        var parsed = 0

        // 1. capstan.yaml
        var configFile: ManifestFile?
        for name in Self.configFileNames {
            if let f = try await source.file(at: name) { configFile = f; break }
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
                if seenPaths.insert(f.path).inserted { files.append(f) }
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

        // 4. References between objects
        var (set, referenceProblems) = ReferenceChecker.assemble(manifests)
        diagnostics += referenceProblems
        if set.config == nil { set.config = configManifest }

        // 5. Paths: data roots and existence
        diagnostics += try await checkPaths(set, config: config)

        // Make sure every file with diagnostics has its text for snippets.
        for d in diagnostics where sources[d.location.file] == nil {
            if let f = files.first(where: { display($0.path) == d.location.file }) ?? (configFile.map { display($0.path) == d.location.file } == true ? configFile : nil),
               f.size <= decoder.reader.limits.maxFileBytes, let bytes = try? await source.read(f),
               let text = String(validating: bytes, as: UTF8.self) {
                sources[d.location.file] = text
            }
        }
        return LoadResult(manifests: set, diagnostics: diagnostics.redactingSharedLines().sortedForDisplay(), sources: sources,
                          fileCount: files.count + (configFile == nil ? 0 : 1), parsedFileCount: parsed,
                          snapshots: snapshots, manifestFiles: manifestFiles)
    }

    private func cacheKey(_ file: ManifestFile) -> String {
        "\(file.identity)\u{0}\(display(file.path))\(decoder.keepFields ? "\u{0}fields" : "")"
    }

    private func decode(_ file: ManifestFile, usedKeys: inout Set<String>) async throws -> (ManifestDecoder.FileResult, Bool) {
        let key = cacheKey(file)
        usedKeys.insert(key)
        if let hit = cache?.get(key) { return (hit, false) }
        let result = try await decodeUncached(file)
        cache?.put(key, result)
        return (result, true)
    }

    private func decodeUncached(_ file: ManifestFile) async throws -> ManifestDecoder.FileResult {
        let shown = display(file.path)
        if file.size > decoder.reader.limits.maxFileBytes {
            // Refuse before reading a byte.
            return decoder.decode([UInt8](repeating: 0, count: 0), file: shown, declaredSize: file.size)
        }
        let bytes: [UInt8]
        do {
            bytes = try await source.read(file)
        } catch let error as ManifestSourceError {
            // One unreadable file is one problem among others, not the end of the run.
            return ManifestDecoder.FileResult(manifests: [], diagnostics: [.error(
                .fileUnreadable, "cannot read the file: \(error.message)", at: SourceLocation(file: shown, line: 1, column: 1),
                hint: "check its permissions, or exclude it in capstan.yaml (spec.exclude)")], text: nil)
        }
        return decoder.decode(bytes, file: shown)
    }

    private func decodeAll(_ files: [ManifestFile]) async throws -> [(ManifestFile, ManifestDecoder.FileResult, String, Bool)] {
        var results = [(ManifestFile, ManifestDecoder.FileResult, String, Bool)?](repeating: nil, count: files.count)
        try await withThrowingTaskGroup(of: (Int, ManifestDecoder.FileResult, String, Bool).self) { group in
            var next = 0
            func submit() {
                let index = next
                let file = files[index]
                next += 1
                group.addTask {
                    let key = cacheKey(file)
                    if let hit = cache?.get(key) { return (index, hit, key, false) }
                    let result = try await decodeUncached(file)
                    cache?.put(key, result)
                    return (index, result, key, true)
                }
            }
            while next < files.count && next < concurrency * 4 { submit() }
            while let (index, result, key, didParse) = try await group.next() {
                results[index] = (files[index], result, key, didParse)
                if next < files.count { submit() }
            }
        }
        return results.map { $0! }
    }

    private func checkPaths(_ set: ManifestSet, config: ConfigSpec) async throws -> [Diagnostic] {
        var out: [Diagnostic] = []
        var kinds: [String: PathKind] = [:]
        func kind(_ path: String) async throws -> PathKind {
            if let k = kinds[path] { return k }
            let k = path.isEmpty ? PathKind.directory : try await source.kind(of: path)
            kinds[path] = k
            return k
        }
        for model in set.models {
            let origin = model.origin
            let train = model.spec.train
            for (i, input) in train.inputs.enumerated() {
                let item = origin.itemPath("spec.train.inputs", i)
                let field = origin.fields[item + ".path"] != nil ? item + ".path" : item
                switch input {
                case .external(let path):
                    if !config.dataRoots.contains(where: { HostPath.isUnder(path, root: $0) }) {
                        let roots = config.dataRoots.isEmpty ? "no data roots are configured" : "data roots: " + config.dataRoots.joined(separator: ", ")
                        out.append(.error(.pathOutsideDataRoots, "input '\(path)' is outside the configured data roots (\(roots))",
                                          at: origin.location(of: field), length: path.count,
                                          hint: "add its folder to spec.dataRoots in capstan.yaml, or move the data under a data root"))
                    }
                case .repository(let path):
                    if try await kind(path) == .missing {
                        out.append(.error(.pathNotFound, "input '\(path)' does not exist in the repository",
                                          at: origin.location(of: field), length: path.count,
                                          hint: "paths are relative to the repository root; commit the file or correct the path"))
                    }
                case .uri:
                    break
                }
            }
            // Only workdirs that were written and valid (the others were reported already).
            let workdirs: [(String, String?)] = [
                ("spec.train.workdir", origin.fields["spec.train.workdir"] == nil || train.workdir.isEmpty ? nil : train.workdir),
                ("spec.validate.workdir", model.spec.validate?.workdir),
                ("spec.serve.workdir", origin.fields["spec.serve.workdir"] == nil || model.spec.serve?.workdir.isEmpty != false ? nil : model.spec.serve?.workdir),
            ]
            for (field, dir) in workdirs {
                guard let dir else { continue }
                let k = try await kind(dir)
                if k != .directory {
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
