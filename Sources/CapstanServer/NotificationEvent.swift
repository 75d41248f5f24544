import Foundation

/// Something the controller tells the outside world about (docs/notifications.md).
public struct NotificationEvent: Sendable, Codable, Hashable {
    public enum Kind: String, Sendable, Codable, Hashable, CaseIterable {
        case versionValidated = "version.validated"
        case versionRejected = "version.rejected"
        case aliasMoved = "alias.moved"
        case rolloutStarted = "rollout.started"
        case rolloutPromoted = "rollout.promoted"
        case rolloutRolledBack = "rollout.rolled_back"
        case passFailed = "pass.failed"
    }

    public var kind: Kind
    public var model: String?
    public var version: Int?
    public var alias: String?
    public var deployment: String?
    /// The commit of the pass that did it (full id).
    public var commit: String?
    /// One human sentence: `churn v7 validated (auc 0.91)`.
    public var message: String
    public var at: Date
    /// For a failed pass: what the loop does next (`stalled`, `waiting`, `transient`, `terminal`)
    /// and the stable reason code (`TrainingFailed`, `InvalidManifests`…), docs/state.md.
    public var failureClass: String?
    public var reason: String?

    public init(kind: Kind, model: String? = nil, version: Int? = nil, alias: String? = nil, deployment: String? = nil,
                commit: String? = nil, message: String, at: Date = Date()) {
        self.kind = kind
        self.model = model
        self.version = version
        self.alias = alias
        self.deployment = deployment
        self.commit = commit
        self.message = message
        self.at = at
    }

    private enum CodingKeys: String, CodingKey {
        case kind, model, version, alias, deployment, commit, message, at
        case failureClass = "class", reason
    }

    /// `at` is always an RFC 3339 UTC string with milliseconds, whatever the encoder's date
    /// strategy; absent fields are left out.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(kind, forKey: .kind)
        try c.encodeIfPresent(model, forKey: .model)
        try c.encodeIfPresent(version, forKey: .version)
        try c.encodeIfPresent(alias, forKey: .alias)
        try c.encodeIfPresent(deployment, forKey: .deployment)
        try c.encodeIfPresent(commit, forKey: .commit)
        try c.encode(message, forKey: .message)
        try c.encode(Self.timestamp(at), forKey: .at)
        try c.encodeIfPresent(failureClass, forKey: .failureClass)
        try c.encodeIfPresent(reason, forKey: .reason)
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        kind = try c.decode(Kind.self, forKey: .kind)
        model = try c.decodeIfPresent(String.self, forKey: .model)
        version = try c.decodeIfPresent(Int.self, forKey: .version)
        alias = try c.decodeIfPresent(String.self, forKey: .alias)
        deployment = try c.decodeIfPresent(String.self, forKey: .deployment)
        commit = try c.decodeIfPresent(String.self, forKey: .commit)
        message = try c.decode(String.self, forKey: .message)
        let text = try c.decode(String.self, forKey: .at)
        guard let date = (try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)))
                ?? (try? Date(text, strategy: Date.ISO8601FormatStyle())) else {
            throw DecodingError.dataCorruptedError(forKey: .at, in: c, debugDescription: "'\(text)' is not an RFC 3339 time")
        }
        at = date
        failureClass = try c.decodeIfPresent(String.self, forKey: .failureClass)
        reason = try c.decodeIfPresent(String.self, forKey: .reason)
    }

    /// `2026-11-27T20:15:00.123Z`.
    static func timestamp(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }
}

/// Where notifications go. The URL is a secret (a Slack incoming-webhook URL is a credential):
/// it is never logged, put in an error or described; a target is described by its name and the
/// URL's host (`description`, `debugDescription` and `dump` all show only those).
public struct NotificationTarget: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    public enum Format: String, Sendable, CaseIterable {
        /// `{"format_version":1,"event":{…}}`.
        case json
        /// A Slack incoming webhook: `{"text":"…"}`.
        case slack
    }

    /// How the target is named in logs: the environment variable that held the URL.
    public var name: String
    /// The URL the events are POSTed to. Secret.
    public var url: String
    public var format: Format

    public init(name: String, url: String, format: Format) {
        self.name = name
        self.url = url
        self.format = format
    }

    /// The URL's host, the only part of it that may be shown; nil when it is not an http(s) URL.
    public var host: String? {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
              scheme == "http" || scheme == "https", let host = components.host, !host.isEmpty else { return nil }
        return host
    }

    /// Throws when the URL is not an http(s) URL with a host; the error names the target, not the URL.
    public func validate() throws {
        guard host != nil else { throw NotificationTargetError(target: name) }
    }

    public var description: String {
        "\(name) (\(host ?? "not an http(s) URL"), \(format.rawValue))"
    }

    public var debugDescription: String { description }

    public var customMirror: Mirror {
        Mirror(self, children: ["name": name, "host": host ?? "?", "format": format], displayStyle: .struct)
    }
}

/// A notification URL that cannot be used. Says which target, never the URL.
public struct NotificationTargetError: Error, CustomStringConvertible, Sendable {
    public var target: String

    public var description: String {
        "the notification URL in \(target) is not an http:// or https:// URL with a host; set \(target) to the webhook's URL"
    }
}

/// The bodies POSTed to targets (docs/notifications.md).
public enum NotificationPayload {
    /// The version of the generic JSON body.
    public static let formatVersion = 1

    /// `{"format_version":1,"event":{"at":"…","commit":"…","kind":"version.validated","message":"…","model":"churn","version":7}}`,
    /// keys sorted, absent fields left out.
    public static func json(_ event: NotificationEvent) -> Data {
        struct Body: Encodable {
            var format_version: Int
            var event: NotificationEvent
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Encoding strings, numbers and a fixed-format date cannot fail.
        return (try? encoder.encode(Body(format_version: formatVersion, event: event))) ?? Data("{}".utf8)
    }

    /// `{"text":":white_check_mark: churn v7 validated (auc 0.91) at abc1234"}`.
    public static func slack(_ event: NotificationEvent) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(["text": slackText(event)])) ?? Data("{}".utf8)
    }

    /// The Slack line: the kind's emoji, the message (without a final period) and the short
    /// commit. `&`, `<` and `>` are escaped as Slack requires, so names cannot form links or
    /// mentions.
    public static func slackText(_ event: NotificationEvent) -> String {
        var message = event.message.trimmingCharacters(in: .whitespacesAndNewlines)
        if message.hasSuffix(".") { message.removeLast() }
        var text = emoji(event.kind) + " " + message
        if let commit = event.commit, !commit.isEmpty {
            let short = String(commit.prefix(7))
            if !message.contains(short) { text += " at " + short }
        }
        return text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }

    static func emoji(_ kind: NotificationEvent.Kind) -> String {
        switch kind {
        case .versionValidated: return ":white_check_mark:"
        case .versionRejected: return ":x:"
        case .aliasMoved: return ":arrow_right:"
        case .rolloutStarted: return ":rocket:"
        case .rolloutPromoted: return ":tada:"
        case .rolloutRolledBack: return ":rewind:"
        case .passFailed: return ":rotating_light:"
        }
    }
}
