import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// How the notifier delivers (docs/notifications.md). The defaults are for production; tests
/// shorten the delays.
public struct NotifierConfiguration: Sendable {
    /// Events waiting per target; when full, the oldest is dropped (with a warning).
    public var queueLimit = 1000
    /// The longest one POST may take, connection included.
    public var requestTimeout: Duration = .seconds(10)
    /// Attempts per event and target, the first included.
    public var maxAttempts = 5
    /// The wait after the first failed attempt; doubled after each further one…
    public var initialBackoff: Duration = .seconds(1)
    /// …up to this.
    public var maxBackoff: Duration = .seconds(60)
    /// On graceful shutdown, how long the events already queued may take to go out (one attempt
    /// each, no retries) before the rest is dropped.
    public var drainTimeout: Duration = .seconds(3)

    public init() {}
}

/// Outgoing webhooks: sends events to every target, in order per target, in the background.
///
/// `send` never blocks and never throws: events are queued per target (bounded, the oldest
/// dropped when full). `run()` delivers them — one POST at a time per target, each with a
/// timeout, retried with exponential backoff on connection errors, timeouts, 5xx and 429 (not on
/// other statuses) — until graceful shutdown, then drains what is queued for a short while and
/// returns. A slow or dead target holds up only its own queue.
///
/// Logs name the target and the URL's host, never the URL (it is a secret).
public final class Notifier: Service, Sendable {
    private let configuration: NotifierConfiguration
    private let logger: Logger
    private let queues: [TargetQueue]
    private let started = Atomic<Bool>(false)

    public init(targets: [NotificationTarget], configuration: NotifierConfiguration = NotifierConfiguration(), logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        queues = targets.map { TargetQueue(target: $0, limit: max(1, configuration.queueLimit)) }
    }

    /// The targets, for display (their `description` hides the URL).
    public var targets: [NotificationTarget] { queues.map(\.target) }

    /// Queues `events` for every target and returns at once.
    public func send(_ events: [NotificationEvent]) {
        guard !events.isEmpty else { return }
        for queue in queues {
            for event in events {
                switch queue.continuation.yield(event) {
                case .enqueued:
                    queue.enqueued()
                case .dropped(let oldest):
                    logger.warning("notification queue full: dropped the oldest event", metadata: queue.metadata(oldest).merging([
                        "queue_limit": "\(configuration.queueLimit)",
                    ]) { $1 })
                case .terminated:
                    logger.warning("notifier stopped: event not sent", metadata: queue.metadata(event))
                @unknown default:
                    break
                }
            }
        }
    }

