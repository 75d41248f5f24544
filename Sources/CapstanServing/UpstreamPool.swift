import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// What an upstream connection reports to the client connection it serves (a `ProxyHandler`,
/// on the same event loop).
protocol UpstreamDelegate: AnyObject {
    func upstreamHead(_ head: HTTPResponseHead, from upstream: UpstreamConnection)
    func upstreamBody(_ body: ByteBuffer, from upstream: UpstreamConnection)
    func upstreamEnd(from upstream: UpstreamConnection)
    func upstreamReadComplete(from upstream: UpstreamConnection)
    func upstreamWritabilityChanged(_ upstream: UpstreamConnection)
    /// The connection closed; `error` says why when it failed.
    func upstreamClosed(_ upstream: UpstreamConnection, error: (any Error)?)
}

/// One HTTP/1.1 connection to a model server: the last handler of its pipeline, after NIO's
/// request encoder and response decoder. It hands the response parts to its delegate, and holds
/// back reads while the delegate's client cannot take more (`holdReads`).
final class UpstreamConnection: ChannelDuplexHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    let port: Int
    /// The client connection this one serves; nil while idle in the pool.
    weak var delegate: (any UpstreamDelegate)?
    /// The pool it goes back to; set once connected.
    weak var pool: UpstreamPool?
    /// Requests sent on it before the current one: a reused connection may have been closed by
    /// the server while it was idle.
    var served = 0
    /// When it went back to the pool.
    var idleSince = NIODeadline.uptimeNanoseconds(0)
    /// New, and no response head yet (the pool limits those).
    var attempt: Attempt?
    private var context: ChannelHandlerContext?
    private var failure: (any Error)?
    private var holding = false
    private var readPending = false

    init(port: Int) {
        self.port = port
    }

    var isActive: Bool { context?.channel.isActive ?? false }
    var isWritable: Bool { context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let delegate else {
            // An idle connection has nothing to say; whatever it sends makes it unusable.
            context.close(promise: nil)
            return
        }
        switch unwrapInboundIn(data) {
        case .head(let head):
            if let attempt {
                self.attempt = nil
                pool?.answered(attempt, port: port)
            }
            delegate.upstreamHead(head, from: self)
        case .body(let body): delegate.upstreamBody(body, from: self)
        case .end: delegate.upstreamEnd(from: self)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        delegate?.upstreamReadComplete(from: self)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        delegate?.upstreamWritabilityChanged(self)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if failure == nil { failure = error }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let attempt {
            self.attempt = nil
            pool?.answered(attempt, port: port)
        }
        if let delegate {
            self.delegate = nil
            delegate.upstreamClosed(self, error: failure)
        } else {
            pool?.remove(self)
        }
    }

    // MARK: Outbound

    func read(context: ChannelHandlerContext) {
        if holding {
            readPending = true
        } else {
            context.read()
        }
    }

    /// Holds back reads from the model server (its client cannot take more), or resumes them.
    func holdReads(_ hold: Bool) {
        holding = hold
        if !hold, readPending, let context {
            readPending = false
            context.read()
        }
    }

    func write(_ part: HTTPClientRequestPart, promise: EventLoopPromise<Void>? = nil) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        context.write(wrapOutboundOut(part), promise: promise)
    }

    /// A promise of this connection's event loop; nil once it is closed.
    func eventLoopPromise() -> EventLoopPromise<Void>? {
        context?.eventLoop.makePromise(of: Void.self)
    }

    func flush() {
        context?.flush()
    }

    func close() {
        context?.close(promise: nil)
    }
}

