import CapstanCore
import CapstanManifests
import Foundation
import Testing

/// Hostile inputs are refused with one clear diagnostic, never a crash or a hang. (How fast they
/// are refused is measured by scripts/bench-validate.sh, not here.)
struct HostileInputTests {
    let decoder = ManifestDecoder()

    func codes(_ text: String) -> [String] {
        decoder.decode(Array(text.utf8), file: "x.yaml").diagnostics.map { "\($0.severity.rawValue) \($0.code.rawValue) \($0.location.line):\($0.location.column)" }
    }

    static func billionLaughs(asKey: Bool) -> String {
        var lines = [#"a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]"#]
        for i in 1..<10 {
            lines.append("a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 9).joined(separator: ",") + "]")
        }
        lines.append(asKey ? "bomb: {*a9 : 1}" : "bomb: *a9")
        return lines.joined(separator: "\n") + "\n"
    }

    @Test func billionLaughsInValuesIsRefused() {
        #expect(codes(Self.billionLaughs(asKey: false)) == ["error alias-expansion 1:1"])
    }

    @Test func billionLaughsInKeysIsRefusedBeforeParsing() {
        #expect(codes(Self.billionLaughs(asKey: true)) == ["error alias-expansion 11:8"])
    }

    @Test(arguments: ["? *a\n", "*a : 1\n", "[*a, 1]: 2\n", "{x: *a}: 1\n"])
    func aliasesInKeysAreFound(_ keyLine: String) {
        let text = "base: &a [1, 2]\n" + keyLine
        #expect(codes(text).first?.hasPrefix("error alias-expansion 2:") == true, "\(codes(text))")
    }

    @Test func ordinaryAliasesAndStarsInStringsAreAccepted() {
        let text = """
            apiVersion: capstan/v1
            kind: Config
            metadata: {name: default}
            spec:
              exclude: ["**/params.yaml", 'ci/*']   # stars in quotes and comments: *x: 1
              manifests: &folders [models]
              dataRoots: [/srv/data]
            """
        let result = decoder.decode(Array(text.utf8), file: "capstan.yaml")
        #expect(result.diagnostics.isEmpty, "\(result.diagnostics)")
        #expect(result.manifests.count == 1)
    }

    @Test func deepNestingIsRefused() {
        let text = "a: " + String(repeating: "[", count: 100) + String(repeating: "]", count: 100) + "\n"
        #expect(codes(text) == ["error nesting-too-deep 1:67"])
    }

    @Test func nestingBeyondTheParserLimitIsRefused() {
        // Half a million open brackets: libyaml's own limit stops it, reported as the same problem.
        let text = "a: " + String(repeating: "[", count: 500_000) + "\n"
        #expect(codes(text).map { $0.split(separator: " ")[1] } == ["nesting-too-deep"])
    }

    @Test func moreThanAThousandDocumentsIsRefused() {
        let text = String(repeating: "---\na: 1\n", count: 1001)
        #expect(codes(text) == ["error too-many-documents 2002:1"])
    }

    @Test func aFileOverOneMebibyteIsRefusedWithoutParsing() {
        let text = String(repeating: "# padding line\n", count: 80_000)
        #expect(codes(text) == ["error file-too-large 1:1"])
        // The loader refuses by declared size without reading the bytes at all.
        let declared = decoder.decode([], file: "x.yaml", declaredSize: 5 << 20).diagnostics
        #expect(declared.map(\.code) == [.fileTooLarge])
        #expect(declared.first?.message.contains("5 MiB") == true)
    }

    @Test func nonUTF8AndBinaryFilesAreRefused() {
        let latin1: [UInt8] = Array("apiVersion: capstan/v1\nkind: Model\nmetadata: {name: caf".utf8) + [0xE9] + Array("}\n".utf8)
        let d = decoder.decode(latin1, file: "x.yaml").diagnostics
        #expect(d.map { "\($0.code.rawValue) \($0.location.line):\($0.location.column)" } == ["not-utf8 3:21"])
        let binary: [UInt8] = [0x61, 0x3A, 0x20, 0x00, 0x01, 0x0A]
        #expect(decoder.decode(binary, file: "x.yaml").diagnostics.map(\.code) == [.notUTF8])
    }

    @Test func aByteOrderMarkIsAccepted() {
        let text: [UInt8] = [0xEF, 0xBB, 0xBF] + Array("apiVersion: capstan/v1\nkind: Config\nmetadata: {name: default}\n".utf8)
        #expect(decoder.decode(text, file: "capstan.yaml").diagnostics.isEmpty)
    }

    @Test(arguments: [
        "a: [1, 2\n", "a: \"unterminated\n", "a:\n\t- b\n", "a: b: c\n", "- a\nb: 1\n", "{a: 1, a: 2}\n",
        "a: !!binary 123\n", "%YAML 9.9\n---\na: 1\n", "a: *undefined\n", "&a a: &a\n",
        String(repeating: "- ", count: 2000) + "x\n", "a: |\n  text\n b: 1\n",
    ])
    func malformedYAMLNeverCrashes(_ text: String) {
        let d = decoder.decode(Array(text.utf8), file: "x.yaml").diagnostics
        #expect(!d.isEmpty)
        #expect(d.allSatisfy { $0.location.line >= 1 && $0.location.column >= 1 })
    }
}
