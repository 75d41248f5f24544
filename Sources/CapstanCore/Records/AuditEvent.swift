/// One change, as the audit log keeps it: who (actor, host) did what (action) to which object,
/// at which commit, with the object's state before and after, and why. Append-only.
public struct AuditEvent: Hashable, Sendable {
    /// The row id, assigned when recorded; increases with every event.
    public var id: Int64?
    /// When it happened, in milliseconds since the Unix epoch.
    public var at: Int64
    public var actor: String
    public var host: String
    public var commit: String?
    public var object: ObjectRef
    public var action: AuditAction
    /// The object's state before and after (JSON values; a plain string is `.string`).
    public var before: ParamValue?
    public var after: ParamValue?
    public var reason: String

    public init(at: Int64, actor: String, host: String, commit: String? = nil, object: ObjectRef, action: AuditAction,
                before: ParamValue? = nil, after: ParamValue? = nil, reason: String = "", id: Int64? = nil) {
        self.id = id
        self.at = at
        self.actor = actor
        self.host = host
        self.commit = commit
        self.object = object
        self.action = action
        self.before = before
        self.after = after
        self.reason = reason
    }

    /// The version the event concerns, when its object is a version.
    public var version: Int? { object.version }
}

extension AuditEvent: Codable {
    enum CodingKeys: String, CodingKey {
        case id, at, actor, host, commit, object, action, before, after, reason
    }

    /// `at` is written as an ISO 8601 UTC time to the second (`2026-12-06T15:04:05Z`), the form
    /// of `capstan history --format json` (docs/state.md); it is read back from that form (with or
    /// without a fraction) or from milliseconds.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decodeIfPresent(Int64.self, forKey: .id)
        if let ms = try? c.decode(Int64.self, forKey: .at) {
            at = ms
        } else {
            let text = try c.decode(String.self, forKey: .at)
            guard let ms = Timestamp.milliseconds(iso8601: text) else {
                throw DecodingError.dataCorruptedError(forKey: .at, in: c, debugDescription: "'\(text)' is not an ISO 8601 UTC time")
            }
            at = ms
        }
        actor = try c.decode(String.self, forKey: .actor)
        host = try c.decodeIfPresent(String.self, forKey: .host) ?? ""
        commit = try c.decodeIfPresent(String.self, forKey: .commit)
        object = try c.decode(ObjectRef.self, forKey: .object)
        action = try c.decode(AuditAction.self, forKey: .action)
        before = try c.decodeIfPresent(ParamValue.self, forKey: .before)
        after = try c.decodeIfPresent(ParamValue.self, forKey: .after)
        reason = try c.decodeIfPresent(String.self, forKey: .reason) ?? ""
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encodeIfPresent(id, forKey: .id)
        try c.encode(Timestamp.iso8601(milliseconds: at, fractional: false), forKey: .at)
        try c.encode(actor, forKey: .actor)
        try c.encode(host, forKey: .host)
        try c.encodeIfPresent(commit, forKey: .commit)
        try c.encode(object, forKey: .object)
        try c.encode(action, forKey: .action)
        try c.encodeIfPresent(before, forKey: .before)
        try c.encodeIfPresent(after, forKey: .after)
        try c.encode(reason, forKey: .reason)
    }
}

/// Which audit events to read, newest first.
public struct AuditQuery: Hashable, Sendable {
    public enum Filter: Hashable, Sendable {
        case all
        /// This object and what belongs to it (`model/churn` and `model/churn/v3`).
        case object(ObjectRef)
    }

    public var filter: Filter
    /// Only events at or after this time (ms since the epoch).
    public var since: Int64?
    /// Only events with a larger id.
    public var afterID: Int64?
    public var limit: Int?

    public init(_ filter: Filter = .all, since: Int64? = nil, afterID: Int64? = nil, limit: Int? = nil) {
        self.filter = filter
        self.since = since
        self.afterID = afterID
        self.limit = limit
    }
}

/// Times as Capstan writes them: milliseconds since the Unix epoch, and ISO 8601 in UTC. Pure
/// arithmetic (the civil calendar), so the core needs no date library.
public enum Timestamp {
    /// `2026-12-06T15:04:05Z`, or with `fractional`, `2026-12-06T15:04:05.250Z` when the
    /// milliseconds are not zero.
    public static func iso8601(milliseconds: Int64, fractional: Bool = true) -> String {
        let ms = ((milliseconds % 1000) + 1000) % 1000
        let seconds = (milliseconds - ms) / 1000
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secondOfDay = seconds - days * 86_400
        let (y, m, d) = civil(days: days)
        func two(_ n: Int64) -> String { n < 10 ? "0\(n)" : "\(n)" }
        var text = "\(y)-\(two(m))-\(two(d))T\(two(secondOfDay / 3600)):\(two(secondOfDay / 60 % 60)):\(two(secondOfDay % 60))"
        if fractional, ms != 0 { text += "." + String(String(ms + 1000).dropFirst()) }
        return text + "Z"
    }

    /// Reads `YYYY-MM-DDTHH:MM:SS[.fff]Z` (UTC only); nil for anything else.
    public static func milliseconds(iso8601 text: String) -> Int64? {
        let u = Array(text.utf8)
        guard u.count >= 20, u.last == UInt8(ascii: "Z"), u[4] == UInt8(ascii: "-"), u[7] == UInt8(ascii: "-"),
              u[10] == UInt8(ascii: "T"), u[13] == UInt8(ascii: ":"), u[16] == UInt8(ascii: ":") else { return nil }
        func number(_ range: Range<Int>) -> Int64? {
            var n: Int64 = 0
            for i in range {
                guard u[i] >= 48, u[i] <= 57 else { return nil }
                n = n * 10 + Int64(u[i] - 48)
            }
            return n
        }
        guard let y = number(0..<4), let mo = number(5..<7), let d = number(8..<10), let h = number(11..<13),
              let mi = number(14..<16), let s = number(17..<19), (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, s < 61
        else { return nil }
        var ms: Int64 = 0
        if u.count > 20 {
            guard u[19] == UInt8(ascii: "."), u.count - 21 >= 1, u.count - 21 <= 9, let fraction = number(20..<(u.count - 1)) else { return nil }
            let digits = u.count - 21
            var scaled = fraction
            if digits < 3 { for _ in digits..<3 { scaled *= 10 } } else { for _ in 3..<digits { scaled /= 10 } }
            ms = scaled
        } else if u.count != 20 {
            return nil
        }
        return (days(year: y, month: mo, day: d) * 86_400 + h * 3600 + mi * 60 + s) * 1000 + ms
    }

    /// Days since 1970-01-01 of a civil date (proleptic Gregorian).
    static func days(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civil(days z0: Int64) -> (Int64, Int64, Int64) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }
}