/// The connections of one event loop to the model servers, by port: opened on this loop (the
/// loop of the client connections that use them, so no request changes threads), kept open after
/// a complete keep-alive exchange, and taken most recently used first.
///
/// A new connection counts as *unanswered* until its first response head comes, it fails, or
/// `unansweredAge` has passed: at most `unansweredLimit` of them per model server and loop. A
/// server's accept queue holds few connections (Python's http.server: 5); one that overflows drops
/// the SYN, which the kernel sends again only a second later (`attempt` tries again sooner).
/// Requests beyond the limit wait here, in order, for a connection.
///
/// Only touched on its event loop.
final class UpstreamPool {
    /// Idle connections kept per model server and event loop; more are closed.
    static let idleLimit = 256
    /// An idle connection is closed after this long.
    static let idleTimeout = TimeAmount.seconds(60)
    static let connectTimeout = TimeAmount.seconds(2)
    /// One connection attempt; on loopback a connection is made in microseconds unless its SYN
    /// was dropped.
    static let attemptTimeout = TimeAmount.milliseconds(100)
    /// New connections without an answer yet, per model server and event loop.
    static let unansweredLimit = 3
    /// A new connection older than this no longer counts (a slow server has accepted it by then).
    static let unansweredAge = TimeAmount.milliseconds(50)
    /// Connections opened ahead of need, per model server and event loop, for servers that
    /// close theirs after each answer.
    static let spareLimit = 1

    typealias Completion = (Result<UpstreamConnection, any Error>) -> Void

    private struct Waiter {
        /// Wants a new connection (a retry), not an idle one.
        var fresh: Bool
        var completion: Completion
    }

