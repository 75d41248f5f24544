import CapstanCore
import CapstanManifests
import Foundation
import Testing

/// The bad-input corpus: every folder under Fixtures/invalid is a small repository and an
/// `expected.txt` listing exactly the diagnostics it must produce, one per line:
/// `SEVERITY CODE FILE:LINE:COL`. Lines starting with `#` are comments.
/// Every folder under Fixtures/valid must load with no diagnostics at all.
struct FixtureCorpusTests {
    static let fixtures = Bundle.module.resourceURL!.appendingPathComponent("Fixtures")

    static func cases(_ kind: String) -> [String] {
        let dir = fixtures.appendingPathComponent(kind)
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
    }

    static func load(_ dir: URL) async throws -> LoadResult {
        try await ManifestLoader(source: DirectoryManifestSource(root: dir.path)).load()
    }

    static func render(_ d: Diagnostic) -> String {
        "\(d.severity.rawValue) \(d.code.rawValue) \(d.location.file):\(d.location.line):\(d.location.column)"
    }

    @Test func corpusIsLargeEnough() {
        #expect(Self.cases("invalid").count >= 60)
        #expect(Self.cases("valid").count >= 3)
    }

    @Test(arguments: cases("invalid"))
    func invalidCaseProducesExactlyItsDiagnostics(_ name: String) async throws {
        let dir = Self.fixtures.appendingPathComponent("invalid").appendingPathComponent(name)
        let expectedText = try String(contentsOf: dir.appendingPathComponent("expected.txt"), encoding: .utf8)
        let expected = expectedText.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") }.sorted()
        let result = try await Self.load(dir)
        let actual = result.diagnostics.map(Self.render).sorted()
        #expect(actual == expected, "\(name): got\n\(actual.joined(separator: "\n"))")
        #expect(!expected.isEmpty, "\(name): an invalid case must expect at least one diagnostic")
        // Every diagnostic names a file that exists and a line within it, with a message and a hint or clear text.
        for d in result.diagnostics {
            #expect(d.location.line >= 1 && d.location.column >= 1)
            #expect(!d.message.isEmpty)
            // (lstat: a dangling symlink is reported at the link, which exists.)
            var st = stat()
            #expect(lstat(dir.appendingPathComponent(d.location.file).path, &st) == 0,
                    "\(name): diagnostic names missing file \(d.location.file)")
        }
    }

    @Test(arguments: cases("valid"))
    func validCaseHasNoDiagnostics(_ name: String) async throws {
        let dir = Self.fixtures.appendingPathComponent("valid").appendingPathComponent(name)
        let result = try await Self.load(dir)
        #expect(result.diagnostics.map(Self.render) == [])
        #expect(result.manifests.objectCount > 0)
    }
}
