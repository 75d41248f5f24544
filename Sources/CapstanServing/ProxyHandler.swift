import NIOCore
import NIOHTTP1

/// One client connection of the gateway, the last handler of its pipeline (after NIO's HTTP/1.1
/// server handlers, whose pipelining assistance hands it one request at a time).
///
/// Per request: the deployment from `/<deployment>/<rest>`, a backend by weight, a replica round
/// robin, then an upstream connection of the same event loop (idle in the pool, else a new one).
/// Request and response parts are relayed as they come, each way; a side that cannot take more
/// stops reads from the other. The upstream connection goes back to the pool only after a
/// complete keep-alive exchange.
final class ProxyHandler: ChannelDuplexHandler, UpstreamDelegate {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// A request whose body is at most this long is kept until its response starts, so that it
    /// can be sent again when a pooled connection turns out to be dead.
    static let replayLimit = 64 * 1024
    /// A response head announcing a body of at most this many bytes waits for its body's first
    /// bytes, to go out with them.
    static let shortBody = 64 * 1024

    private let routes: RoutingTable
    private let pool: UpstreamPool
    private let upstreamTimeout: TimeAmount
    private var context: ChannelHandlerContext?
    private var state = State.idle
    private var readPending = false

    private enum State {
        case idle
        /// Answered by the gateway (404, 503): the rest of the request is dropped.
        case discarding
        case proxying(Exchange)
    }

