import CapstanCore
import CapstanSystem
import Crypto
import Foundation

/// The plan cache of one-shot commands, `<state>/cache/plan-cache`, as one file:
///
///     capstan-plan-cache <format>\n
///     <byte count> <SHA-256 of the record, hex>\n
///     <record>
///
/// Written to a temporary file in the same folder (mode 0600) and renamed over the old one, so a
/// reader sees a whole record or none. Read back only when the header names this format and the
/// record has exactly the length and digest the header gives; anything else (a file cut short, a
/// flipped byte, another version's format, not a file at all) reads as no cache. See
/// docs/state.md, "The plan cache".
public struct PlanCacheFile: PlanCacheStore {
    /// Bumped when the envelope changes; the engine versions the record inside it on its own.
    public static let format = 1
    static let magic = "capstan-plan-cache"
    /// Larger files are not read (a plan of 100,000 models is a few MB).
    static let limit = 256 << 20

    public let path: String

    public init(stateDirectory: String) {
        path = (stateDirectory as NSString).appendingPathComponent("cache/plan-cache")
    }

    public func load() async -> Data? {
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG, Int(info.st_size) <= Self.limit,
              let data = FileManager.default.contents(atPath: path) else { return nil }
        return Self.open(data)
    }

    public func save(_ record: Data) async throws {
        let folder = (path as NSString).deletingLastPathComponent
        try PrivateFiles.makeFolder(folder, what: "create the cache folder")
        let temporary = path + ".\(getpid()).tmp"
        do {
            try PrivateFiles.write(Self.seal(record), to: temporary, what: "write the plan cache")
            guard rename(temporary, path) == 0 else { throw SystemError("replace the plan cache", path: path, errno: errno) }
        } catch {
            unlink(temporary)
            throw error
        }
    }

    /// The file's bytes for `record`.
    static func seal(_ record: Data) -> Data {
        let digest = SHA256.hash(data: record).map { String(format: "%02x", $0) }.joined()
        var out = Data("\(magic) \(format)\n\(record.count) \(digest)\n".utf8)
        out.append(record)
        return out
    }

    /// The record inside `data`, when the envelope is this format's and the record checks out.
    static func open(_ data: Data) -> Data? {
        let newline = UInt8(ascii: "\n")
        guard let first = data.firstIndex(of: newline),
              String(decoding: data[data.startIndex..<first], as: UTF8.self) == "\(magic) \(format)",
              let second = data[(first + 1)...].firstIndex(of: newline) else { return nil }
        let fields = String(decoding: data[(first + 1)..<second], as: UTF8.self).split(separator: " ")
        guard fields.count == 2, let count = Int(fields[0]), count >= 0, fields[1].count == 64 else { return nil }
        let record = data[(second + 1)...]
        guard record.count == count else { return nil }
        let digest = SHA256.hash(data: record).map { String(format: "%02x", $0) }.joined()
        guard digest == fields[1] else { return nil }
        return Data(record)
    }
}
