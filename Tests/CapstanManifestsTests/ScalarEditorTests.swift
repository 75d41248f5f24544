import CapstanCore
import Testing
@testable import CapstanManifests

/// `ScalarEditor`: a pin changed at the position the loader recorded, every other byte kept.
struct ScalarEditorTests {
    /// The file with its `champion` pin set to `to`, at the position the decoder records.
    static func edit(_ text: String, expected: String, to replacement: String) throws -> String {
        let bytes = Array(text.utf8)
        let decoded = ManifestDecoder().decode(bytes, file: "model.yaml")
        guard case .model(let model)? = decoded.manifests.first else {
            throw ScalarEditor.Refusal(message: "no Model decoded: \(decoded.diagnostics.map(\.message))")
        }
        let position = try #require(model.origin.fields["spec.aliases.champion"])
        let edited = try ScalarEditor.replace(in: bytes, line: Int(position.line), column: Int(position.column),
                                              expected: expected, with: replacement)
        return String(decoding: edited, as: UTF8.self)
    }

    static let header = "apiVersion: capstan/v1\nkind: Model\nmetadata: {name: churn}\n"

    @Test(arguments: [
        // Block style, a comment after the value.
        ("spec:\n  aliases:\n    champion: 7   # promoted by PR #12\n    candidate: latest\n",
         "7", "spec:\n  aliases:\n    champion: 9   # promoted by PR #12\n    candidate: latest\n"),
        // latest → a number, more digits.
        ("spec:\n  aliases:\n    champion: latest\n", "latest", "spec:\n  aliases:\n    champion: 12\n"),
        // Flow style, the pin in the middle.
        ("spec: {aliases: {stable: 3, champion: 7, candidate: latest}}\n", "7",
         "spec: {aliases: {stable: 3, champion: 9, candidate: latest}}\n"),
        // Flow style, the pin last, no space before the brace.
        ("spec: {aliases: {champion: 7}}\n", "7", "spec: {aliases: {champion: 9}}\n"),
        // Characters of several bytes before the value on its line (columns count characters).
        ("spec: {description: \"Prédit l’attrition — ✓\", aliases: {champion: 7}}\n", "7",
         "spec: {description: \"Prédit l’attrition — ✓\", aliases: {champion: 9}}\n"),
        // A tag before the value is kept.
        ("spec:\n  aliases:\n    champion: !!int 7\n", "7", "spec:\n  aliases:\n    champion: !!int 9\n"),
        // A line break other than LF earlier in the file (NEL inside a comment) counts as libyaml counts it.
        ("# caf\u{85}# é\nspec:\n  aliases:\n    champion: 7\n", "7", "# caf\u{85}# é\nspec:\n  aliases:\n    champion: 9\n"),
        // CRLF line breaks stay CRLF.
        ("spec:\r\n  aliases:\r\n    champion: 7\r\n    candidate: latest\r\n", "7",
         "spec:\r\n  aliases:\r\n    champion: 9\r\n    candidate: latest\r\n"),
    ])
    func onlyThePinChanges(_ spec: String, _ expected: String, _ result: String) throws {
        let replacement = expected == "latest" ? "12" : "9"
        let header = spec.contains("\r\n") ? Self.header.replacingOccurrences(of: "\n", with: "\r\n") : Self.header
        #expect(try Self.edit(header + spec, expected: expected, to: replacement) == header + result)
    }

    @Test func aByteOrderMarkIsKept() throws {
        let text = "\u{FEFF}" + Self.header + "spec:\n  aliases:\n    champion: 7\n"
        #expect(try Self.edit(text, expected: "7", to: "8") == "\u{FEFF}" + Self.header + "spec:\n  aliases:\n    champion: 8\n")
    }

    @Test func aValueThatIsNotWhatWasReadIsRefused() throws {
        let text = Self.header + "spec:\n  aliases:\n    champion: 7\n"
        #expect(throws: ScalarEditor.Refusal.self) { try Self.edit(text, expected: "6", to: "8") }
        let refusal = try? ScalarEditor.replace(in: Array(text.utf8), line: 6, column: 15, expected: "6", with: "8")
        #expect(refusal == nil)
        do {
            _ = try ScalarEditor.replace(in: Array(text.utf8), line: 6, column: 15, expected: "6", with: "8")
        } catch {
            #expect(error.message.contains("reads '7', not '6'"), "\(error)")
        }
    }

    /// The position of an alias is its anchor's: the shared value is never changed through a pin.
    @Test func anchoredAndAliasedPinsAreRefused() throws {
        let shared = Self.header + "spec:\n  retention: {keepVersions: &n 7}\n  aliases:\n    champion: *n\n"
        do {
            _ = try Self.edit(shared, expected: "7", to: "8")
            Issue.record("a value shared through an anchor was edited")
        } catch let refusal as ScalarEditor.Refusal {
            #expect(refusal.message.contains("YAML anchor"), "\(refusal)")
        }
        let anchored = Self.header + "spec:\n  aliases:\n    champion: &pin 7\n"
        #expect(throws: ScalarEditor.Refusal.self) { try Self.edit(anchored, expected: "7", to: "8") }
    }

    @Test func quotedAliasedAndMissingValuesAreRefused() throws {
        let quoted = Array("a:\n  champion: \"7\"\n".utf8)
        #expect(throws: ScalarEditor.Refusal.self) { try ScalarEditor.replace(in: quoted, line: 2, column: 13, expected: "7", with: "8") }
        let aliased = Array("x: &v 7\na:\n  champion: *v\n".utf8)
        do {
            _ = try ScalarEditor.replace(in: aliased, line: 3, column: 13, expected: "7", with: "8")
            Issue.record("an alias was edited")
        } catch {
            #expect(error.message.contains("YAML alias"), "\(error)")
        }
        #expect(throws: ScalarEditor.Refusal.self) { try ScalarEditor.replace(in: quoted, line: 9, column: 1, expected: "7", with: "8") }
        #expect(throws: ScalarEditor.Refusal.self) { try ScalarEditor.replace(in: quoted, line: 2, column: 80, expected: "7", with: "8") }
    }
}