    /// Delivers until graceful shutdown (or cancellation). A notifier runs once.
    public func run() async throws {
        guard !started.exchange(true, ordering: .relaxed) else {
            throw NotifierError(message: "this notifier has already run; create a new one")
        }
        guard !queues.isEmpty else {
            try? await gracefulShutdown()
            return
        }
        var clientConfiguration = HTTPClient.Configuration()
        clientConfiguration.redirectConfiguration = .disallow
        // Retries are ours (with backoff and logs); the client's own would spend the whole
        // timeout reconnecting to a refused port.
        clientConfiguration.connectionPool.retryConnectionEstablishment = false
        clientConfiguration.timeout = .init(connect: Self.timeAmount(configuration.requestTimeout), read: Self.timeAmount(configuration.requestTimeout))
        let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: clientConfiguration)
        for queue in queues {
            if queue.target.host == nil {
                logger.error("notification target is not an http(s) URL: its events are dropped", metadata: ["target": "\(queue.target.name)"])
            }
        }
        await withTaskGroup(of: Void.self) { group in
            // Delivery: one worker per target.
            group.addTask {
                await withTaskGroup(of: Void.self) { workers in
                    for queue in self.queues {
                        workers.addTask { await self.deliverAll(queue, client: client) }
                    }
                }
            }
            // Shutdown: on graceful shutdown, close the queues; the workers send what is queued,
            // and whatever is left when the drain time is up is cancelled.
            group.addTask {
                do {
                    try await gracefulShutdown()
                } catch {
                    return  // cancelled: the group is being torn down anyway
                }
                for queue in self.queues { queue.continuation.finish() }
                try? await Task.sleep(for: self.configuration.drainTimeout)
            }
            _ = await group.next()
            group.cancelAll()
        }
        // Stopped (gracefully or cancelled): later events are refused, not queued for no one.
        for queue in queues { queue.continuation.finish() }
        for queue in queues where queue.pending() > 0 {
            logger.warning("events left unsent at shutdown", metadata: [
                "target": "\(queue.target.name)", "host": "\(queue.target.host ?? "?")", "events": "\(queue.pending())",
            ])
        }
        try? await client.shutdown()
    }

    private func deliverAll(_ queue: TargetQueue, client: HTTPClient) async {
        for await event in queue.stream {
            // Cancelled (the drain time is up): what is left stays counted as not sent.
            if Task.isCancelled { break }
            await deliver(event, to: queue, client: client)
            queue.handled()
        }
    }

    /// One event to one target, with retries. Gives up (logging why) rather than throwing.
    private func deliver(_ event: NotificationEvent, to queue: TargetQueue, client: HTTPClient) async {
        let target = queue.target
        var metadata = queue.metadata(event)
        guard target.host != nil, let url = URL(string: target.url) else { return }
        let body = target.format == .slack ? NotificationPayload.slack(event) : NotificationPayload.json(event)
        var attempt = 0
        while true {
            attempt += 1
            metadata["attempt"] = "\(attempt)"
            let outcome = await post(body, to: url, client: client)
            switch outcome {
            case .delivered:
                logger.debug("notification delivered", metadata: metadata)
                return
            case .refused(let status, let answer):
                metadata["status"] = "\(status)"
                if !answer.isEmpty { metadata["answer"] = "\(answer)" }
                logger.error("notification refused by the receiver: not retried", metadata: metadata)
                return
            case .failed(let problem, let retryAfter):
                metadata["error"] = "\(problem)"
                let shuttingDown = Task.isShuttingDownGracefully || Task.isCancelled
                guard attempt < configuration.maxAttempts, !shuttingDown else {
                    logger.error(shuttingDown ? "notification not delivered: shutting down" : "notification not delivered: giving up after the last attempt",
                                 metadata: metadata)
                    return
                }
                let delay = backoff(after: attempt, retryAfter: retryAfter)
                metadata["retry_in"] = "\(delay)"
                logger.warning("notification attempt failed: retrying", metadata: metadata)
                metadata["retry_in"] = nil
                // The wait ends early on graceful shutdown; the loop then gives up.
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: delay) }
                if Task.isCancelled || Task.isShuttingDownGracefully {
                    logger.error("notification not delivered: shutting down", metadata: metadata)
                    return
                }
            }
        }
    }

    /// The wait after failed attempt `attempt` (1-based): initial × 2^(attempt-1), capped; at
    /// least what a 429's Retry-After asks for, within the cap.
    func backoff(after attempt: Int, retryAfter: Duration?) -> Duration {
        var delay = configuration.initialBackoff
        for _ in 1..<max(1, attempt) {
            delay *= 2
            if delay >= configuration.maxBackoff { break }
        }
        if let retryAfter, retryAfter > delay { delay = retryAfter }
        return min(delay, configuration.maxBackoff)
    }

    enum Outcome {
        case delivered
        /// A status not worth retrying (4xx but 429, 3xx…), and the start of the receiver's answer.
        case refused(status: Int, answer: String)
        /// Worth retrying: a connection error, a timeout, 5xx or 429.
        case failed(String, retryAfter: Duration?)
    }

    private func post(_ body: Data, to url: URL, client: HTTPClient) async -> Outcome {
        var request = HTTPClientRequest(url: url.absoluteString)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "capstan-notifier/1")
        request.body = .bytes(ByteBuffer(bytes: body))
        do {
            let response = try await client.execute(request, timeout: Self.timeAmount(configuration.requestTimeout))
            let answerBytes = (try? await response.body.collect(upTo: 4096)) ?? ByteBuffer()
            let answer = Self.oneLine(Self.redact(String(buffer: answerBytes), url: url), limit: 200)
            let status = Int(response.status.code)
            switch status {
            case 200..<300:
                return .delivered
            case 429:
                let retryAfter = response.headers.first(name: "Retry-After").flatMap(Int.init).map { Duration.seconds(max(0, $0)) }
                return .failed("HTTP 429" + (answer.isEmpty ? "" : ": " + answer), retryAfter: retryAfter)
            case 500..<600:
                return .failed("HTTP \(status)" + (answer.isEmpty ? "" : ": " + answer), retryAfter: nil)
            default:
                return .refused(status: status, answer: answer)
            }
        } catch {
            return .failed(Self.describe(error, url: url), retryAfter: nil)
        }
    }

    /// What went wrong, without the URL's path, query or credentials (they are secret): only
    /// the kind of failure. Any copy of the URL or its path in an error's text is cut out.
    static func describe(_ error: Error, url: URL) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .connectTimeout: return "connection timed out"
            case .deadlineExceeded, .readTimeout, .writeTimeout: return "timed out"
            case .cancelled: return "cancelled"
            case .remoteConnectionClosed: return "the connection was closed by the receiver"
            default: break
            }
        }
        if error is CancellationError { return "cancelled" }
        let text = redact(String(describing: error), url: url)
        if text.localizedCaseInsensitiveContains("connection refused") || text.contains("ECONNREFUSED") {
            return "connection refused"
        }
        return oneLine(text, limit: 300)
    }

    /// `text` with every copy of the URL, its path, query and credentials replaced by `…`.
    static func redact(_ text: String, url: URL) -> String {
        var text = text
        let secrets = [url.absoluteString, url.path, url.query ?? "", url.user ?? "", url.password ?? ""]
        for secret in secrets.sorted(by: { $0.count > $1.count }) where secret.count > 1 {
            text = text.replacingOccurrences(of: secret, with: "…")
        }
        return text
    }

    static func oneLine(_ text: String, limit: Int) -> String {
        let flat = text.split(whereSeparator: \.isNewline).joined(separator: " ").trimmingCharacters(in: .whitespaces)
        return flat.count <= limit ? flat : String(flat.prefix(limit - 1)) + "…"
    }

    static func timeAmount(_ duration: Duration) -> TimeAmount {
        let (seconds, attoseconds) = duration.components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }
}

