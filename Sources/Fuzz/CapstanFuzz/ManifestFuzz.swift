import CapstanCore
import CapstanManifests

/// Bytes → files → YAML → manifests → validation → diagnostics as printed.
///
/// The input is one file, `m.yaml`, or several: each line `#@@ PATH` starts a file (the seeds are
/// the fixture folders written that way). Invariants: every diagnostic has a location in a file
/// that exists, line and column from 1; the text format shows no control character and names
/// the file first; a GitHub annotation is one line; a redacted line shows `<redacted>`; a second
/// load gives the same result.
public enum ManifestFuzz {
    static let marker = Array("#@@ ".utf8)

    /// The files of an input.
    public static func files(_ bytes: [UInt8]) -> [String: [UInt8]] {
        guard bytes.starts(with: marker) else { return ["m.yaml": bytes] }
        var files: [String: [UInt8]] = [:]
        var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)[...]
        var current: String?
        var content: [UInt8] = []
        func close() {
            if let current { files[current] = content }
            content = []
        }
        while let line = lines.popFirst() {
            if line.starts(with: marker) {
                close()
                let written = String(decoding: line.dropFirst(marker.count), as: UTF8.self)
                current = RepoPath.normalize(written).flatMap { $0.isEmpty ? nil : $0 }
            } else {
                content += line
                if !lines.isEmpty { content.append(UInt8(ascii: "\n")) }
            }
        }
        close()
        return files
    }

    public static func run(_ bytes: [UInt8]) -> [String] {
        let files = files(bytes)
        let source = MemorySource(files: files)
        let (first, second) = runBlocking {
            let loader = ManifestLoader(source: source, concurrency: 1)
            let a = try? await loader.load()
            let b = try? await loader.load()
            return (a, b)
        }
        guard let result = first else { return ["the load threw"] }
        var violations: [String] = []
        if second?.diagnostics != result.diagnostics { violations.append("a second load gave other diagnostics") }
        if second?.manifests.objectCount != result.manifests.objectCount { violations.append("a second load gave other objects") }
        let formatter = DiagnosticFormatter()
        for d in result.diagnostics {
            let at = "\(d.code.rawValue) at \(d.location)"
            if d.location.line < 1 || d.location.column < 1 || d.length < 1 { violations.append("\(at): line, column or length below 1") }
            if files[d.location.file] == nil { violations.append("\(at): names a file that is not in the input") }
            let text = formatter.text(d, sourceLine: { result.sourceLine(file: $0, line: $1) })
            if text.unicodeScalars.contains(where: { $0 != "\n" && SafeText.isUnsafe($0) }) {
                violations.append("\(at): the text format shows a control character")
            }
            if !text.hasPrefix(SafeText.escaped(d.location.file) + ":\(d.location.line):\(d.location.column): ") {
                violations.append("\(at): the text format does not start with the location")
            }
            if d.redactFromColumn != nil, result.sourceLine(file: d.location.file, line: d.location.line) != nil, !text.contains("<redacted>") {
                violations.append("\(at): a redacted line is shown whole")
            }
            let github = formatter.github(d)
            if github.contains("\n") || github.contains("\r") { violations.append("\(at): the GitHub annotation spans lines") }
        }
        for model in result.manifests.models where files[model.origin.file] == nil {
            violations.append("model \(model.metadata.name) comes from \(model.origin.file), not in the input")
        }
        return violations
    }
}

/// Files held in memory, as a repository would offer them.
struct MemorySource: ManifestSource {
    let files: [String: [UInt8]]
    var displayName: String { "fuzz input" }

    func yamlFiles(under folder: String) async throws -> [ManifestFile] {
        files.keys.filter { path in
            RepoPath.isInside(path, folder) && path != folder && (path.hasSuffix(".yaml") || path.hasSuffix(".yml"))
                && !path.split(separator: "/").contains { $0.hasPrefix(".") }
        }.sorted().map { ManifestFile(path: $0, size: files[$0]!.count, identity: $0) }
    }

    func file(at path: String) async throws -> ManifestFile? {
        files[path].map { ManifestFile(path: path, size: $0.count, identity: path) }
    }

    func read(_ file: ManifestFile) async throws -> [UInt8] {
        guard let bytes = files[file.path] else { throw ManifestSourceError(source: displayName, path: file.path, message: "no such file") }
        return bytes
    }

    func kind(of path: String) async throws -> PathKind {
        if path.isEmpty || files.keys.contains(where: { $0.hasPrefix(path + "/") }) { return .directory }
        return files[path] == nil ? .missing : .file
    }
}