    let eventLoop: any EventLoop
    private var idle: [Int: [UpstreamConnection]] = [:]
    private var unanswered: [Int: [Attempt]] = [:]
    private var waiters: [Int: [Waiter]] = [:]
    private var waiterChecks: [Int: Scheduled<Void>] = [:]
    /// Spares being opened, by port: a request may wait for one instead of opening another.
    private var sparesOpening: [Int: [Attempt]] = [:]
    private var addresses: [Int: SocketAddress] = [:]
    private var sweep: Scheduled<Void>?
    private var closed = false
    private let bootstrap: ClientBootstrap

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
        bootstrap = ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
    }

    /// A connection to `port` for one exchange: an idle one at once (unless `fresh`), else a new
    /// one when the limit allows, else the first to become available.
    func acquire(port: Int, fresh: Bool, _ completion: @escaping Completion) {
        eventLoop.preconditionInEventLoop()
        if !fresh, waiters[port] == nil, let connection = takeIdle(port: port) {
            completion(.success(connection))
            return
        }
        waiters[port, default: []].append(Waiter(fresh: fresh, completion: completion))
        serveWaiters(port: port)
        if waiters[port] != nil { scheduleWaiterCheck(port: port) }
    }

    /// Opens a connection to `port` for the next request, unless one is idle or the limit is
    /// reached: a model server that closes its connection after each answer (HTTP/1.0,
    /// `Connection: close`) then accepts the next one while the answer travels back, not while a
    /// request waits.
    func prepareSpare(port: Int) {
        guard !closed, (idle[port]?.count ?? 0) < Self.spareLimit, unansweredCount(port: port) < Self.unansweredLimit,
              waiters[port]?.isEmpty ?? true else { return }
        let attempt = open(port: port) { result in
            self.sparesOpening[port]?.removeAll { $0.done || $0.openedAt <= NIODeadline.now() - Self.unansweredAge }
            if self.sparesOpening[port]?.isEmpty == true { self.sparesOpening[port] = nil }
            switch result {
            case .success(let connection):
                self.release(connection)
            case .failure:
                // A server that is gone or refuses is noticed by the next request.
                self.serveWaiters(port: port)
            }
        }
        sparesOpening[port, default: []].append(attempt)
    }

    /// Takes back a connection whose exchange ended cleanly (whole request sent, whole response
    /// read, keep-alive); closes it when the pool is full or closed.
    func release(_ connection: UpstreamConnection) {
        connection.delegate = nil
        connection.served += 1
        connection.holdReads(false)
        guard !closed, connection.isActive, (idle[connection.port]?.count ?? 0) < Self.idleLimit else {
            connection.close()
            return
        }
        connection.idleSince = .now()
        idle[connection.port, default: []].append(connection)
        scheduleSweep()
        serveWaiters(port: connection.port)
    }

    /// A connection that closed while idle.
    func remove(_ connection: UpstreamConnection) {
        guard var list = idle[connection.port], let i = list.firstIndex(where: { $0 === connection }) else { return }
        list.remove(at: i)
        idle[connection.port] = list.isEmpty ? nil : list
    }

    /// A new connection got its first answer, or closed without one: it no longer counts.
    func answered(_ attempt: Attempt, port: Int) {
        settle(attempt, port: port)
        serveWaiters(port: port)
    }

    /// Closes every idle connection, and those released later (the gateway stopped).
    func closeAll() {
        closed = true
        sweep?.cancel()
        for check in waiterChecks.values { check.cancel() }
        waiterChecks = [:]
        let all = idle.values.joined()
        idle = [:]
        for connection in all { connection.close() }
    }

    private func takeIdle(port: Int) -> UpstreamConnection? {
        while let connection = idle[port]?.popLast() {
            if connection.isActive { return connection }
        }
        return nil
    }

    @discardableResult
    private func open(port: Int, _ completion: @escaping Completion) -> Attempt {
        let attempt = Attempt()
        unanswered[port, default: []].append(attempt)
        connect(port: port) { result in
            attempt.done = true
            switch result {
            case .success(let connection):
                connection.pool = self
                connection.attempt = attempt.counted ? attempt : nil
                completion(.success(connection))
            case .failure:
                self.settle(attempt, port: port)
                completion(result)
                self.serveWaiters(port: port)
            }
        }
        return attempt
    }

    private func settle(_ attempt: Attempt, port: Int) {
        guard attempt.counted else { return }
        attempt.counted = false
        guard var list = unanswered[port], let i = list.firstIndex(where: { $0 === attempt }) else { return }
        list.remove(at: i)
        unanswered[port] = list.isEmpty ? nil : list
    }

    /// The new connections to `port` that still count; older ones are let go.
    private func unansweredCount(port: Int) -> Int {
        guard var list = unanswered[port] else { return 0 }
        let limit = NIODeadline.now() - Self.unansweredAge
        if let first = list.first, first.openedAt < limit {
            list.removeAll { attempt in
                guard attempt.openedAt < limit else { return false }
                attempt.counted = false
                return true
            }
            unanswered[port] = list.isEmpty ? nil : list
        }
        return list.count
    }

    /// While requests wait, looks again when the oldest new connection stops counting.
    private func scheduleWaiterCheck(port: Int) {
        guard waiterChecks[port] == nil, let oldest = unanswered[port]?.first else { return }
        waiterChecks[port] = eventLoop.assumeIsolated().scheduleTask(deadline: oldest.openedAt + Self.unansweredAge) { [weak self] in
            guard let self else { return }
            self.waiterChecks[port] = nil
            self.serveWaiters(port: port)
            if self.waiters[port] != nil { self.scheduleWaiterCheck(port: port) }
        }
    }

    /// Hands idle connections, or new ones as the limit allows, to the waiting requests in order.
    private func serveWaiters(port: Int) {
        guard var list = waiters[port] else { return }
        // As many waiters as spares were opened in the last moments wait for them (they come in
        // microseconds), rather than open one more connection each.
        let recent = NIODeadline.now() - Self.unansweredAge
        var reserved = sparesOpening[port]?.count { !$0.done && $0.openedAt > recent } ?? 0
        var index = 0
        while index < list.count {
            let waiter = list[index]
            if !waiter.fresh, let connection = takeIdle(port: port) {
                list.remove(at: index)
                waiters[port] = list.isEmpty ? nil : list
                waiter.completion(.success(connection))
                guard let current = waiters[port] else { return }
                list = current
            } else if !waiter.fresh, reserved > 0 {
                reserved -= 1
                index += 1
            } else if unansweredCount(port: port) < Self.unansweredLimit {
                list.remove(at: index)
                waiters[port] = list.isEmpty ? nil : list
                open(port: port, waiter.completion)
                guard let current = waiters[port] else { return }
                list = current
            } else {
                return
            }
        }
    }

    /// Opens a connection to `127.0.0.1:port` on this loop.
    private func connect(port: Int, _ completion: @escaping Completion) {
        let address: SocketAddress
        if let known = addresses[port] {
            address = known
        } else {
            do {
                address = try SocketAddress(ipAddress: "127.0.0.1", port: port)
            } catch {
                return completion(.failure(error))
            }
            addresses[port] = address
        }
        let bootstrap = self.bootstrap.channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHTTPClientHandlers(
                    leftOverBytesStrategy: .fireError, enableOutboundHeaderValidation: false)
                try channel.pipeline.syncOperations.addHandler(UpstreamConnection(port: port))
            }
        }
        attempt(bootstrap, address, until: .now() + Self.connectTimeout, completion)
    }

    /// One connection attempt of at most `attemptTimeout`, again until `deadline`: on loopback a
    /// connection is made at once unless the server's accept queue was full and the SYN dropped,
    /// which the kernel would only send again a second later.
    private func attempt(_ bootstrap: ClientBootstrap, _ address: SocketAddress, until deadline: NIODeadline, _ completion: @escaping Completion) {
        let timeout = min(Self.attemptTimeout, max(.milliseconds(1), deadline - .now()))
        bootstrap.connectTimeout(timeout).connect(to: address).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let channel):
                completion(Result { try channel.pipeline.syncOperations.handler(type: UpstreamConnection.self) })
            case .failure(ChannelError.connectTimeout) where NIODeadline.now() < deadline && !self.closed:
                self.attempt(bootstrap, address, until: deadline, completion)
            case .failure(let error):
                completion(.failure(error))
            }
        }
    }

    /// Closes the connections idle for longer than `idleTimeout`, every 10 s while any is idle.
    private func scheduleSweep() {
        guard sweep == nil else { return }
        sweep = eventLoop.assumeIsolated().scheduleTask(in: .seconds(10)) { [weak self] in
            guard let self else { return }
            self.sweep = nil
            let limit = NIODeadline.now() - Self.idleTimeout
            for (port, list) in self.idle {
                let (old, fresh) = (list.filter { $0.idleSince < limit }, list.filter { $0.idleSince >= limit })
                self.idle[port] = fresh.isEmpty ? nil : fresh
                for connection in old { connection.close() }
            }
            if !self.idle.isEmpty { self.scheduleSweep() }
        }
    }
}

/// A connection being opened, or opened and not answered yet.
final class Attempt {
    let openedAt = NIODeadline.now()
    /// Still counts against `UpstreamPool.unansweredLimit`.
    var counted = true
    /// Connected, or failed to.
    var done = false
}

/// One `UpstreamPool` per event loop.
final class UpstreamPools: Sendable {
    private let pools = Mutex<[ObjectIdentifier: NIOLoopBound<UpstreamPool>]>([:])

    /// The pool of `eventLoop`; call it on that loop.
    func pool(for eventLoop: any EventLoop) -> UpstreamPool {
        let bound = pools.withLock { pools in
            let key = ObjectIdentifier(eventLoop)
            if let pool = pools[key] { return pool }
            let pool = NIOLoopBound(UpstreamPool(eventLoop: eventLoop), eventLoop: eventLoop)
            pools[key] = pool
            return pool
        }
        return bound.value
    }

    /// Closes every idle connection of every pool (the gateway stopped).
    func closeAll() {
        let all = pools.withLock { Array($0.values) }
        for bound in all {
            bound.eventLoop.execute { bound.value.closeAll() }
        }
    }
}