public struct NotifierError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { message }
}

/// One target's queue: the stream its worker reads, and how many events wait in it.
private final class TargetQueue: Sendable {
    let target: NotificationTarget
    let stream: AsyncStream<NotificationEvent>
    let continuation: AsyncStream<NotificationEvent>.Continuation
    private let waiting = Atomic<Int>(0)

    init(target: NotificationTarget, limit: Int) {
        self.target = target
        (stream, continuation) = AsyncStream.makeStream(of: NotificationEvent.self, bufferingPolicy: .bufferingNewest(limit))
    }

    func metadata(_ event: NotificationEvent) -> Logger.Metadata {
        var metadata: Logger.Metadata = [
            "target": "\(target.name)",
            "host": "\(target.host ?? "?")",
            "kind": "\(event.kind.rawValue)",
        ]
        if let model = event.model { metadata["model"] = "\(model)" }
        if let version = event.version { metadata["version"] = "\(version)" }
        if let deployment = event.deployment { metadata["deployment"] = "\(deployment)" }
        return metadata
    }

    /// One more event waits.
    func enqueued() {
        waiting.add(1, ordering: .relaxed)
    }

    /// An event was sent or given up.
    func handled() {
        waiting.subtract(1, ordering: .relaxed)
    }

    /// Events queued and not yet sent or given up.
    func pending() -> Int {
        waiting.load(ordering: .relaxed)
    }
}
