import Testing
@testable import CapstanRunner
@testable import CapstanTestSupport

/// Line assembly without a process: chunk boundaries, cut lines, limits, the tail.
@Suite struct StepOutputTests {
    /// Feeds `chunks` through a `StepOutput` and returns the echoed lines, the log and the summary.
    func feed(_ chunks: [String], limits: OutputLimits, redact: [String] = []) throws -> ([String], String, StepOutput.Summary) {
        let dir = try TempDir()
        let path = dir.path + "/log"
        let seen = Callbacks()
        var output = StepOutput(limits: limits, log: try LogFile(path: path), prefix: "> ", secrets: redact, echo: seen.line)
        for chunk in chunks {
            Array(chunk.utf8).withUnsafeBytes { output.consume($0) }
        }
        let summary = output.finish()
        let log = String(decoding: try #require(ProcessGroups.readFile(path)), as: UTF8.self)
        return (seen.lines, log, summary)
    }

    @Test func linesAreReassembledAcrossChunks() throws {
        let (lines, log, summary) = try feed(["ab", "c\nd", "e\r\n\nf"], limits: .standard)
        #expect(lines == ["> abc", "> de", "> ", "> f"])
        #expect(log == "abc\nde\n\nf\n")
        #expect(summary.tail == "abc\nde\n\nf")
        #expect(!summary.truncated)
    }

    @Test func longLinesAreCutAndTheirRestDropped() throws {
        let limits = OutputLimits(lineBytes: 8)
        let (lines, _, _) = try feed(["0123456", "789abcdef", "ghij\nshort\n", "0123456789\n"], limits: limits)
        #expect(lines == [
            "> 01234567 [line cut: longer than 8 bytes]",
            "> short",
            "> 01234567 [line cut: longer than 8 bytes]",
        ])
    }

    @Test func outputStopsAtTheLimitButTheTailGoesOn() throws {
        let limits = OutputLimits(logBytes: 10)
        let (lines, log, summary) = try feed(["1234\n", "5678\n", "9\n", "last\n"], limits: limits)
        let note = "[output truncated after 10 bytes; the rest was discarded]"
        #expect(lines == ["> 1234", "> 5678", "> " + note])
        #expect(log == "1234\n5678\n" + note + "\n")
        #expect(summary.truncated)
        #expect(summary.tail == "1234\n5678\n9\nlast")
    }

    @Test func tailIsBoundedInLinesAndBytes() throws {
        let byLines = try feed((1...100).map { "line \($0)\n" }, limits: OutputLimits(tailLines: 3)).2
        #expect(byLines.tail == "line 98\nline 99\nline 100")
        let byBytes = try feed(["aaaa\n", "bbbb\n", "cccc\n"], limits: OutputLimits(tailBytes: 9)).2
        #expect(byBytes.tail == "bbbb\ncccc")
        let oneLongLine = try feed([String(repeating: "é", count: 10) + "\n"], limits: OutputLimits(tailBytes: 7)).2
        #expect(oneLongLine.tail == "ééé")
    }

    @Test func secretsAreReplaced() throws {
        let (lines, log, summary) = try feed(["user=me pass=s3cret!\n", "s3cret!s3cret!\n"], limits: .standard, redact: ["s3cret!", ""])
        #expect(lines == ["> user=me pass=[secret]", "> [secret][secret]"])
        #expect(!log.contains("s3cret"))
        #expect(!summary.tail.contains("s3cret"))
    }

    /// A secret that straddles the line cut leaves no part of itself: the line is scrubbed
    /// before it is cut. Every position of the secret across the cut, in one chunk and byte by
    /// byte, with a newline right after it or the line going on.
    @Test(arguments: 0...9)
    func aSecretAcrossTheCutIsReplacedWhole(_ before: Int) throws {
        let secret = "SECRETVALUE"
        let limits = OutputLimits(lineBytes: 16)
        let start = 16 - before - 1  // the secret starts `before + 1` bytes before the cut
        let line = String(repeating: "x", count: start) + secret + "tail"
        for rest in ["\n", "-the-line-goes-on-and-on\n", ""] {
            for chunks in [[line + rest], (line + rest).map { String($0) }] {
                let (lines, log, summary) = try feed(chunks, limits: limits, redact: [secret])
                let shown = lines.joined(separator: "\n")
                for length in 3...secret.count {
                    // No piece of the secret of 3 or more bytes is left at the cut.
                    let piece = String(secret.prefix(length))
                    #expect(!shown.contains(piece), "\(before) \(rest.debugDescription): \(shown)")
                    #expect(!log.contains(piece), "\(log)")
                    #expect(!summary.tail.contains(piece), "\(summary.tail)")
                }
                #expect(lines == ["> " + String(repeating: "x", count: start) + "[secret] [line cut: longer than 16 bytes]"])
            }
        }
    }

    /// A secret that only begins after the cut is not part of what is kept, and a line within
    /// the lookahead is still cut where the limit says.
    @Test func theCutStaysAtTheLimit() throws {
        let limits = OutputLimits(lineBytes: 8)
        let (lines, _, _) = try feed(["0123456789\n", "01234567SECRET\n", "abc\n"], limits: limits, redact: ["SECRET"])
        #expect(lines == [
            "> 01234567 [line cut: longer than 8 bytes]",
            "> 01234567 [line cut: longer than 8 bytes]",
            "> abc",
        ])
    }

    /// Several secrets, overlapping each other and repeated, across the cut and in the tail.
    @Test func overlappingSecretsAreReplacedOnce() throws {
        let (lines, _, summary) = try feed(["aaSECRETbbb SECRET\n", "ETbbbSECR\n"], limits: .standard, redact: ["SECRETbbb", "aaSECRET"])
        #expect(lines == ["> [secret] SECRET", "> ETbbbSECR"])
        #expect(summary.tail == "[secret] SECRET\nETbbbSECR")
    }
}
