import ArgumentParser
import CapstanCore
import CapstanEngine
import CapstanGit
import CapstanServer
import CapstanStore
import Foundation

/// `capstan card MODEL [VERSION]`: the model card of a version, for a reviewer or an auditor:
/// the Model's `spec.card`, lineage, metrics and gates with their evidence, and its history
/// (alias moves with who, when and the commit that carried them; endpoint changes; drift).
struct CardCommand: AsyncParsableCommand {
    enum Format: String, ExpressibleByArgument, CaseIterable { case markdown, html, json }

    static let configuration = CommandConfiguration(
        commandName: "card",
        abstract: "Write the model card of a version: what the model is for, how the version was made and judged, what happened to it.",
        discussion: """
            The Model's description and spec.card come from the repository at --ref; the version's \
            records from the registry of --state-dir and the audit log; commit authors and titles from \
            Git. Without VERSION: the version the Model's first alias holds, else the newest validated \
            one. docs/promotion.md#model-cards.
            """)

    @Argument(help: "The Model (its metadata.name).")
    var model: String

    @Argument(help: "The version (default: the one the Model's first alias holds).")
    var version: Int?

    @OptionGroup var repository: RepositoryOptions

    @Option(name: .long, help: "markdown, html (a standalone page) or json.")
    var format: Format = .markdown

    @Option(name: .long, help: ArgumentHelp("Write the card to this file instead of stdout.", valueName: "file"))
    var out: String?

    func run() async throws {
        do {
            try await write()
        } catch let failure as CommandFailure {
            throw Self.fail(failure)
        }
    }

    func write() async throws {
        if let version, version < 1 { throw CommandFailure(message: "VERSION must be 1 or more", exitCode: ExitStatus.usage) }
        let source = try repository.source(for: repository.repo ?? ".")
        let desired = try await GitDesiredStateReader.openAndLoad(source, fetch: !repository.noFetch, ref: repository.ref)
        let errors = desired.result.diagnostics.filter { $0.severity == .error }
        if !errors.isEmpty {
            throw CommandFailure(message: "\(desired.opened.location) @ \(desired.revision.ref) has \(errors.count) error\(errors.count == 1 ? "" : "s") in its manifests (capstan validate lists them)")
        }
        let stateDirectory = repository.stateDirectory
        guard FileManager.default.fileExists(atPath: (stateDirectory as NSString).appendingPathComponent(StateDatabase.fileName)) else {
            throw CommandFailure(message: "no state in \(stateDirectory): give --state-dir, the state folder of the Capstan that applies this repository")
        }
        let store = try Wiring.store(stateDirectory)
        let registry = try Wiring.registry(for: try await store.registryInUse() ?? .embedded, store: store).unfenced
        let git = desired.opened.repository
        let cards = ModelCards(registry: registry, store: store, commit: { id in
            guard let oid = ObjectID(hex: id), let info = try? await git.commitInfo(oid) else { return nil }
            return ModelCard.Commit(id: id, author: info.author, time: Int64(info.time.timeIntervalSince1970 * 1000), summary: info.summary)
        })
        let card: ModelCard
        do {
            card = try await cards.card(model: model, version: version, manifests: desired.result.manifests,
                                        now: Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)))
        } catch let refusal as Promotion.Refusal {
            throw CommandFailure(message: refusal.message)
        } catch {
            throw Wiring.failure(error)
        }
        let text: String
        switch format {
        case .markdown: text = card.markdown
        case .html: text = ModelCardPage.render(card)
        case .json:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            struct Document: Encodable { var format_version = 1; var card: ModelCard }
            text = String(decoding: try encoder.encode(Document(card: card)), as: UTF8.self) + "\n"
        }
        if let out {
            do {
                try Data(text.utf8).write(to: URL(fileURLWithPath: out), options: .atomic)
            } catch {
                throw CommandFailure(message: "--out \(out): \(error)")
            }
            Terminal.err("capstan: wrote the card of \(model) v\(card.version.version) to \(out)\n")
        } else {
            Terminal.out(text)
        }
    }
}
