import ArgumentParser
import CapstanCore
import CapstanEngine
import CapstanGit
import CapstanManifests
import Foundation

/// `capstan promote MODEL --alias NAME (--version N | --candidate)`: promotion by pull request.
/// In a clone of the model repository, rewrites that one pin of the Model's manifest (the value's
/// bytes only), commits it on `capstan/promote/<model>/<alias>-v<N>` without touching the work
/// tree, pushes the branch to the remote, and prints the pull request's body: the candidate
/// against the holder, its gates, lineage and serving record, and where to open the request.
struct PromoteCommand: AsyncParsableCommand {
    enum Format: String, ExpressibleByArgument, CaseIterable { case text, json }

    static let configuration = CommandConfiguration(
        commandName: "promote",
        abstract: "Propose moving an alias to a version: a branch with the pin changed, pushed, and the pull request's case.",
        discussion: """
            Run it in a clone of the model repository, on the branch the pull request targets, at \
            the remote's head. The registry is the one of --state-dir (the embedded one there, or the \
            MLflow server the last pass used). Merging the pull request is the approval: the next \
            pass moves the alias. docs/promotion.md.
            """)

    @Argument(help: "The Model (its metadata.name).")
    var model: String

    @Option(name: .long, help: ArgumentHelp("The alias whose pin changes (it must be declared in spec.aliases).", valueName: "name"))
    var alias: String

    @Option(name: .long, help: ArgumentHelp("The version to promote.", valueName: "N"))
    var version: Int?

    @Flag(name: .long, help: "Promote the newest validated version newer than the alias's holder (not archived, not quarantined).")
    var candidate = false

    @Option(name: .long, help: ArgumentHelp("The clone (a work tree) to propose from.", valueName: "path"))
    var repo: String = "."

    @Option(name: .long, help: ArgumentHelp("The remote to push to.", valueName: "name"))
    var remote: String = "origin"

    @Flag(name: .customLong("dry-run"), help: "Print the change and the pull request's body; commit and push nothing.")
    var dryRun = false

    @Option(name: .long, help: "text (the pull request's body, Markdown) or json.")
    var format: Format = .text

    @Option(name: .customLong("timeout"), help: ArgumentHelp("Give up on the fetch or the push after this long.", valueName: "duration"))
    var timeout: String = "60s"

    @OptionGroup var git: GitCredentialOptions
    @OptionGroup var state: StateDirectoryOption

    func validate() throws {
        if (version == nil) == !candidate {
            throw ValidationError("give --version N or --candidate (one of them)")
        }
        if let version, version < 1 { throw ValidationError("--version must be 1 or more") }
        if let problem = Names.aliasNameProblem(alias) { throw ValidationError("--alias '\(alias)': \(problem)") }
    }

    func run() async throws {
        do {
            try await promote()
        } catch let failure as CommandFailure {
            throw Self.fail(failure)
        }
    }

    /// The branch of a proposal.
    static func branch(model: String, alias: String, version: Int) -> String { "capstan/promote/\(model)/\(alias)-v\(version)" }