    init(routes: RoutingTable, pool: UpstreamPool, upstreamTimeout: TimeAmount) {
        self.routes = routes
        self.pool = pool
        self.upstreamTimeout = upstreamTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: From the client

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            begin(head, context: context)
        case .body(let body):
            guard case .proxying(let exchange) = state, !exchange.responseEnded else { return }
            exchange.bodyBytes += body.readableBytes
            send(.body(.byteBuffer(body)), exchange)
        case .end:
            switch state {
            case .idle:
                break
            case .discarding:
                state = .idle
                resumeReads()
            case .proxying(let exchange):
                exchange.requestEnded = true
                if exchange.responseEnded {
                    finish(exchange)
                } else {
                    send(.end(nil), exchange)
                }
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .proxying(let exchange) = state { exchange.upstream?.flush() }
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case .proxying(let exchange) = state { exchange.upstream?.holdReads(!context.channel.isWritable) }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .proxying(let exchange) = state {
            // The client went away: the model server's work is of no use any more.
            closeUpstream(exchange)
            exchange.responseEnded = true
            finish(exchange)
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// Reads from the client wait while its request cannot go on: no upstream connection yet, or
    /// one that cannot take more.
    func read(context: ChannelHandlerContext) {
        if holdsReads {
            readPending = true
        } else {
            context.read()
        }
    }

    private var holdsReads: Bool {
        guard case .proxying(let exchange) = state, !exchange.responseEnded, !exchange.requestEnded else { return false }
        guard let upstream = exchange.upstream else { return true }
        return !upstream.isWritable
    }

    private func resumeReads() {
        guard readPending, !holdsReads, let context else { return }
        readPending = false
        context.read()
    }

    // MARK: The exchange

    private func begin(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        if head.method == .CONNECT {
            return refuseTunnel(head, context: context)
        }
        let expectsContinue = HTTPBoundary.expectsContinue(head)
        // Answered without `100 Continue`, a client that expects it may send its body or not:
        // only closing the connection keeps its next request from being read as that body.
        let keepAlive = head.isKeepAlive && !expectsContinue
        guard let (deployment, target) = ProxyHeaders.split(target: ProxyHeaders.originForm(head.uri)) else {
            return answer(.notFound, "no deployment in the request path '\(head.uri)'; send requests to /<deployment>/<path>",
                          version: head.version, keepAlive: keepAlive)
        }
        guard let route = routes.route(for: deployment) else {
            return answer(.notFound, "unknown deployment \(deployment)", version: head.version, keepAlive: keepAlive)
        }
        guard let backend = route.pickBackend() else {
            return answer(.serviceUnavailable, "no ready backend for deployment \(deployment)", version: head.version, keepAlive: keepAlive)
        }
        let replica = backend.pickReplica()
        if expectsContinue {
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
        }
        let exchange = Exchange(deployment: route.deployment, backend: backend, replica: replica, clientVersion: head.version,
                                keepAlive: head.isKeepAlive, idempotent: Self.isIdempotent(head.method))
        replica.inFlight.wrappingAdd(1, ordering: .relaxed)
        state = .proxying(exchange)
        exchange.parts.append(.head(ProxyHeaders.upstreamRequest(head, target: target, authority: replica.authority)))
        exchange.timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: exchange.started + upstreamTimeout) { [weak self, weak exchange] in
            if let self, let exchange { self.timedOut(exchange) }
        }
        connect(exchange)
    }

    private func connect(_ exchange: Exchange) {
        pool.acquire(port: exchange.replica.port, fresh: exchange.retried) { result in
            guard case .proxying(let current) = self.state, current === exchange, !exchange.responseEnded else {
                // The exchange ended meanwhile (client gone, timeout): keep the connection for later.
                if case .success(let upstream) = result { self.pool.release(upstream) }
                return
            }
            switch result {
            case .success(let upstream): self.attach(upstream, exchange)
            case .failure(let error): self.failBeforeResponse(exchange, error)
            }
        }
    }

    private func attach(_ upstream: UpstreamConnection, _ exchange: Exchange) {
        upstream.delegate = self
        exchange.upstream = upstream
        exchange.reused = upstream.served > 0
        exchange.written = 0
        upstream.holdReads(!(context?.channel.isWritable ?? true))
        writePending(exchange)
        upstream.flush()
        resumeReads()
    }

    /// Sends `part` upstream now, or once connected; flushed at the end of the client's read.
    private func send(_ part: HTTPClientRequestPart, _ exchange: Exchange) {
        if exchange.bodyBytes > Self.replayLimit { exchange.replayable = false }
        exchange.parts.append(part)
        if exchange.upstream != nil { writePending(exchange) }
    }

    private func writePending(_ exchange: Exchange) {
        guard let upstream = exchange.upstream else { return }
        while exchange.written < exchange.parts.count {
            let part = exchange.parts[exchange.written]
            exchange.written += 1
            if case .head = part, exchange.reused {
                // A pooled connection found dead by the first write sent nothing: safe to repeat.
                let promise = upstream.eventLoopPromise()
                promise?.futureResult.assumeIsolated().whenFailure { [weak exchange] _ in exchange?.headWriteFailed = true }
                upstream.write(part, promise: promise)
            } else {
                upstream.write(part)
            }
        }
        if !exchange.replayable || exchange.responseStarted {
            exchange.parts.removeAll(keepingCapacity: true)
            exchange.written = 0
        }
    }

    private func timedOut(_ exchange: Exchange) {
        guard case .proxying(let current) = state, current === exchange, !exchange.responseEnded else { return }
        if !exchange.responseStarted {
            failBeforeResponse(exchange, UpstreamTimeout(limit: upstreamTimeout))
            return
        }
        // The body: at most `upstreamTimeout` between two reads.
        let next = exchange.lastRead + upstreamTimeout
        if next > .now() {
            exchange.timer = context?.eventLoop.assumeIsolated().scheduleTask(deadline: next) { [weak self, weak exchange] in
                if let self, let exchange { self.timedOut(exchange) }
            }
            return
        }
        exchange.backend.counters.recordBrokenResponse()
        closeUpstream(exchange)
        exchange.responseEnded = true
        finish(exchange)
        context?.close(promise: nil)
    }

    /// The exchange is over both ways: the next request may come.
    private func finish(_ exchange: Exchange) {
        guard !exchange.finished else { return }
        exchange.finished = true
        exchange.timer?.cancel()
        exchange.timer = nil
        exchange.replica.inFlight.wrappingSubtract(1, ordering: .relaxed)
        if case .proxying(let current) = state, current === exchange { state = .idle }
        resumeReads()
    }

    private func closeUpstream(_ exchange: Exchange) {
        guard let upstream = exchange.upstream else { return }
        exchange.upstream = nil
        upstream.delegate = nil
        upstream.close()
    }

    /// No answer from the model server: 502, counted as a connection error.
    private func failBeforeResponse(_ exchange: Exchange, _ error: (any Error)?) {
        closeUpstream(exchange)
        exchange.backend.counters.recordConnectionError()
        exchange.responseEnded = true
        exchange.parts = []
        let reason = error.map(ConnectionFailure.describe) ?? "connection closed before a response"
        let message = "the model server of \(exchange.deployment) v\(exchange.backend.version) (127.0.0.1:\(exchange.replica.port)) did not answer: \(reason)"
        if exchange.requestEnded { finish(exchange) }
        writeAnswer(.badGateway, message, version: exchange.clientVersion, keepAlive: exchange.keepAlive, capstanVersion: exchange.backend.versionHeader)
        resumeReads()
    }

    // MARK: From the model server

    func upstreamHead(_ head: HTTPResponseHead, from upstream: UpstreamConnection) {
        guard case .proxying(let exchange) = state, exchange.upstream === upstream, let context else { return }
        if head.isInformational {
            // An interim answer (we never send Expect): not passed on, nor its end.
            exchange.interim = true
            return
        }
        exchange.responseStarted = true
        exchange.upstreamKeepAlive = head.isKeepAlive
        exchange.parts = []
        let now = NIODeadline.now()
        exchange.lastRead = now
        exchange.backend.counters.recordResponse(status: Int(head.status.code), milliseconds: Double((now - exchange.started).nanoseconds) / 1e6)
        var keepAlive = exchange.keepAlive
        let response = ProxyHeaders.clientResponse(head, version: exchange.clientVersion, capstanVersion: exchange.backend.versionHeader,
                                                   keepAlive: &keepAlive)
        exchange.keepAlive = keepAlive
        // A short body announced by Content-Length comes right after its head: both go out in
        // one write (one wake-up of the client instead of two).
        exchange.holdHead = head.headers.first(name: "content-length").flatMap(Int.init).map { $0 > 0 && $0 <= Self.shortBody } ?? false
        context.write(wrapOutboundOut(.head(response)), promise: nil)
    }

    func upstreamBody(_ body: ByteBuffer, from upstream: UpstreamConnection) {
        guard case .proxying(let exchange) = state, exchange.upstream === upstream, let context else { return }
        exchange.lastRead = .now()
        exchange.holdHead = false
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        if !context.channel.isWritable { upstream.holdReads(true) }
    }

    func upstreamReadComplete(from upstream: UpstreamConnection) {
        guard case .proxying(let exchange) = state, exchange.upstream === upstream, !exchange.holdHead else { return }
        context?.flush()
    }

    func upstreamEnd(from upstream: UpstreamConnection) {
        guard case .proxying(let exchange) = state, exchange.upstream === upstream, let context else { return }
        if exchange.interim {
            exchange.interim = false
            return
        }
        exchange.responseEnded = true
        exchange.upstream = nil
        upstream.delegate = nil
        let reusable = exchange.upstreamKeepAlive && exchange.requestEnded
        if reusable { pool.release(upstream) }
        // Done before the write: writing the end may hand over the next pipelined request.
        if exchange.requestEnded { finish(exchange) }
        writeEnd(context, keepAlive: exchange.keepAlive)
        resumeReads()
        if !reusable {
            // The server closes it, or part of the request was never sent. (After the answer is on
            // its way: closing takes time.)
            upstream.close()
            if !exchange.upstreamKeepAlive { pool.prepareSpare(port: exchange.replica.port) }
        }
    }

    func upstreamWritabilityChanged(_ upstream: UpstreamConnection) {
        guard case .proxying(let exchange) = state, exchange.upstream === upstream else { return }
        resumeReads()
    }

    func upstreamClosed(_ upstream: UpstreamConnection, error: (any Error)?) {
        guard case .proxying(let exchange) = state, exchange.upstream === upstream else { return }
        exchange.upstream = nil
        if !exchange.responseStarted {
            // A pooled connection the server had closed while it was idle: once more on a new one,
            // when the request can be repeated (all of it is at hand, and either nothing of it
            // was sent or it is idempotent).
            if exchange.reused, !exchange.retried, exchange.replayable, exchange.idempotent || exchange.headWriteFailed {
                exchange.retried = true
                connect(exchange)
                return
            }
            failBeforeResponse(exchange, error)
            return
        }
        // Cut in the middle of the answer: the client can only learn it by the connection closing.
        exchange.backend.counters.recordBrokenResponse()
        exchange.responseEnded = true
        finish(exchange)
        context?.close(promise: nil)
    }

    // MARK: Answers

    /// CONNECT asks for a tunnel, which the gateway does not make: 405, then the connection
    /// closes (`HTTPBoundary`).
    private func refuseTunnel(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        state = .discarding
        HTTPBoundary.writeRawAndClose(HTTPBoundary.tunnelRefusal(version: head.version, target: head.uri, server: "the gateway, a reverse proxy to model servers,",
                                                                 allow: ProxyHeaders.allowedMethods),
                                      context: context)
    }

    /// An answer of the gateway's own: the rest of the request is read and dropped.
    private func answer(_ status: HTTPResponseStatus, _ message: String, version: HTTPVersion, keepAlive: Bool) {
        state = .discarding
        writeAnswer(status, message, version: version, keepAlive: keepAlive, capstanVersion: nil)
    }

    /// `{"error": message}` with `status`, and `X-Capstan-Version` when a backend was chosen.
    private func writeAnswer(_ status: HTTPResponseStatus, _ message: String, version: HTTPVersion, keepAlive: Bool, capstanVersion: String?) {
        guard let context else { return }
        let body = context.channel.allocator.buffer(string: ProxyHeaders.errorBody(message))
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        if let capstanVersion { headers.add(name: ProxyHeaders.versionHeader, value: capstanVersion) }
        ProxyHeaders.connectionHeader(&headers, version: version, keepAlive: keepAlive)
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        writeEnd(context, keepAlive: keepAlive)
    }

    private func writeEnd(_ context: ChannelHandlerContext, keepAlive: Bool) {
        if keepAlive {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            let promise = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: promise)
            promise.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    static func isIdempotent(_ method: HTTPMethod) -> Bool {
        switch method {
        case .GET, .HEAD, .PUT, .DELETE, .OPTIONS, .TRACE: return true
        default: return false
        }
    }
}

/// One request on its way to a model server, and its answer on the way back.
private final class Exchange {
    let deployment: String
    let backend: RouteBackend
    let replica: ReplicaTarget
    let clientVersion: HTTPVersion
    let idempotent: Bool
    let started = NIODeadline.now()
    /// The client connection stays open after the answer.
    var keepAlive: Bool
    var upstream: UpstreamConnection?
    /// The request parts not written yet, preceded by those written while the request may still
    /// be sent again (`replayable`, until the response starts).
    var parts: [HTTPClientRequestPart] = []
    var written = 0
    var replayable = true
    var bodyBytes = 0
    var reused = false
    var retried = false
    var headWriteFailed = false
    var requestEnded = false
    var responseStarted = false
    var responseEnded = false
    var upstreamKeepAlive = false
    /// The response head is written but not flushed: its short body is coming.
    var holdHead = false
    var interim = false
    var finished = false
    var lastRead = NIODeadline.now()
    var timer: Scheduled<Void>?

    init(deployment: String, backend: RouteBackend, replica: ReplicaTarget, clientVersion: HTTPVersion, keepAlive: Bool, idempotent: Bool) {
        self.deployment = deployment
        self.backend = backend
        self.replica = replica
        self.clientVersion = clientVersion
        self.keepAlive = keepAlive
        self.idempotent = idempotent
    }
}

/// No response head from the model server within the gateway's upstream timeout.
struct UpstreamTimeout: Error, CustomStringConvertible {
    let limit: TimeAmount
    var description: String { "timed out (no response head within \(Duration.text(milliseconds: limit.nanoseconds / 1_000_000)))" }
}

extension HTTPResponseHead {
    /// 1xx but 101: an interim answer, followed by the real one.
    var isInformational: Bool { status.code >= 100 && status.code < 200 && status.code != 101 }
}
