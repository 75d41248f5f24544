#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How much of a step's output is kept.
public struct OutputLimits: Hashable, Sendable {
    /// After this many bytes have gone to the log (and the echo), the rest is read and dropped.
    public var logBytes: Int
    /// A longer line is cut to this many bytes; the rest of it is dropped.
    public var lineBytes: Int
    /// The tail kept for error messages: at most this many lines…
    public var tailLines: Int
    /// …and at most this many bytes.
    public var tailBytes: Int

    public init(logBytes: Int = 50 << 20, lineBytes: Int = 64 << 10, tailLines: Int = 40, tailBytes: Int = 8 << 10) {
        self.logBytes = logBytes
        self.lineBytes = lineBytes
        self.tailLines = tailLines
        self.tailBytes = tailBytes
    }

    public static let standard = OutputLimits()

    static func describe(bytes: Int) -> String {
        bytes >= 1 << 20 && bytes % (1 << 20) == 0 ? "\(bytes >> 20) MiB"
            : bytes >= 1 << 10 && bytes % (1 << 10) == 0 ? "\(bytes >> 10) KiB" : "\(bytes) bytes"
    }
}

/// A step's log file, opened for appending. Owns its descriptor.
final class LogFile: Sendable {
    let path: String
    private let descriptor: Int32

    /// Opens (creating it with mode 0600 if needed: step logs hold data and metrics, for the user
    /// running Capstan only) `path` for appending; throws errno on failure.
    init(path: String) throws(OSError) {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw OSError(errno) }
        self.path = path
        self.descriptor = fd
    }

    deinit { close(descriptor) }

    /// Writes all of `bytes`; throws errno on failure.
    func append(_ bytes: [UInt8]) throws(OSError) {
        var failure: Int32 = 0
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    return
                }
                offset += n
            }
        }
        if failure != 0 { throw OSError(failure) }
    }
}

/// An errno value with its `strerror` text.
public struct OSError: Error, Hashable, Sendable, CustomStringConvertible {
    public var code: Int32
    public init(_ code: Int32) { self.code = code }
    public var description: String { String(cString: strerror(code)) }
}

/// The last lines of output, bounded in lines and bytes.
struct OutputTail {
    private let maxLines: Int
    private let maxBytes: Int
    private var lines: [String] = []
    /// Bytes of `lines` joined with newlines.
    private var bytes = 0

    init(maxLines: Int, maxBytes: Int) {
        self.maxLines = max(1, maxLines)
        self.maxBytes = max(4, maxBytes)
    }

    mutating func append(_ line: String) {
        var line = line
        if line.utf8.count > maxBytes {
            // Keep the end of an overlong line, starting at a character boundary.
            let suffix = line.utf8.suffix(maxBytes).drop { $0 & 0b1100_0000 == 0b1000_0000 }
            line = String(decoding: suffix, as: UTF8.self)
        }
        bytes += (lines.isEmpty ? 0 : 1) + line.utf8.count
        lines.append(line)
        while lines.count > 1, lines.count > maxLines || bytes > maxBytes {
            bytes -= lines.removeFirst().utf8.count + 1
        }
    }

    var text: String { lines.joined(separator: "\n") }
}

/// Turns a child's raw output into lines: each is scrubbed of secrets, then cut if overlong,
/// appended to the log, handed to the echo and kept in the tail, until the output limit is
/// reached; after that lines only go to the tail. A secret that straddles the cut is replaced
/// whole: a line is kept up to the longest secret's length past the cut, so that any secret
/// starting before the cut is seen entire. Memory stays bounded by the line and tail limits
/// whatever the child prints. Owned by the one task that reads the pipe.
struct StepOutput {
    struct Summary: Sendable {
        var tail: String
        var truncated: Bool
        /// Set when the log could not be written; nothing more was written to it after that.
        var logFailure: OSError?
    }

    private let limits: OutputLimits
    private let log: LogFile?
    private let prefix: String
    private let scrubber: SecretScrubber
    private let echo: @Sendable (String) -> Void

