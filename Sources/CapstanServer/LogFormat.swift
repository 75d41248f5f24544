import Foundation
import Logging
import Synchronization

/// How the controller writes its logs on stderr: `text` for people, `json` (one object per line)
/// for collectors. Metadata keys used by Capstan: `model`, `version`, `deployment`, `commit`,
/// `step`, `trigger`, `pass`.
public enum LogFormat: String, Sendable, CaseIterable {
    case text, json
}

/// A swift-log handler writing one line per message to stderr (or any sink), as text
///
///     2026-11-27T20:15:00.123Z info  pass finished commit=4f07bd3 outcome=converged
///
/// or as JSON
///
///     {"ts":"2026-11-27T20:15:00.123Z","level":"info","msg":"pass finished","commit":"4f07bd3","outcome":"converged","logger":"capstan"}
public struct CapstanLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    public var metadataProvider: Logger.MetadataProvider?

    private let label: String
    private let format: LogFormat
    private let sink: @Sendable (String) -> Void

    public init(label: String, format: LogFormat, sink: @escaping @Sendable (String) -> Void = CapstanLogHandler.standardError) {
        self.label = label
        self.format = format
        self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        let time = Self.timestamp(Date())
        switch format {
        case .text:
            var line = time + " " + event.level.rawValue.padding(toLength: 7, withPad: " ", startingAt: 0) + " " + "\(event.message)"
            for key in merged.keys.sorted() {
                let value = "\(merged[key]!)"
                line += " \(key)=" + (value.contains(" ") || value.isEmpty ? "\"\(value)\"" : value)
            }
            sink(line + "\n")
        case .json:
            var object: [String: Any] = ["ts": time, "level": event.level.rawValue, "msg": "\(event.message)", "logger": label]
            for (key, value) in merged where object[key] == nil { object[key] = Self.json(value) }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
            sink(String(decoding: data, as: UTF8.self) + "\n")
        }
    }

    static func json(_ value: Logger.MetadataValue) -> Any {
        switch value {
        case .string(let s): return s
        case .stringConvertible(let c): return "\(c)"
        case .array(let a): return a.map(json)
        case .dictionary(let d): return d.mapValues(json)
        }
    }

    /// RFC 3339 UTC with milliseconds.
    static func timestamp(_ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&t, &parts)
        let ms = Int((date.timeIntervalSince1970 - Double(t)) * 1000)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(parts.tm_year) + 1900, Int(parts.tm_mon) + 1, Int(parts.tm_mday),
                      Int(parts.tm_hour), Int(parts.tm_min), Int(parts.tm_sec), min(ms, 999))
    }

    private static let writeLock = Mutex(())

    /// Writes whole lines to stderr, one writer at a time.
    public static let standardError: @Sendable (String) -> Void = { line in
        writeLock.withLock { _ in
            var bytes = Array(line.utf8)
            var offset = 0
            while offset < bytes.count {
                let n = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + offset, $0.count - offset) }
                if n <= 0 { break }
                offset += n
            }
        }
    }
}
