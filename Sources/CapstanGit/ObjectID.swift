import CLibGit2

/// A Git object id (SHA-1), as its 40-character lowercase hex form.
public struct ObjectID: Hashable, Sendable, Comparable, CustomStringConvertible, Codable {
    public let hex: String

    public init?(hex: String) {
        guard hex.utf8.count == 40, hex.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) else { return nil }
        self.hex = hex
    }

    init(_ oid: UnsafePointer<git_oid>) {
        var buffer = [CChar](repeating: 0, count: 41)
        git_oid_tostr(&buffer, 41, oid)
        hex = String(decoding: buffer.prefix(40).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    init(_ oid: git_oid) {
        var copy = oid
        self.init(&copy)
    }

    var oid: git_oid {
        var o = git_oid()
        _ = git_oid_fromstr(&o, hex)
        return o
    }

    /// The first 10 characters, for people.
    public var short: String { String(hex.prefix(10)) }

    public var description: String { hex }

    public static func < (a: ObjectID, b: ObjectID) -> Bool { a.hex < b.hex }
}