    /// The start of a line whose newline has not arrived yet (never more than `lineBytes` plus
    /// the scrubber's lookahead).
    private var pending: [UInt8] = []
    /// The current line was cut; drop bytes until its newline.
    private var discardingRest = false
    /// Bytes waiting to be written to the log at the end of the current chunk.
    private var logBuffer: [UInt8] = []
    private var logged = 0
    private(set) var truncated = false
    private(set) var logFailure: OSError?
    private var tail: OutputTail

    init(limits: OutputLimits, log: LogFile?, prefix: String, secrets: [String], echo: @escaping @Sendable (String) -> Void) {
        self.limits = limits
        self.log = log
        self.prefix = prefix
        self.scrubber = SecretScrubber(secrets: secrets)
        self.echo = echo
        self.tail = OutputTail(maxLines: limits.tailLines, maxBytes: limits.tailBytes)
    }

    /// Takes the next chunk read from the pipe.
    mutating func consume(_ chunk: UnsafeRawBufferPointer) {
        guard let base = chunk.baseAddress, chunk.count > 0 else { return }
        var start = 0
        while start < chunk.count {
            let rest = UnsafeRawBufferPointer(start: base + start, count: chunk.count - start)
            if let newline = memchr(rest.baseAddress!, 0x0A, rest.count) {
                let length = rest.baseAddress!.distance(to: UnsafeRawPointer(newline))
                take(UnsafeRawBufferPointer(start: rest.baseAddress, count: length), endsLine: true)
                start += length + 1
            } else {
                take(rest, endsLine: false)
                break
            }
        }
        flushLog()
    }

    /// Ends the output: a last line without a newline is still a line.
    mutating func finish() -> Summary {
        if !pending.isEmpty && !discardingRest {
            let line = pending
            pending = []
            line.withUnsafeBytes { emit($0, cut: false) }
        }
        flushLog()
        return Summary(tail: tail.text, truncated: truncated, logFailure: logFailure)
    }

    private mutating func take(_ segment: UnsafeRawBufferPointer, endsLine: Bool) {
        defer { if endsLine { discardingRest = false } }
        if discardingRest { return }
        let room = limits.lineBytes + scrubber.lookahead - pending.count
        if segment.count > room {
            pending.append(contentsOf: segment.prefix(max(0, room)))
            let line = pending
            pending = []
            line.withUnsafeBytes { emit($0, cut: true) }
            discardingRest = !endsLine
        } else if endsLine {
            if pending.isEmpty {
                emit(segment, cut: false)
            } else {
                pending.append(contentsOf: segment)
                let line = pending
                pending = []
                line.withUnsafeBytes { emit($0, cut: false) }
            }
        } else {
            pending.append(contentsOf: segment)
        }
    }

    private mutating func emit(_ raw: UnsafeRawBufferPointer, cut: Bool) {
        var bytes = raw
        if !cut, bytes.last == 0x0D { bytes = UnsafeRawBufferPointer(rebasing: bytes.dropLast()) }
        // Scrubbed before it is cut (`bytes` reaches past the cut by the lookahead).
        let scrubbed = scrubber.scrubbedPrefix(bytes, limit: limits.lineBytes)
        var text = scrubbed.text
        if cut || scrubbed.cut { text += " [line cut: longer than \(OutputLimits.describe(bytes: limits.lineBytes))]" }
        tail.append(text)
        guard !truncated else { return }
        let size = text.utf8.count + 1
        if logged + size > limits.logBytes {
            truncated = true
            let note = "[output truncated after \(OutputLimits.describe(bytes: limits.logBytes)); the rest was discarded]"
            appendLog(note)
            echo(prefix + note)
            return
        }
        logged += size
        appendLog(text)
        echo(prefix + text)
    }

    private mutating func appendLog(_ line: String) {
        guard log != nil, logFailure == nil else { return }
        logBuffer.append(contentsOf: line.utf8)
        logBuffer.append(0x0A)
    }

    private mutating func flushLog() {
        guard let log, !logBuffer.isEmpty else { return }
        defer { logBuffer.removeAll(keepingCapacity: logBuffer.capacity <= 1 << 20) }
        guard logFailure == nil else { return }
        do {
            try log.append(logBuffer)
        } catch {
            logFailure = error
        }
    }
}
