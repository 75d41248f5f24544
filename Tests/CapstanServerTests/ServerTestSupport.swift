// Real HTTP for the CapstanServer tests: a Hummingbird server on 127.0.0.1 (port 0) that records
// what it receives and answers from a script, a socket that never answers, captured logs, and a
// bounded wait for something that happens in the background.
@testable import CapstanTestSupport
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A logger that prints nothing (for the servers of the tests).
let quietLogger = Logger(label: "capstan-test") { _ in SwiftLogNoOpLogHandler() }

// MARK: - Captured logs

/// Every message logged through `logger`, with its level and metadata.
final class LogCapture: Sendable {
    struct Line: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: [String: String]

        /// The whole line as a log collector would see it: level, message and every metadata value.
        var rendered: String {
            "\(level) \(message) " + metadata.keys.sorted().map { "\($0)=\(metadata[$0]!)" }.joined(separator: " ")
        }
    }

    private let captured = Mutex<[Line]>([])

    var lines: [Line] { captured.withLock { $0 } }

    var logger: Logger {
        var logger = Logger(label: "capstan-test") { _ in Handler(capture: self) }
        logger.logLevel = .trace
        return logger
    }

    func lines(containing text: String) -> [Line] {
        lines.filter { $0.message.contains(text) }
    }

    fileprivate func append(_ line: Line) {
        captured.withLock { $0.append(line) }
    }

    private struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            var merged = metadata
            if let extra = event.metadata { merged.merge(extra) { $1 } }
            capture.append(Line(level: event.level, message: "\(event.message)", metadata: merged.mapValues { "\($0)" }))
        }
    }
}

// MARK: - Waiting for the background

/// Polls `condition` until it holds, for at most `seconds`. Bounds a test whose subject works in
/// the background; it is not a timing assertion.
func eventually(seconds: Double = 60, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

// MARK: - HTTP servers

/// A responder made of a closure.
struct ClosureResponder: HTTPResponder {
    typealias Context = BasicRequestContext
    let handle: @Sendable (Request) async throws -> Response

    func respond(to request: Request, context: Context) async throws -> Response {
        try await handle(request)
    }
}

/// Runs a Hummingbird server on 127.0.0.1 (port 0) answering with `handle` while `body` runs
/// with its port, then shuts it down gracefully.
func withHTTPServer<T: Sendable>(_ handle: @escaping @Sendable (Request) async throws -> Response,
                                 _ body: (Int) async throws -> T) async throws -> T {
    let (ports, portSink) = AsyncStream.makeStream(of: Int.self)
    let application = Application(
        responder: ClosureResponder(handle: handle),
        configuration: ApplicationConfiguration(address: .hostname("127.0.0.1", port: 0)),
        onServerRunning: { channel in
            portSink.yield(channel.localAddress?.port ?? 0)
            portSink.finish()
        },
        logger: quietLogger)
    let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: [application], logger: quietLogger))
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask {
            defer { portSink.finish() }
            try await group.run()
        }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next(), port > 0 else {
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
            throw TestFailure("the test HTTP server did not start")
        }
        let result: Result<T, any Error>
        do {
            result = .success(try await body(port))
        } catch {
            result = .failure(error)
        }
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
        return try result.get()
    }
}

/// A webhook receiver: records every request and answers with the next status of its script
/// (200 once the script is used up).
final class Receiver: Sendable {
    struct Received: Sendable {
        var method: String
        var path: String
        var contentType: String?
        var body: Data

        var text: String { String(decoding: body, as: UTF8.self) }

        /// The `message` of a generic JSON body, or the Slack text.
        var eventMessage: String? {
            guard let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else { return nil }
            if let event = object["event"] as? [String: Any] { return event["message"] as? String }
            return object["text"] as? String
        }
    }

    private struct State {
        var script: [Int]
        var received: [Received] = []
    }

    private let state: Mutex<State>

    init(script: [Int] = []) {
        state = Mutex(State(script: script))
    }

    var received: [Received] { state.withLock { $0.received } }

    func handle(_ request: Request) async throws -> Response {
        let body = try await request.body.collect(upTo: 1 << 20)
        let status = state.withLock { state -> Int in
            state.received.append(Received(method: request.method.rawValue, path: request.uri.path,
                                           contentType: request.headers[.contentType], body: Data(body.readableBytesView)))
            return state.script.isEmpty ? 200 : state.script.removeFirst()
        }
        return Response(status: HTTPResponse.Status(code: status), headers: [.contentType: "text/plain"],
                        body: ResponseBody(byteBuffer: ByteBuffer(string: status < 300 ? "ok" : "no: status \(status)")))
    }

    /// Runs `body` with this receiver listening; the argument is its base URL (`http://127.0.0.1:PORT`).
    func serve<T: Sendable>(_ body: (String) async throws -> T) async throws -> T {
        try await withHTTPServer({ try await self.handle($0) }) { port in try await body("http://127.0.0.1:\(port)") }
    }
}

/// A socket on 127.0.0.1 that listens and never accepts: connections complete (the kernel's
/// backlog) and requests are sent, but no answer ever comes. Closed on deinit.
final class SilentListener {
    let port: UInt16
    private let fd: Int32

    init() throws {
        #if canImport(Glibc)
        let stream = Int32(SOCK_STREAM.rawValue)
        #else
        let stream = SOCK_STREAM
        #endif
        let fd = socket(AF_INET, stream, 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 64) == 0 else {
            close(fd)
            throw TestFailure("bind/listen: errno \(errno)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.fd = fd
        port = UInt16(bigEndian: addr.sin_port)
    }

    deinit { close(fd) }
}

/// A port nothing listens on (connections are refused).
func refusedPort() throws -> UInt16 {
    try Ports.free()
}
