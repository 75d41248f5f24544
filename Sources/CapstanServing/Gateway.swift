import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The gateway: `/<deployment>/<rest>` → `http://127.0.0.1:PORT/<rest>` of one ready replica of a
/// backend chosen by weight. Bodies stream both ways; hop-by-hop headers are dropped; every
/// answer carries `X-Capstan-Version`. Per backend it counts requests, 5xx answers, connection
/// errors, and the time to the response head.
///
/// Per request it takes one short lock (the routing snapshot), two atomic increments, and one
/// short lock for the counters; nothing is held across an await.
struct Gateway: HTTPResponder {
    typealias Context = BasicRequestContext

    let routes: RoutingTable
    let client: HTTPClient
    /// How long the model server may take to send the response head (502 after).
    let upstreamTimeout: TimeAmount

    static let versionHeader = HTTPField.Name("X-Capstan-Version")!
    /// Bodies up to this size with a known length are read whole before they are passed on
    /// (one write each way); longer ones, and those of unknown length, stream.
    static let bufferLimit = 64 * 1024

    func respond(to request: Request, context: Context) async throws -> Response {
        let path = request.head.path ?? "/"
        let utf8 = path.utf8
        guard utf8.first == UInt8(ascii: "/") else { return Self.error(.notFound, "no deployment in the request path '\(path)'") }
        let nameStart = utf8.index(after: utf8.startIndex)
        let nameEnd = utf8[nameStart...].firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") } ?? utf8.endIndex
        let deployment = path[nameStart..<nameEnd]
        guard !deployment.isEmpty else {
            return Self.error(.notFound, "no deployment in the request path; send requests to /<deployment>/<path>")
        }
        guard let route = routes.route(for: deployment) else {
            return Self.error(.notFound, "unknown deployment \(deployment)")
        }
        guard let backend = route.pickBackend() else {
            return Self.error(.serviceUnavailable, "no ready backend for deployment \(deployment)")
        }
        let replica = backend.pickReplica()
        let rest = path[nameEnd...]
        let url: String
        if rest.isEmpty {
            url = replica.base + "/"
        } else if rest.utf8.first == UInt8(ascii: "?") {
            url = replica.base + "/" + rest
        } else {
            url = replica.base + rest
        }

        var upstream = HTTPClientRequest(url: url)
        upstream.method = HTTPMethod(rawValue: request.method.rawValue)
        var headers = HTTPHeaders()
        headers.reserveCapacity(request.headers.count)
        let connectionTokens = request.headers[.connection].map(Self.tokens) ?? []
        for field in request.headers where !Self.isHopByHop(field.name.canonicalName, request: true) {
            if !connectionTokens.isEmpty, connectionTokens.contains(field.name.canonicalName) { continue }
            headers.add(name: field.name.rawName, value: field.value)
        }
        upstream.headers = headers
        // The client reads the request body in a task of its own; `upload` ends that before the
        // server reads the next request from the connection (see `TrackedRequestBody`).
        let length = request.headers[.contentLength].flatMap { Int64($0) }
        let upload: UploadTracker?
        if let length, length > 0, length <= Self.bufferLimit {
            // A small body is read first and sent in one write: no upload task, fewer hops.
            upstream.body = .bytes(try await request.body.collect(upTo: Int(length)))
            upload = nil
        } else if let length, length > 0 {
            let tracker = UploadTracker()
            upload = tracker
            upstream.body = .stream(TrackedRequestBody(base: request.body, tracker: tracker), length: .known(length))
        } else if length == nil, request.headers[.transferEncoding] != nil {
            let tracker = UploadTracker()
            upload = tracker
            upstream.body = .stream(TrackedRequestBody(base: request.body, tracker: tracker), length: .unknown)
        } else {
            upload = nil
        }

        let token = InFlight(replica)
        let clock = ContinuousClock()
        let started = clock.now
        let response: HTTPClientResponse
        do {
            response = try await client.execute(upstream, deadline: .now() + upstreamTimeout)
        } catch {
            await upload?.close()
            backend.counters.recordConnectionError()
            var failure = Self.error(.badGateway, "the model server of \(deployment) v\(backend.version) (127.0.0.1:\(replica.port)) "
                + "did not answer: \(ConnectionFailure.describe(error))")
            failure.headers[Self.versionHeader] = backend.versionHeader
            return failure
        }
        let elapsed = (clock.now - started).components
        backend.counters.recordResponse(
            status: Int(response.status.code),
            milliseconds: Double(elapsed.seconds) * 1000 + Double(elapsed.attoseconds) / 1e15)

        var fields = HTTPFields()
        fields.reserveCapacity(response.headers.count + 1)
        var contentLength: Int?
        let upstreamTokens = response.headers.contains(name: "connection") ? Self.tokens(response.headers[canonicalForm: "connection"].joined(separator: ",")) : []
        for (name, value) in response.headers {
            let lower = name.lowercased()
            if Self.isHopByHop(lower, request: false) || upstreamTokens.contains(lower) { continue }
            if lower == "content-length" { contentLength = Int(value) }
            if let fieldName = HTTPField.Name(name) { fields.append(HTTPField(name: fieldName, value: value)) }
        }
        fields.append(HTTPField(name: Self.versionHeader, value: backend.versionHeader))
        let status = HTTPResponse.Status(code: Int(response.status.code), reasonPhrase: response.status.reasonPhrase)
        if let contentLength, contentLength <= Self.bufferLimit {
            // A small answer is read whole and written with its head in one write.
            do {
                let buffer = try await response.body.collect(upTo: contentLength)
                await upload?.close()
                withExtendedLifetime(token) {}
                return Response(status: status, headers: fields, body: ResponseBody(byteBuffer: buffer))
            } catch {
                await upload?.close()
                var failure = Self.error(.badGateway, "the model server of \(deployment) v\(backend.version) (127.0.0.1:\(replica.port)) "
                    + "did not send its whole answer: \(ConnectionFailure.describe(error))")
                failure.headers[Self.versionHeader] = backend.versionHeader
                return failure
            }
        }
        let upstreamBody = response.body
        let body = ResponseBody(contentLength: contentLength) { writer in
            // The token (the replica's in-flight count) lives as long as this body.
            defer { token.touch() }
            do {
                for try await chunk in upstreamBody {
                    try await writer.write(chunk)
                }
            } catch {
                await upload?.close()
                throw error
            }
            await upload?.close()
            try await writer.finish(nil)
        }
        return Response(status: status, headers: fields, body: body)
    }

