import ArgumentParser
import CapstanCore
import CapstanManifests
import Foundation

enum DiagnosticsFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json, github
}

struct ValidateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check the manifests of a repository and report every problem.",
        discussion: """
            Loads capstan.yaml and every *.yaml/*.yml below the manifest folders of PATH (the \
            repository root) and prints each problem as FILE:LINE:COL: error|warning: MESSAGE [code].
            Exit status: 0 no errors, 1 errors (or warnings with --strict), 64 usage error.
            """
    )

    @Argument(help: "The repository root to validate.", completion: .directory)
    var path: String = "."

    @Option(name: .long, help: "Output format: text, json (an array of diagnostics) or github (workflow annotations).")
    var format: DiagnosticsFormat = .text

    @Flag(name: .long, help: "Fail on warnings too.")
    var strict = false

    @Flag(name: .long, help: "Never colour the output (also: NO_COLOR).")
    var noColor = false

    func run() async throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw Self.fail(CommandFailure(message: "'\(path)' does not exist; give the repository folder to validate", exitCode: ExitStatus.usage))
        }
        guard isDirectory.boolValue else {
            throw Self.fail(CommandFailure(message: "'\(path)' is a file; give the repository folder that contains it", exitCode: ExitStatus.usage))
        }
        let source = DirectoryManifestSource(root: path)
        let loader = ManifestLoader(source: source, displayPrefix: Self.displayPrefix(for: path))
        let result: LoadResult
        do {
            result = try await loader.load()
        } catch {
            throw Self.fail(CommandFailure(message: "\(error)"))
        }
        if result.fileCount == 0 {
            // Nothing to check is almost always a wrong path: fail rather than pass silently.
            throw Self.fail(CommandFailure(message: "no manifest files found in '\(path)' (looked for capstan.yaml, *.yaml and *.yml); give the repository root"))
        }
        let terminal = Terminal(noColor: noColor)
        let diagnostics = result.diagnostics
        switch format {
        case .text:
            let formatter = DiagnosticFormatter(style: terminal.color ? .color : .plain)
            var out = ""
            for d in diagnostics {
                out += formatter.text(d, sourceLine: { result.sourceLine(file: $0, line: $1) })
            }
            out += summary(result)
            Terminal.out(out)
        case .json:
            Terminal.out(try DiagnosticJSON.encode(diagnostics))
        case .github:
            let formatter = DiagnosticFormatter()
            Terminal.out(diagnostics.map { formatter.github($0) + "\n" }.joined())
            Terminal.err(summary(result))
        }
        let failed = diagnostics.hasErrors || (strict && diagnostics.warningCount > 0)
        if failed { throw ExitCode(ExitStatus.failure) }
    }

    func summary(_ result: LoadResult) -> String {
        let d = result.diagnostics
        let set = result.manifests
        let objects = "\(set.models.count) model\(set.models.count == 1 ? "" : "s"), \(set.deployments.count) deployment\(set.deployments.count == 1 ? "" : "s")"
        let files = "\(result.fileCount) file\(result.fileCount == 1 ? "" : "s")"
        var counts: [String] = []
        if d.errorCount > 0 { counts.append("\(d.errorCount) error\(d.errorCount == 1 ? "" : "s")") }
        if d.warningCount > 0 { counts.append("\(d.warningCount) warning\(d.warningCount == 1 ? "" : "s")") }
        if counts.isEmpty { return "\(path): valid (\(objects) in \(files))\n" }
        let verdict = d.hasErrors || (strict && d.warningCount > 0) ? "invalid" : "valid"
        return "\(path): \(verdict): \(counts.joined(separator: ", ")) (\(objects) in \(files))\n"
    }

    /// Diagnostics name files as the user can open them from the current folder.
    static func displayPrefix(for path: String) -> String {
        var p = path
        while p.hasSuffix("/") && p.count > 1 { p.removeLast() }
        if p == "." || p.isEmpty { return "" }
        if p.hasPrefix("./") { p.removeFirst(2) }
        return p + "/"
    }
}

/// The documented JSON form of diagnostics (docs/diagnostics.md).
enum DiagnosticJSON {
    struct Item: Encodable {
        struct Related: Encodable {
            var file: String
            var line: Int
            var column: Int
            var message: String
        }

        var file: String
        var line: Int
        var column: Int
        var severity: String
        var code: String
        var message: String
        var hint: String?
        var related: [Related]
    }

    static func encode(_ diagnostics: [Diagnostic]) throws -> String {
        let items = diagnostics.map { d in
            Item(file: d.location.file, line: d.location.line, column: d.location.column, severity: d.severity.rawValue,
                 code: d.code.rawValue, message: d.message, hint: d.hint,
                 related: d.related.map { .init(file: $0.location.file, line: $0.location.line, column: $0.location.column, message: $0.message) })
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(items), as: UTF8.self) + "\n"
    }
}
