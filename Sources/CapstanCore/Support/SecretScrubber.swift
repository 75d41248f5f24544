/// Replaces the values of secrets in text that came from a step (its output lines, the metrics
/// file, the names of its outputs) before that text is shown, logged, stored or quoted in an
/// error. The one scrubber: the runner, the training and the validation steps all use it.
///
/// Matching is on the UTF-8 bytes of each secret, exactly (no case folding, no Unicode
/// equivalence): every byte sequence equal to a secret is replaced by `[secret]`, overlapping
/// occurrences of several secrets by one marker. A text that must be cut is scrubbed first and
/// cut afterwards (`scrubbedPrefix`), so that a secret straddling the cut leaves no part of
/// itself behind.
public struct SecretScrubber: Hashable, Sendable {
    /// What a secret is replaced with.
    public static let marker = "[secret]"
    /// Shorter secrets are refused where they are read: a value of one to three characters is
    /// found all over ordinary output, and replacing it everywhere would mangle the output
    /// while it still leaks through lines where it happens to be cut.
    public static let minimumLength = 4

    public static let none = SecretScrubber(secrets: [])

    /// The secret values, distinct and non-empty.
    public let secrets: [String]
    private let patterns: [[UInt8]]

    public init(secrets: [String]) {
        var seen = Set<String>()
        let distinct = secrets.filter { !$0.isEmpty && seen.insert($0).inserted }
        self.secrets = distinct
        patterns = distinct.map { Array($0.utf8) }
    }

    public var isEmpty: Bool { patterns.isEmpty }

    /// How many bytes after a cut must be looked at to find every secret that starts before it:
    /// the longest secret's length minus one.
    public var lookahead: Int { max(0, (patterns.map(\.count).max() ?? 0) - 1) }

    /// `text` with every secret replaced.
    public func scrub(_ text: String) -> String {
        guard !patterns.isEmpty else { return text }
        return scrubbedPrefix(Array(text.utf8), limit: Int.max).text
    }

    /// Whether `text` holds a secret.
    public func reveals(_ text: String) -> Bool {
        guard !patterns.isEmpty else { return false }
        let bytes = Array(text.utf8)
        return !occurrences(in: bytes, startingBefore: bytes.count).isEmpty
    }

    /// At most the first `limit` bytes of `bytes` (cut back to a character boundary), decoded
    /// as UTF-8, with every secret that starts in them replaced, even one that runs past the
    /// cut. `bytes` must be the whole text or reach at least `lookahead` bytes past `limit`;
    /// a secret that begins after the cut is not looked for. `cut` tells whether anything of
    /// `bytes` was left out.
    public func scrubbedPrefix<Bytes: Collection>(_ bytes: Bytes, limit: Int) -> (text: String, cut: Bool)
    where Bytes.Element == UInt8 {
        let all = Array(bytes)
        var keep = min(all.count, max(0, limit))
        if keep < all.count {
            // Never end in the middle of a multi-byte character.
            while keep > 0, all[keep] & 0b1100_0000 == 0b1000_0000 { keep -= 1 }
        }
        let found = patterns.isEmpty ? [] : occurrences(in: all, startingBefore: keep)
        guard !found.isEmpty else {
            return (String(decoding: all[0..<keep], as: UTF8.self), keep < all.count)
        }
        var out = ""
        var position = 0
        for range in found {
            if range.lowerBound > position { out += String(decoding: all[position..<range.lowerBound], as: UTF8.self) }
            out += Self.marker
            position = range.upperBound
        }
        if position < keep { out += String(decoding: all[position..<keep], as: UTF8.self) }
        return (out, keep < all.count)
    }

    /// The byte ranges of secrets that start before `end`, merged where they overlap,
    /// in order.
    func occurrences(in bytes: [UInt8], startingBefore end: Int) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        bytes.withUnsafeBufferPointer { text in
            for pattern in patterns {
                let length = pattern.count
                guard length <= text.count else { continue }
                let first = pattern[0]
                let lastStart = min(end - 1, text.count - length)
                guard lastStart >= 0 else { continue }
                pattern.withUnsafeBufferPointer { p in
                    var i = 0
                    while i <= lastStart {
                        if text[i] == first {
                            var j = 1
                            while j < length && text[i + j] == p[j] { j += 1 }
                            if j == length {
                                ranges.append(i..<(i + length))
                                i += 1
                                continue
                            }
                        }
                        i += 1
                    }
                }
            }
        }
        guard ranges.count > 1 else { return ranges }
        ranges.sort { $0.lowerBound < $1.lowerBound }
        var merged: [Range<Int>] = [ranges[0]]
        for range in ranges.dropFirst() {
            let last = merged[merged.count - 1]
            if range.lowerBound < last.upperBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        return merged
    }
}

/// Text from outside (a step's metric names, file names, output) made safe to quote on one line:
/// control characters become visible escapes.
public enum PrintableText {
    /// `text` with C0 controls, DEL and C1 controls written as `\n`, `\t`, `\r`, `\0` or
    /// `\u{XX}`; tabs stay when `keepingTabs` is set.
    public static func escaped(_ text: String, keepingTabs: Bool = false) -> String {
        func isControl(_ c: Unicode.Scalar) -> Bool {
            (c.value < 0x20 && !(keepingTabs && c == "\t")) || (0x7F...0x9F).contains(c.value)
        }
        guard text.unicodeScalars.contains(where: isControl) else { return text }
        var out = ""
        for c in text.unicodeScalars {
            guard isControl(c) else {
                out.unicodeScalars.append(c)
                continue
            }
            switch c {
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            case "\0": out += "\\0"
            default: out += "\\u{" + String(c.value, radix: 16, uppercase: true) + "}"
            }
        }
        return out
    }
}
