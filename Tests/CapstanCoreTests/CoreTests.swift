import Foundation
import CapstanCore
import Testing

struct DurationTests {
    @Test(arguments: [
        ("90s", Int64(90_000)), ("30m", 1_800_000), ("2h", 7_200_000), ("1d", 86_400_000), ("250ms", 250),
        ("1h30m", 5_400_000), ("0s", 0),
    ])
    func parsesValidDurations(_ text: String, _ ms: Int64) throws {
        let d = try ManifestDuration.parse(text).get()
        #expect(d.milliseconds == ms)
        #expect(d.text == text)
    }

    @Test(arguments: [
        ("", ManifestDuration.ParseError.empty), ("30", .missingUnit), ("5x", .unknownUnit("x")), ("1.5h", .unknownUnit(".")),
        ("-1m", .missingNumber), ("m", .missingNumber), ("90 s", .unknownUnit(" s")), ("99999999999999999999d", .tooLarge),
    ])
    func rejectsMalformedDurations(_ text: String, _ error: ManifestDuration.ParseError) {
        #expect(throws: error) { try ManifestDuration.parse(text).get() }
    }

    @Test func formatsCanonically() {
        #expect(ManifestDuration.format(5_400_000) == "1h30m")
        #expect(ManifestDuration.format(250) == "250ms")
        #expect(ManifestDuration.format(0) == "0s")
    }
}

struct NamesTests {
    @Test(arguments: ["churn", "churn-prod", "a", "m2", String(repeating: "a", count: 63)])
    func acceptsDNSLabels(_ name: String) {
        #expect(Names.dnsLabelProblem(name) == nil)
    }

    @Test(arguments: [
        ("", "it is empty"), ("Churn", "it contains uppercase letters"), ("churn_model", "it contains '_'"),
        ("-churn", "it must start and end with a letter or digit"), (String(repeating: "a", count: 64), "it is 64 characters long; the limit is 63"),
    ])
    func rejectsOtherNames(_ name: String, _ problem: String) {
        #expect(Names.dnsLabelProblem(name) == problem)
    }

    @Test func suggestsALabel() {
        #expect(Names.dnsLabelSuggestion("Churn_Model") == "churn-model")
        #expect(Names.dnsLabelSuggestion("churn") == nil)
    }

    @Test func envNames() {
        #expect(Names.isEnvName("API_TOKEN"))
        #expect(Names.isEnvName("_x1"))
        #expect(!Names.isEnvName("1X"))
        #expect(!Names.isEnvName("not-a-name"))
        #expect(!Names.isEnvName(""))
    }

    @Test func aliasNames() {
        #expect(Names.aliasNameProblem("champion") == nil)
        #expect(Names.aliasNameProblem("latest") != nil)
        #expect(Names.aliasNameProblem("v7") != nil)
        #expect(Names.aliasNameProblem("Champion") != nil)
    }
}

struct PathTests {
    @Test(arguments: [("a/./b/../c/", "a/c"), (".", ""), ("", ""), ("models//churn", "models/churn")])
    func normalizes(_ input: String, _ output: String) {
        #expect(RepoPath.normalize(input) == output)
    }

    @Test(arguments: ["..", "../x", "a/../../b"])
    func refusesEscapes(_ input: String) {
        #expect(RepoPath.normalize(input) == nil)
    }

    @Test func hostPaths() {
        #expect(HostPath.isUnder("/srv/data/x.csv", root: "/srv/data"))
        #expect(HostPath.isUnder("/srv/data", root: "/srv/data/"))
        #expect(!HostPath.isUnder("/srv/database/x", root: "/srv/data"))
        #expect(!HostPath.isUnder("/srv/data/../etc/passwd", root: "/srv/data"))
    }
}

struct GlobTests {
    @Test(arguments: [
        ("**/params.yaml", "models/churn/params.yaml", true), ("params.yaml", "a/b/params.yaml", true),
        ("ci/**", "ci/workflows/x.yaml", true), ("ci/*", "ci/workflows/x.yaml", false), ("*.yml", "x.yml", true),
        ("models/*/params.y?ml", "models/churn/params.yaml", true), ("models/*.yaml", "other/m.yaml", false),
    ])
    func matches(_ pattern: String, _ path: String, _ expected: Bool) {
        #expect(Glob(pattern).matches(path) == expected)
    }
}

struct SuggestTests {
    @Test func closestWithinReach() {
        #expect(Suggest.closest(to: "comand", among: ["command", "workdir"]) == "command")
        #expect(Suggest.closest(to: "wrokdir", among: ["command", "workdir"]) == "workdir")
        #expect(Suggest.closest(to: "xyz", among: ["command", "workdir"]) == nil)
        #expect(Suggest.closest(to: "Model", among: ["model"]) == "model")
    }
}

