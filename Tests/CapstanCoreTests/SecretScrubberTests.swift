import CapstanCore
import Testing

struct SecretScrubberTests {
    let scrubber = SecretScrubber(secrets: ["hunter22", "", "hunter22", "tok-ÉTÉ"])

    @Test func everyOccurrenceIsReplacedAndEmptyOrRepeatedSecretsIgnored() {
        #expect(scrubber.secrets == ["hunter22", "tok-ÉTÉ"])
        #expect(scrubber.scrub("pw=hunter22 again hunter22hunter22.") == "pw=[secret] again [secret][secret].")
        #expect(scrubber.scrub("tok-ÉTÉ!") == "[secret]!")
        #expect(scrubber.scrub("nothing here") == "nothing here")
        #expect(SecretScrubber.none.scrub("hunter22") == "hunter22")
        #expect(scrubber.reveals("xhunter22x"))
        #expect(!scrubber.reveals("hunter2"))
    }

    /// Bytes, not characters: a combining mark after the secret does not hide it (Swift's
    /// `String.contains` compares grapheme clusters and would miss it).
    @Test func aCombiningMarkAfterTheSecretDoesNotHideIt() {
        #expect(scrubber.scrub("hunter22\u{301} and more") == "[secret]\u{301} and more")
        #expect(scrubber.reveals("hunter22\u{301}"))
    }

    @Test func overlappingSecretsBecomeOneMarker() {
        let s = SecretScrubber(secrets: ["abcdef", "defghi", "cdefgh"])
        #expect(s.scrub("xxabcdefghiyy") == "xx[secret]yy")
        #expect(s.scrub("abcdefabcdef") == "[secret][secret]")
    }

    /// Scrub before cut: whatever part of a secret lies before the cut, it is replaced whole,
    /// and the cut never splits a character.
    @Test(arguments: 0...8)
    func aPrefixCutThroughASecretKeepsNoPartOfIt(_ start: Int) {
        let text = Array((String(repeating: "x", count: start) + "hunter22 end").utf8)
        let (shown, cut) = scrubber.scrubbedPrefix(text, limit: 8)
        #expect(cut)
        #expect(!shown.contains("hun") && !shown.contains("22"), "\(shown)")
        #expect(shown == (start < 8 ? String(repeating: "x", count: start) + "[secret]" : "xxxxxxxx"))
    }

    @Test func theCutFallsOnACharacterBoundary() {
        let (shown, cut) = SecretScrubber.none.scrubbedPrefix(Array("abé".utf8), limit: 3)
        #expect(shown == "ab")
        #expect(cut)
        let whole = SecretScrubber.none.scrubbedPrefix(Array("abé".utf8), limit: 4)
        #expect(whole == ("abé", false))
        #expect(scrubber.lookahead == "tok-ÉTÉ".utf8.count - 1)
    }

    @Test func controlCharactersAreEscaped() {
        #expect(PrintableText.escaped("a\0b\nc\td\u{1B}[31m\u{7F}") == "a\\0b\\nc\\td\\u{1B}[31m\\u{7F}")
        #expect(PrintableText.escaped("a\tb", keepingTabs: true) == "a\tb")
        #expect(PrintableText.escaped("plain é") == "plain é")
    }
}

struct MetricNameTests {
    @Test(arguments: ["accuracy", "p95_latency_ms", "loss/train", "auc-roc.v2", "A", String(repeating: "m", count: 128)])
    func validNames(_ name: String) {
        #expect(Names.metricNameProblem(name) == nil)
    }

    @Test(arguments: [
        ("", "it is empty"), ("a\0b", "it contains '\\0' (a control character)"),
        ("a\nb", "it contains '\\n' (a control character)"), ("p95 ms", "it contains ' '"), ("auc:roc", "it contains ':'"),
        ("précision", "it contains 'é'"), (String(repeating: "m", count: 129), "it is 129 characters long; the limit is 128"),
    ])
    func invalidNames(_ name: String, _ problem: String) {
        #expect(Names.metricNameProblem(name) == problem)
    }
}