    /// Headers that concern one connection, not the request: never forwarded. `host` and
    /// `content-length` are set again by the client for the upstream request.
    static func isHopByHop(_ lowercasedName: String, request: Bool) -> Bool {
        switch lowercasedName {
        case "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "proxy-authenticate",
             "proxy-authorization":
            return true
        case "host", "content-length", "expect":
            return request
        default:
            return false
        }
    }

    static func tokens(_ value: String) -> Set<String> {
        Set(value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.filter { !$0.isEmpty })
    }

    /// A JSON error answer: `{"error": "..."}`.
    static func error(_ status: HTTPResponse.Status, _ message: String) -> Response {
        Response(status: status, headers: [.contentType: "application/json"],
                 body: ResponseBody(byteBuffer: ByteBuffer(string: "{\"error\":" + JSONText.quote(message) + "}\n")))
    }
}

/// The request body as the HTTP client reads it, in a task of its own.
///
/// Hummingbird reads what is left of a request body from the connection once the handler's
/// response is written, with the same iterator; two readers at once trap in NIO. So before the
/// response ends, `UploadTracker.close()` waits for a read in progress and makes every later read
/// by the client return the end.
struct TrackedRequestBody: AsyncSequence, Sendable {
    typealias Element = ByteBuffer

    let base: RequestBody
    let tracker: UploadTracker

    struct AsyncIterator: AsyncIteratorProtocol {
        var base: RequestBody.AsyncIterator
        let tracker: UploadTracker

        mutating func next() async throws -> ByteBuffer? {
            guard tracker.begin() else { return nil }
            defer { tracker.end() }
            return try await base.next()
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(base: base.makeAsyncIterator(), tracker: tracker)
    }
}

final class UploadTracker: Sendable {
    private struct State {
        var reading = false
        var closed = false
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    /// False once closed: the reader must not touch the body any more.
    func begin() -> Bool {
        state.withLock { state in
            guard !state.closed else { return false }
            state.reading = true
            return true
        }
    }

    func end() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.reading = false
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Returns once no read is in progress; no read starts after.
    func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                state.closed = true
                if state.reading {
                    state.waiter = continuation
                    return false
                }
                return true
            }
            if now { continuation.resume() }
        }
    }
}

/// Counts one request in flight to a replica for as long as it is referenced.
private final class InFlight: Sendable {
    let replica: ReplicaTarget

    init(_ replica: ReplicaTarget) {
        self.replica = replica
        replica.inFlight.wrappingAdd(1, ordering: .relaxed)
    }

    /// Keeps the token alive until the point of the call.
    func touch() {}

    deinit {
        replica.inFlight.wrappingSubtract(1, ordering: .relaxed)
    }
}

/// Words for why an HTTP call got no answer.
enum ConnectionFailure {
    static func describe(_ error: any Error) -> String {
        if let e = error as? HTTPClientError {
            switch e {
            case .connectTimeout: return "connect timeout"
            case .deadlineExceeded: return "timed out"
            case .readTimeout: return "read timeout"
            case .remoteConnectionClosed: return "connection closed before a response"
            case .cancelled: return "cancelled"
            default: return e.description
            }
        }
        if let e = error as? NIOConnectionError {
            if let first = e.connectionErrors.first { return describe(first.error) }
            return e.description
        }
        if let e = error as? IOError {
            switch e.errnoCode {
            case ECONNREFUSED: return "connection refused"
            case ECONNRESET: return "connection reset"
            case ETIMEDOUT: return "timed out"
            case EPIPE: return "connection closed"
            default: return e.description
            }
        }
        if let e = error as? ChannelError {
            switch e {
            case .connectTimeout: return "connect timeout"
            case .ioOnClosedChannel, .eof, .alreadyClosed, .outputClosed: return "connection closed before a response"
            default: return "\(e)"
            }
        }
        let text = "\(error)"
        if text.contains("ECONNREFUSED") || text.lowercased().contains("connection refused") { return "connection refused" }
        return text
    }
}

/// JSON string quoting for hand-written error bodies.
enum JSONText {
    static func quote(_ s: String) -> String {
        var out = "\""
        out.reserveCapacity(s.utf8.count + 2)
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