struct FormatterTests {
    let d = Diagnostic.error(.unknownField, "unknown field 'comand' in spec.train (did you mean 'command'?)",
                             at: SourceLocation(file: "models/churn.yaml", line: 7, column: 5), length: 6,
                             hint: "allowed fields: command, workdir")

    @Test func textHasLocationCaretAndHint() {
        let text = DiagnosticFormatter().text(d) { _, _ in "    comand: [python3, train.py]" }
        #expect(text == """
            models/churn.yaml:7:5: error: unknown field 'comand' in spec.train (did you mean 'command'?) [unknown-field]
                    comand: [python3, train.py]
                    ^~~~~~
                hint: allowed fields: command, workdir

            """)
    }

    @Test func redactedSourceNeverShowsTheValue() {
        var secret = Diagnostic.warning(.credentialInEnv, "looks like a credential", at: SourceLocation(file: "m.yaml", line: 3, column: 18))
        secret.redactSource = true
        let text = DiagnosticFormatter().text(secret) { _, _ in "    env: {TOKEN: ghp_0123456789abcdef}" }
        #expect(!text.contains("ghp_"))
        #expect(text.contains("<redacted>"))
    }

    @Test func controlCharactersNeverReachTheTerminal() {
        let text = DiagnosticFormatter().text(d) { _, _ in "a: \u{0}\u{1B}[31mred" }
        #expect(!text.unicodeScalars.contains { $0.value == 0 || $0.value == 0x1B })
        #expect(text.contains("a: \u{FFFD}\u{FFFD}[31mred"))
    }

    @Test func bidirectionalControlsInASourceLineAreNeutralized() {
        let text = DiagnosticFormatter().text(d) { _, _ in "name: \u{202E}evil\u{2066}x" }
        #expect(text.contains("name: \u{FFFD}evil\u{FFFD}x"))
    }

    /// A path or message quoting repository content cannot forge a line, a colour or an annotation.
    @Test func pathsAndMessagesAreEscapedInTextAndGitHub() {
        let forged = Diagnostic.error(.unknownKind, "unknown kind 'x\n::error::forged\u{1B}[2J'",
                                      at: SourceLocation(file: "models/a\nb\u{1B}.yaml", line: 1, column: 1),
                                      hint: "see\rthis", related: [RelatedLocation(SourceLocation(file: "c\td.yaml", line: 2, column: 3), "here\n")])
        let text = DiagnosticFormatter().text(forged) { _, _ in nil }
        #expect(text == #"""
            models/a\nb\u{1B}.yaml:1:1: error: unknown kind 'x\n::error::forged\u{1B}[2J' [unknown-kind]
                hint: see\rthis
                note: c\td.yaml:2:3: here\n

            """#)
        let line = DiagnosticFormatter().github(forged)
        #expect(!line.contains("\n") && !line.contains("\r") && !line.contains("\u{1B}"))
        #expect(line == #"::error file=models/a\nb\u{1B}.yaml,line=1,col=1,title=capstan unknown-kind::unknown kind 'x\n::error::forged\u{1B}[2J' [unknown-kind]%0Ahint: see\rthis%0Anote: c\td.yaml:2:3: here\n"#)
    }

    @Test func escapingShowsBytesThatAreNotUTF8() {
        #expect(SafeText.escaped(bytes: Array("a".utf8) + [0xFF, 0xC3, 0x28] + Array("é\n".utf8)) == #"a\xFF\xC3(é\n"#)
        #expect(SafeText.escaped("tab\there\u{202E}") == #"tab\there\u{202E}"#)
        #expect(SafeText.escaped("plain/path.yaml") == "plain/path.yaml")
    }

    @Test func githubAnnotationEscapes() {
        let line = DiagnosticFormatter().github(d)
        #expect(line.hasPrefix("::error file=models/churn.yaml,line=7,col=5,title=capstan unknown-field::unknown field"))
        #expect(line.contains("%0Ahint: allowed fields"))
        #expect(!line.contains("\n"))
    }
}

struct DiagnosticCodeDocsTests {
    /// Tools match on codes: each one has its row in docs/diagnostics.md.
    @Test func everyCodeIsDocumented() throws {
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/diagnostics.md")
        let text = try String(contentsOf: docs, encoding: .utf8)
        for code in DiagnosticCode.allCases {
            #expect(text.contains("| `\(code.rawValue)` | "), "docs/diagnostics.md has no row for \(code.rawValue)")
        }
    }
}
