import ArgumentParser
import CapstanCore
import CapstanGit
import CapstanManifests
import Foundation

struct DiffCommand: AsyncParsableCommand {
    enum Format: String, ExpressibleByArgument, CaseIterable {
        case text, json, markdown
    }

    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Show what a change does to the desired state between two commits.",
        discussion: """
            Reads the manifests at BASE and at HEAD (branches, tags, commit ids or expressions such as \
            main~1) and prints the objects added, removed and changed field by field, and the models \
            whose training inputs changed. Needs no registry and no network besides Git.
            Exit status: 0 (with --exit-code: 0 no changes, 2 changes), 1 error, 64 usage error.
            """
    )

    @Argument(help: "The commit to compare from.")
    var base: String

    @Argument(help: "The commit to compare to.")
    var head: String

    @OptionGroup var repository: RepositoryOptions

    @Option(name: .long, help: "text, json or markdown (a pull-request comment).")
    var format: Format = .text

    @Flag(name: .customLong("exit-code"), help: "Exit with 2 when the desired state changed.")
    var exitCode = false

    func validate() throws {
        if repository.ref != nil { throw ValidationError("diff takes BASE and HEAD; --ref does not apply") }
    }

    func run() async throws {
        let repo = repository.repo ?? "."
        let base: GitDesiredState, head: GitDesiredState, changedPaths: [PathChange]
        do {
            let source = try repository.source(for: repo)
            (base, head, changedPaths) = try await GitDesiredStateReader.withRecovery(source, fetch: !repository.noFetch) { opened in
                let cache = ParseCache()
                let base = try await GitDesiredStateReader.load(opened, ref: self.base, keepFields: true, cache: cache)
                let head = try await GitDesiredStateReader.load(opened, ref: self.head, keepFields: true, cache: cache)
                let paths: [PathChange]
                do {
                    paths = try await opened.repository.changedPaths(from: base.revision.commit, to: head.revision.commit)
                } catch let e as GitError where e.kind == .corrupt {
                    var failure = CommandFailure(message: "\(opened.location): the repository is damaged: \(e.message); check it with git fsck")
                    failure.corrupt = true
                    throw failure
                }
                let damaged = GitDesiredStateReader.isDamaged(base) || GitDesiredStateReader.isDamaged(head)
                return ((base, head, paths), damaged)
            }
        } catch let failure as CommandFailure {
            throw Self.fail(failure)
        } catch {
            throw Self.fail(CommandFailure(message: "\(error)"))
        }
        let paths = changedPaths.flatMap { [$0.oldPath, $0.newPath] }
        let changes = DesiredStateDiff.compare(
            base: base.result.manifests.isEmpty ? [] : base.result.snapshots, head: head.result.snapshots,
            headModels: head.result.manifests.models, changedPaths: Array(Set(paths)),
            manifestFiles: base.result.manifestFiles.union(head.result.manifestFiles))
        let headErrors = head.result.diagnostics.errorCount
        let report = DiffReport(repository: head.opened.location.description, base: base.revision, head: head.revision,
                                changes: changes, headErrors: headErrors)
        switch format {
        case .text: Terminal.out(report.text())
        case .json: Terminal.out(try report.json())
        case .markdown: Terminal.out(report.markdown())
        }
        if headErrors > 0 {
            Terminal.err("capstan: error: \(headErrors) error\(headErrors == 1 ? "" : "s") in the manifests at \(self.head); run capstan validate --repo \(repo) --ref \(self.head)\n")
            throw ExitCode(ExitStatus.failure)
        }
        if exitCode && !changes.isEmpty { throw ExitCode(2) }
    }
}

extension ManifestSet {
    var isEmpty: Bool { objectCount == 0 }
}

/// The three renderings of a desired-state diff. JSON is documented in docs/diff.md.
struct DiffReport {
    var repository: String
    var base: ResolvedRevision
    var head: ResolvedRevision
    var changes: [ObjectChange]
    var headErrors: Int

    static func value(_ v: String?) -> String { v ?? "(unset)" }

    func text() -> String {
        var out = ""
        for c in changes {
            let subject = "\(c.file): \(c.kind.rawValue) \(c.name)"
            switch c.change {
            case .added: out += "\(subject): added\n"
            case .removed: out += "\(subject): removed\n"
            case .modified:
                for f in c.fields { out += "\(subject): \(f.path) \(Self.value(f.before)) → \(Self.value(f.after))\n" }
                for input in c.changedInputs { out += "\(subject): training input \(input) changed\n" }
            }
        }
        out += "\(repository) \(base.commit.short)..\(head.commit.short): \(summary)\n"
        return out
    }

    var summary: String {
        if changes.isEmpty { return "no changes to the desired state" }
        let added = changes.filter { $0.change == .added }.count
        let removed = changes.filter { $0.change == .removed }.count
        let modified = changes.filter { $0.change == .modified }.count
        let retrain = changes.filter { !$0.changedInputs.isEmpty }.count
        var parts: [String] = []
        if added > 0 { parts.append("\(added) added") }
        if modified > 0 { parts.append("\(modified) changed") }
        if removed > 0 { parts.append("\(removed) removed") }
        if retrain > 0 { parts.append("\(retrain) with changed training inputs") }
        return parts.joined(separator: ", ")
    }

    func json() throws -> String {
        struct Revision: Encodable { var ref: String; var commit: String }
        struct Document: Encodable {
            var format_version = 1
            var repository: String
            var base: Revision
            var head: Revision
            var changes: [ObjectChange]
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let doc = Document(repository: repository, base: .init(ref: base.ref, commit: base.commit.hex),
                           head: .init(ref: head.ref, commit: head.commit.hex), changes: changes)
        return String(decoding: try encoder.encode(doc), as: UTF8.self) + "\n"
    }

    func markdown() -> String {
        func cell(_ s: String?) -> String {
            guard let s else { return "*(unset)*" }
            return "`" + s.replacingOccurrences(of: "|", with: "\\|").replacingOccurrences(of: "`", with: "'") + "`"
        }
        var out = "### Capstan: desired-state changes\n\n"
        out += "`\(base.ref)` (\(base.commit.short)) → `\(head.ref)` (\(head.commit.short)): \(summary).\n\n"
        for c in changes {
            let symbol = c.change == .added ? "➕" : c.change == .removed ? "➖" : "✏️"
            out += "#### \(symbol) \(c.kind.rawValue) `\(c.name)` — \(c.change.rawValue) (`\(c.file)`)\n\n"
            if !c.fields.isEmpty {
                out += "| field | before | after |\n|---|---|---|\n"
                for f in c.fields { out += "| `\(f.path)` | \(cell(f.before)) | \(cell(f.after)) |\n" }
                out += "\n"
            }
            if !c.changedInputs.isEmpty {
                out += "Training inputs changed: " + c.changedInputs.map { "`\($0)`" }.joined(separator: ", ") + " (a retrain is due).\n\n"
            }
        }
        if headErrors > 0 { out += "⚠️ The manifests at `\(head.ref)` have \(headErrors) error(s); run `capstan validate`.\n" }
        return out
    }
}
