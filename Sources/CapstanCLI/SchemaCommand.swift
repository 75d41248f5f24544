import ArgumentParser
import CapstanManifests

struct SchemaCommand: AsyncParsableCommand {
    enum Format: String, ExpressibleByArgument, CaseIterable {
        case json, markdown
    }

    static let configuration = CommandConfiguration(
        commandName: "schema",
        abstract: "Print the JSON Schema (draft 2020-12) of all manifest kinds.",
        discussion: """
            For editors: save it and point yaml-language-server at it, for example with a \
            `# yaml-language-server: $schema=capstan.schema.json` comment. --format markdown prints \
            the field reference used in docs/manifests.md.
            """
    )

    @Option(name: .long, help: "json (the JSON Schema) or markdown (the field reference).")
    var format: Format = .json

    func run() async throws {
        switch format {
        case .json: Terminal.out(JSONSchemaGenerator.json())
        case .markdown: Terminal.out(JSONSchemaGenerator.markdownReference())
        }
    }
}
