import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// read(2), out of reach of `MetricsFile.read`'s name.
private func systemRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int {
    read(fd, buffer, count)
}

/// A metrics file Capstan cannot use. Its message names the file, says why and what to write
/// instead; whatever it quotes from the file has been scrubbed of secrets and has its control
/// characters escaped.
public struct MetricsFileError: Error, CustomStringConvertible {
    enum Code: String, Sendable {
        case missing, unreadable, notARegularFile, tooLarge, notAnObject, invalidName, duplicateName, secretInName, notANumber
    }

    var code: Code
    var message: String
    var path: String
    /// The errno of a failed system call.
    var cause: Int32?

    public var description: String { message }
}

/// The metrics file a step writes (`$CAPSTAN_METRICS_FILE`): one JSON object, UTF-8, at most
/// 1 MiB, whose keys are metric names (`Names.metricNameProblem`: 1 to 128 letters, digits and
/// `_ . - /`, each at most once) and whose values are finite numbers.
///
/// It is read without following a symlink and only when it is a regular file (a FIFO is never
/// opened for a blocking read, a device never read from), at most 1 MiB + 1 bytes.
public enum MetricsFile {
    static let limit = 1 << 20
    static let example = #"{"accuracy": 0.93}"#

    public static func read(_ path: String, required: Bool, scrubber: SecretScrubber) throws -> [String: Double] {
        guard let data = try load(path, required: required) else { return [:] }
        return try parse(data, path: path, scrubber: scrubber)
    }

    // MARK: - Reading