    func promote() async throws {
        let seconds = Double(try ManifestDuration.option(timeout, "--timeout").milliseconds) / 1000
        // The clone: on a branch, at the remote's head.
        let repository: GitRepository
        let head: (branch: String?, commit: ObjectID)
        let url: String, pushURL: String
        do {
            repository = try await GitRepository.open(at: repo)
            head = try await repository.head()
            guard let found = try await repository.remoteURLs(remote) else {
                throw CommandFailure(message: "\(repo) has no remote '\(remote)'; run capstan promote in a clone of the model repository (or name its remote with --remote)")
            }
            (url, pushURL) = found
        } catch let failure as CommandFailure {
            throw failure
        } catch {
            throw CommandFailure(message: "\(repo): \(error)")
        }
        guard let branchRef = head.branch, branchRef.hasPrefix("refs/heads/") else {
            throw CommandFailure(message: "\(repo) is not on a branch (HEAD is detached at \(head.commit.short)); check out the branch the pull request should target")
        }
        let base = String(branchRef.dropFirst("refs/heads/".count))
        let shownURL = RepositoryLocation.redact(url)
        do {
            for warning in try await repository.fetch(url: url, refspecs: ["+\(branchRef):refs/remotes/\(remote)/\(base)"],
                                                      credentials: git.credentials, timeout: seconds) {
                Terminal.err("capstan: warning: \(warning)\n")
            }
        } catch {
            throw CommandFailure(message: "fetching \(base) from \(shownURL): \(error)")
        }
        guard let remoteHead = try await repository.referenceTarget("refs/remotes/\(remote)/\(base)") else {
            throw CommandFailure(message: "\(shownURL) has no branch \(base); push it first")
        }
        guard remoteHead == head.commit else {
            throw CommandFailure(message: "\(repo) is at \(head.commit.short), but \(remote)/\(base) is at \(remoteHead.short); pull (or push) first, so that the proposal is made on what the remote holds")
        }

        // The manifests at that commit.
        let info = try await repository.commitInfo(head.commit)
        let revision = ResolvedRevision(ref: base, commit: head.commit, tree: info.tree, summary: info.summary)
        let load: LoadResult
        do {
            let source = try await GitManifestSource(repository: repository, revision: revision, repositoryName: shownURL)
            load = try await ManifestLoader(source: source).load()
        } catch {
            throw CommandFailure(message: "\(base) (\(head.commit.short)): \(error)")
        }
        let errors = load.diagnostics.filter { $0.severity == .error }
        if !errors.isEmpty {
            throw CommandFailure(message: "\(base) (\(head.commit.short)) has \(errors.count) error\(errors.count == 1 ? "" : "s") in its manifests (capstan validate --repo \(repo) --ref \(base) lists them); fix them before proposing a promotion")
        }

        // The case, from the registry and Capstan's state.
        guard state.databaseExists else {
            throw CommandFailure(message: "no state in \(state.path): give --state-dir, the state folder of the Capstan that applies this repository")
        }
        let store = try state.open()
        let registry = try Wiring.registry(for: try await store.registryInUse() ?? .embedded, store: store).unfenced
        let choice: Promotion.Choice = version.map { .version($0) } ?? .candidate
        let model = self.model, alias = self.alias
        var report: PromotionReport
        do {
            report = try await Promotion(registry: registry, store: store).prepare(
                model: model, alias: alias, choice: choice, manifests: load.manifests,
                branch: { Self.branch(model: model, alias: alias, version: $0) }, base: base)
        } catch let refusal as Promotion.Refusal {
            throw CommandFailure(message: refusal.message)
        } catch {
            throw Wiring.failure(error)
        }

        // The edit: the pin's bytes, nothing else.
        guard let manifest = load.manifests.model(named: model), let position = manifest.origin.fields["spec.aliases.\(alias)"],
              let (blob, _) = try await repository.entry(at: manifest.origin.file, in: info.tree) else {
            throw CommandFailure(message: "the manifest of \(model) is not in \(base) (\(head.commit.short))")
        }
        let before = try await repository.blob(blob)
        let after: [UInt8]
        do {
            after = try ScalarEditor.replace(in: before, line: Int(position.line), column: Int(position.column),
                                             expected: report.pinnedBefore, with: String(report.candidate.version))
        } catch {
            throw CommandFailure(message: "\(manifest.origin.file): \(error); change the pin by hand")
        }
        let diff = Self.diff(file: manifest.origin.file, line: Int(position.line), before: before, after: after)
        report.pullRequestURL = ForgeLink.pullRequest(remote: pushURL, base: base, branch: report.branch)

        if !dryRun {
            do {
                let commit = try await repository.commitFileChange(path: manifest.origin.file, bytes: after, parent: head.commit,
                                                                   branch: "refs/heads/\(report.branch)", message: report.commitMessage)
                report.commit = commit.hex
            } catch {
                throw CommandFailure(message: "committing the change on \(report.branch) in \(repo): \(error)")
            }
            do {
                // The branch is Capstan's: proposing again replaces it.
                for warning in try await repository.push(url: pushURL, refspecs: ["+refs/heads/\(report.branch):refs/heads/\(report.branch)"],
                                                         credentials: git.credentials, timeout: seconds) {
                    Terminal.err("capstan: warning: \(warning)\n")
                }
            } catch {
                throw CommandFailure(message: "\(error) (the branch \(report.branch) is committed in \(repo); run capstan promote again to push it)")
            }
        }
        switch format {
        case .json:
            struct Document: Encodable {
                var format_version = 1
                var pushed: Bool
                var diff: String
                var title: String
                var body: String
                var report: PromotionReport
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            let document = Document(pushed: !dryRun, diff: diff, title: report.title, body: report.markdown, report: report)
            Terminal.out(String(decoding: try encoder.encode(document), as: UTF8.self) + "\n")
        case .text:
            if dryRun { Terminal.out(diff + "\n") }
            Terminal.out(report.markdown)
            let next: String
            if dryRun {
                next = "Dry run: nothing was committed or pushed."
            } else if let link = report.pullRequestURL {
                next = "Pushed \(report.branch) to \(remote). Open the pull request: \(link)"
            } else {
                next = "Pushed \(report.branch) to \(remote) (\(RepositoryLocation.redact(pushURL))); open a pull request from it into \(base)."
            }
            Terminal.err("capstan: \(next)\n")
        }
    }

    /// The change as a unified diff of its one line.
    static func diff(file: String, line: Int, before: [UInt8], after: [UInt8]) -> String {
        func text(_ bytes: [UInt8]) -> String {
            let lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
            let raw = line - 1 < lines.count ? Array(lines[line - 1]) : []
            return String(decoding: raw.last == UInt8(ascii: "\r") ? raw.dropLast() : raw[...], as: UTF8.self)
        }
        return "--- a/\(file)\n+++ b/\(file)\n@@ -\(line) +\(line) @@\n-\(text(before))\n+\(text(after))"
    }
}
