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
            repository root) and prints each problem as FILE:LINE:COL: error|warning: MESSAGE [code]. \
            With --repo it reads them from a commit instead (a branch, tag or commit id with --ref), \
            straight from Git objects: what a branch or pull request head holds, not the work tree.
            Exit status: 0 no errors, 1 errors (or warnings with --strict), 64 usage error.
            """
    )

    @Argument(help: "The repository root to validate (a folder; default: the current one).", completion: .directory)
    var path: String?

    @OptionGroup var repository: RepositoryOptions

    @Option(name: .long, help: "Output format: text, json (an array of diagnostics) or github (workflow annotations).")
    var format: DiagnosticsFormat = .text

    @Flag(name: .long, help: "Fail on warnings too.")
    var strict = false

    @Flag(name: .long, help: "Never colour the output (also: NO_COLOR).")
    var noColor = false

    func run() async throws {
        if let repo = repository.repo {
            guard path == nil else {
                throw Self.fail(CommandFailure(message: "give either a PATH or --repo, not both", exitCode: ExitStatus.usage))
            }
            try await runFromGit(repo)
            return
        }
        if repository.ref != nil {
            throw Self.fail(CommandFailure(message: "--ref needs --repo (the repository to read the ref from)", exitCode: ExitStatus.usage))
        }
        let path = self.path ?? "."
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
        if result.fileCount == 0 && result.diagnostics.isEmpty {
            // Nothing to check is almost always a wrong path: fail rather than pass silently.
            throw Self.fail(CommandFailure(message: "no manifest files found in '\(path)' (looked for capstan.yaml, *.yaml and *.yml); give the repository root"))
        }
        try report(result, subject: path, commit: nil)
    }

    func runFromGit(_ repo: String) async throws {
        let state: GitDesiredState
        do {
            let source = try repository.source(for: repo)
            state = try await GitDesiredStateReader.openAndLoad(source, fetch: !repository.noFetch, ref: repository.ref)
        } catch let failure as CommandFailure {
            throw Self.fail(failure)
        }
        if state.result.fileCount == 0 && state.result.diagnostics.isEmpty {
            throw Self.fail(CommandFailure(message: "\(state.opened.location) @ \(state.revision.ref) (\(state.revision.commit.short)) holds no manifest files (capstan.yaml, *.yaml, *.yml)"))
        }
        let subject = "\(state.opened.location) @ \(state.revision.ref) (commit \(state.revision.commit.short))"
        try report(state.result, subject: subject, commit: state.revision.commit.hex)
    }

    func report(_ result: LoadResult, subject: String, commit: String?) throws {
        let terminal = Terminal(noColor: noColor)
        let diagnostics = result.diagnostics
        switch format {
        case .text:
            let formatter = DiagnosticFormatter(style: terminal.color ? .color : .plain)
            var out = ""
            for d in diagnostics {
                out += formatter.text(d, sourceLine: { result.sourceLine(file: $0, line: $1) })
            }
            out += summary(result, subject: subject)
            Terminal.out(out)
        case .json:
            Terminal.out(try DiagnosticJSON.encode(diagnostics, commit: commit))
        case .github:
            let formatter = DiagnosticFormatter()
            Terminal.out(diagnostics.map { formatter.github($0) + "\n" }.joined())
            Terminal.err(summary(result, subject: subject))
        }
        let failed = diagnostics.hasErrors || (strict && diagnostics.warningCount > 0)
        if failed { throw ExitCode(ExitStatus.failure) }
    }

    func summary(_ result: LoadResult, subject path: String) -> String {
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
        /// The commit the file was read from, with --repo.
        var commit: String?
    }

    static func encode(_ diagnostics: [Diagnostic], commit: String? = nil) throws -> String {
        let items = diagnostics.map { d in
            Item(file: d.location.file, line: d.location.line, column: d.location.column, severity: d.severity.rawValue,
                 code: d.code.rawValue, message: d.message, hint: d.hint,
                 related: d.related.map { .init(file: $0.location.file, line: $0.location.line, column: $0.location.column, message: $0.message) },
                 commit: commit)
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(items), as: UTF8.self) + "\n"
    }
}