    /// The file's bytes; nil when it does not exist and is not required.
    static func load(_ path: String, required: Bool) throws -> [UInt8]? {
        func failure(_ code: MetricsFileError.Code, _ message: String, errno cause: Int32? = nil) -> MetricsFileError {
            MetricsFileError(code: code, message: message, path: path, cause: cause)
        }
        var info = stat()
        if lstat(path, &info) != 0 {
            let code = errno
            if code == ENOENT {
                if required {
                    throw failure(.missing, "the step wrote no metrics file: '\(path)' (CAPSTAN_METRICS_FILE) does not exist; write a JSON object of numbers there, e.g. \(example)", errno: code)
                }
                return nil
            }
            throw failure(.unreadable, "cannot read the metrics file '\(path)': \(String(cString: strerror(code))); check the run folder's permissions", errno: code)
        }
        if let kind = nonRegularKind(info.st_mode) {
            throw failure(.notARegularFile, "the metrics file '\(path)' is \(kind), not a regular file; write a JSON object of numbers into the file itself (CAPSTAN_METRICS_FILE), e.g. \(example)")
        }
        // O_NOFOLLOW and O_NONBLOCK: if the file was swapped for a symlink or a FIFO since lstat,
        // the open fails or returns at once, and fstat below refuses it.
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            if code == ELOOP {
                throw failure(.notARegularFile, "the metrics file '\(path)' is a symlink, not a regular file; write a JSON object of numbers into the file itself (CAPSTAN_METRICS_FILE), e.g. \(example)", errno: code)
            }
            throw failure(.unreadable, "cannot open the metrics file '\(path)': \(String(cString: strerror(code))); check the run folder's permissions", errno: code)
        }
        defer { close(fd) }
        guard fstat(fd, &info) == 0 else {
            let code = errno
            throw failure(.unreadable, "cannot read the metrics file '\(path)': \(String(cString: strerror(code)))", errno: code)
        }
        if let kind = nonRegularKind(info.st_mode) {
            throw failure(.notARegularFile, "the metrics file '\(path)' is \(kind), not a regular file; write a JSON object of numbers into the file itself (CAPSTAN_METRICS_FILE), e.g. \(example)")
        }
        var bytes = [UInt8](repeating: 0, count: limit + 1)
        var count = 0
        while count < bytes.count {
            let n = bytes.withUnsafeMutableBytes { systemRead(fd, $0.baseAddress! + count, $0.count - count) }
            if n < 0 {
                let code = errno
                if code == EINTR { continue }
                throw failure(.unreadable, "cannot read the metrics file '\(path)': \(String(cString: strerror(code)))", errno: code)
            }
            if n == 0 { break }
            count += n
        }
        guard count <= limit else {
            throw failure(.tooLarge, "the metrics file '\(path)' is larger than the 1 MiB allowed (\(info.st_size) bytes); write only the metrics, e.g. \(example)")
        }
        return Array(bytes[0..<count])
    }

    /// What a file that is not a regular one is, for messages; nil for a regular file.
    static func nonRegularKind(_ mode: mode_t) -> String? {
        switch mode & S_IFMT {
        case S_IFREG: return nil
        case S_IFLNK: return "a symlink"
        case S_IFIFO: return "a FIFO (named pipe)"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFDIR: return "a folder"
        case S_IFSOCK: return "a socket"
        default: return "a special file"
        }
    }

    // MARK: - Parsing

    static func parse(_ data: [UInt8], path: String, scrubber: SecretScrubber) throws -> [String: Double] {
        func failure(_ code: MetricsFileError.Code, _ message: String) -> MetricsFileError {
            MetricsFileError(code: code, message: message, path: path)
        }
        /// Text from the file as it may be quoted: scrubbed, then cut, then escaped.
        func quote(_ text: some Collection<UInt8>, limit: Int = 80) -> String {
            let (shown, cut) = scrubber.scrubbedPrefix(text, limit: limit)
            return PrintableText.escaped(shown) + (cut ? "…" : "")
        }
        let object: [String: ParamValue]
        var names: [String] = []
        if case .map(let decoded)? = try? JSONDecoder().decode(ParamValue.self, from: Data(data)),
           let keys = ObjectKeys.scan(data) {
            object = decoded
            var seen = Set<[UInt8]>()
            for key in keys {
                let name = String(decoding: key, as: UTF8.self)
                names.append(name)
                if scrubber.reveals(name) {
                    throw failure(.secretInName, "the metrics file '\(path)' has a metric named '\(quote(key))', which holds the value of a secret; name metrics after what they measure, never after a secret")
                }
                if let problem = Names.metricNameProblem(name) {
                    throw failure(.invalidName, "the metrics file '\(path)' has a metric named '\(quote(key, limit: 200))', which is not a metric name: \(problem); use 1 to \(Names.metricNameLimit) letters, digits and _ . - /")
                }
                if !seen.insert(key).inserted {
                    throw failure(.duplicateName, "the metrics file '\(path)' has metric '\(name)' more than once; write each metric once")
                }
            }
        } else {
            let start = data.starts(with: [0xEF, 0xBB, 0xBF]) ? Array(data.dropFirst(3)) : data
            let what = data.isEmpty ? "is empty" : "starts with '\(quote(start))'"
            throw failure(.notAnObject, "the metrics file '\(path)' is not a JSON object of numbers (it \(what)); write e.g. \(example)")
        }
        var metrics: [String: Double] = [:]
        for key in names {
            guard let value = object[key] else { continue }
            switch value {
            case .int(let i): metrics[key] = Double(i)
            case .double(let d) where d.isFinite: metrics[key] = d
            case .string(let s):
                let number = Double(s.trimmingCharacters(in: .whitespaces))
                let hint = number?.isFinite == true ? "write it without quotes" : "metrics must be numbers"
                throw failure(.notANumber, "metric '\(key)' in the metrics file '\(path)' is the string \"\(quote(Array(s.utf8)))\", not a number; \(hint)")
            case .double:
                throw failure(.notANumber, "metric '\(key)' in the metrics file '\(path)' is not a finite number; metrics must be finite numbers")
            case .bool(let b):
                throw failure(.notANumber, "metric '\(key)' in the metrics file '\(path)' is \(b), not a number; write 1 or 0")
            case .null:
                throw failure(.notANumber, "metric '\(key)' in the metrics file '\(path)' is null, not a number; leave out a metric that has no value")
            case .list:
                throw failure(.notANumber, "metric '\(key)' in the metrics file '\(path)' is a list, not a number; write one number per metric")
            case .map:
                throw failure(.notANumber, "metric '\(key)' in the metrics file '\(path)' is an object, not a number; write one number per metric (e.g. \"loss/train\": 0.3)")
            }
        }
        return metrics
    }

    static func describe(_ metrics: [String: Double]) -> String {
        metrics.sorted { $0.key < $1.key }.map { "\($0.key)=\(Gates.format($0.value))" }.joined(separator: " ")
    }
}

/// The keys of a JSON object's top level, in order and with repeats, as UTF-8 bytes (escapes
/// decoded). JSONDecoder keeps only one value of a repeated key and says nothing, so metrics
/// files are scanned for their keys too. Nil when `data` is not a UTF-8 JSON object (the caller
/// has already parsed it; this only has to find the keys of a valid document).
enum ObjectKeys {
    static func scan(_ data: [UInt8]) -> [[UInt8]]? {
        var i = data.starts(with: [0xEF, 0xBB, 0xBF]) ? 3 : 0
        func skipSpace() {
            while i < data.count, [0x20, 0x09, 0x0A, 0x0D].contains(data[i]) { i += 1 }
        }
        /// Reads the string at `i` (an opening quote), returning its decoded bytes.
        func string() -> [UInt8]? {
            guard i < data.count, data[i] == UInt8(ascii: "\"") else { return nil }
            i += 1
            var out: [UInt8] = []
            while i < data.count {
                let c = data[i]
                i += 1
                if c == UInt8(ascii: "\"") { return out }
                guard c == UInt8(ascii: "\\") else {
                    out.append(c)
                    continue
                }
                guard i < data.count else { return nil }
                let e = data[i]
                i += 1
                switch e {
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    guard var unit = hex4() else { return nil }
                    var scalar = Unicode.Scalar(unit)
                    if (0xD800...0xDBFF).contains(unit), i + 1 < data.count, data[i] == UInt8(ascii: "\\"), data[i + 1] == UInt8(ascii: "u") {
                        let save = i
                        i += 2
                        if let low = hex4(), (0xDC00...0xDFFF).contains(low) {
                            unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                            scalar = Unicode.Scalar(unit)
                        } else {
                            i = save
                        }
                    }
                    out.append(contentsOf: Array(String(scalar ?? "\u{FFFD}").utf8))
                default: out.append(e)  // \" \\ \/
                }
            }
            return nil
        }
        func hex4() -> UInt32? {
            guard i + 4 <= data.count, let value = UInt32(String(decoding: data[i..<(i + 4)], as: UTF8.self), radix: 16) else { return nil }
            i += 4
            return value
        }
        /// Skips one value (already known to be valid JSON).
        func skipValue() -> Bool {
            skipSpace()
            guard i < data.count else { return false }
            switch data[i] {
            case UInt8(ascii: "\""):
                return string() != nil
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                var depth = 0
                while i < data.count {
                    switch data[i] {
                    case UInt8(ascii: "\""):
                        guard string() != nil else { return false }
                        continue
                    case UInt8(ascii: "{"), UInt8(ascii: "["): depth += 1
                    case UInt8(ascii: "}"), UInt8(ascii: "]"):
                        depth -= 1
                        if depth == 0 {
                            i += 1
                            return true
                        }
                    default: break
                    }
                    i += 1
                }
                return false
            default:
                while i < data.count, ![UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]"), 0x20, 0x09, 0x0A, 0x0D].contains(data[i]) {
                    i += 1
                }
                return true
            }
        }

        skipSpace()
        guard i < data.count, data[i] == UInt8(ascii: "{") else { return nil }
        i += 1
        var keys: [[UInt8]] = []
        skipSpace()
        if i < data.count, data[i] == UInt8(ascii: "}") { return keys }
        while true {
            skipSpace()
            guard let key = string() else { return nil }
            keys.append(key)
            skipSpace()
            guard i < data.count, data[i] == UInt8(ascii: ":") else { return nil }
            i += 1
            guard skipValue() else { return nil }
            skipSpace()
            guard i < data.count else { return nil }
            if data[i] == UInt8(ascii: ",") {
                i += 1
                continue
            }
            return data[i] == UInt8(ascii: "}") ? keys : nil
        }
    }
}
