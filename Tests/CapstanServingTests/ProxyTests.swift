import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing
@testable import CapstanServing
@testable import CapstanTestSupport

/// The gateway's proxy alone (no agent), against HTTP servers on 127.0.0.1 that misbehave on
/// purpose: connection reuse, stale pooled connections, a crash in the middle of an answer, a
/// client that reads slowly or goes away, pipelining, timeouts.
@Suite struct ProxyTests {
    @Test func sequentialRequestsReuseOneUpstreamConnection() async throws {
        let upstream = try await TestUpstream.start(.echo)
        try await withGateway(upstream) { url, backend in
            // One client connection: one gateway thread, one pool.
            try await RawClient.withConnection(to: url) { send in
                for i in 0..<5 {
                    let answer = try await send("GET /d/item/\(i)?q=\(i) HTTP/1.1\r\nHost: gw\r\n\r\n")
                    #expect(answer.status == 200)
                    #expect(answer.headers["x-capstan-version"] == "3")
                    #expect(answer.body.contains("conn=0 n=\(i + 1) "), "\(answer.body)")
                    #expect(answer.body.contains("path=/item/\(i)?q=\(i) "), "\(answer.body)")
                    #expect(answer.body.contains("host=127.0.0.1:\(upstream.port)"), "\(answer.body)")
                }
            }
            #expect(upstream.accepted.load(ordering: .relaxed) == 1)
            #expect(backend.counters.snapshot.requests == 5)
        }
    }

    @Test func aPooledConnectionClosedByTheServerIsRetriedOnlyWhenSafe() async throws {
        // The server drops a connection when it receives its second request, as a server that
        // closed an idle connection just as the gateway reused it.
        let upstream = try await TestUpstream.start(.hangupOnReuse)
        try await withGateway(upstream) { url, backend in
            try await RawClient.withConnection(to: url) { send in
                let first = try await send("GET /d/a HTTP/1.1\r\nHost: gw\r\n\r\n")
                #expect(first.body.contains("conn=0 n=1 "), "\(first.body)")
                // Idempotent: sent again on a new connection.
                let second = try await send("GET /d/b HTTP/1.1\r\nHost: gw\r\n\r\n")
                #expect(second.status == 200)
                #expect(second.body.contains(" n=1 "), "a new connection answered: \(second.body)")
                #expect(upstream.accepted.load(ordering: .relaxed) >= 2)
                #expect(backend.counters.snapshot.connectionErrors == 0)
                // A POST was sent whole on the reused connection: the server may have acted on it, so no retry.
                let third = try await send("POST /d/c HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\n{}")
                #expect(third.status == 502)
                // The server's hang-up reaches the gateway as a FIN or, when data was still unread, a reset.
                #expect(third.body.contains("did not answer: connection closed before a response")
                        || third.body.contains("did not answer: connection reset"), "\(third.body)")
                #expect(third.headers["x-capstan-version"] == "3")
            }
            let stats = backend.counters.snapshot
            #expect(stats.requests == 3)
            #expect(stats.connectionErrors == 1)
        }
    }

    @Test func aServerThatDiesInTheMiddleOfAnAnswerClosesTheClientConnection() async throws {
        let upstream = try await TestUpstream.start(.crashMidResponse)
        try await withGateway(upstream) { url, backend in
            var request = HTTPClientRequest(url: url + "/d/x")
            request.method = .GET
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
            #expect(response.status == .ok)
            await #expect(throws: (any Error).self) { _ = try await response.body.collect(upTo: 1 << 20) }
            let stats = backend.counters.snapshot
            #expect(stats.requests == 1)
            #expect(stats.connectionErrors == 1)
            #expect(backend.replicas[0].inFlight.load(ordering: .relaxed) == 0)
        }
    }

    @Test func aSlowReaderHoldsBackTheModelServer() async throws {
        let size = 128 << 20
        let upstream = try await TestUpstream.start(.big(size))
        try await withGateway(upstream) { url, _ in
            let port = Int(url.split(separator: ":").last!)!
            let client = try await RawClient.connect(port: port)
            try await client.executeThenClose { inbound, outbound in
                try await outbound.write(ByteBuffer(string: "GET /d/big HTTP/1.1\r\nHost: gw\r\n\r\n"))
                // Nothing is read: the server gets only as far as the buffers on the way allow.
                var last = -1
                var stable = 0
                for _ in 0..<200 where stable < 5 {
                    try await Task.sleep(for: .milliseconds(100))
                    let sent = upstream.bodyBytesSent.load(ordering: .relaxed)
                    stable = sent == last ? stable + 1 : 0
                    last = sent
                }
                #expect(last > 0)
                #expect(last < size / 3, "the model server sent \(last) of \(size) bytes to a client that reads nothing")
                // Then everything arrives.
                var received = 0
                var headerDone = false
                var pending = ByteBuffer()
                for try await var chunk in inbound {
                    if headerDone {
                        received += chunk.readableBytes
                    } else {
                        pending.writeBuffer(&chunk)
                        let text = String(buffer: pending)
                        if let end = text.range(of: "\r\n\r\n") {
                            headerDone = true
                            #expect(text.hasPrefix("HTTP/1.1 200"))
                            received = text.utf8.count - text.utf8.distance(from: text.startIndex, to: end.upperBound)
                        }
                    }
                    if received >= size { break }
                }
                #expect(received == size)
            }
        }
    }

    @Test func requestsBeyondTheNewConnectionLimitWaitTheirTurn() async throws {
        // Each answer takes 20 ms: most of 24 requests at once find the limit of new connections
        // reached, and wait for a connection to be answered or to age.
        let upstream = try await TestUpstream.start(.delayedEcho)
        try await withGateway(upstream) { url, backend in
            let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
                for i in 0..<24 { group.addTask { try await HTTP.get(url + "/d/n/\(i)").status } }
                return try await group.reduce(into: [Int]()) { $0.append($1) }
            }
            #expect(statuses == Array(repeating: 200, count: 24))
            #expect(backend.counters.snapshot.requests == 24)
            #expect(backend.replicas[0].inFlight.load(ordering: .relaxed) == 0)
        }
    }

    @Test func pipelinedRequestsAreAnsweredInOrder() async throws {
        let upstream = try await TestUpstream.start(.echo)
        try await withGateway(upstream) { url, backend in
            let port = Int(url.split(separator: ":").last!)!
            let client = try await RawClient.connect(port: port)
            let text = try await client.executeThenClose { inbound, outbound in
                try await outbound.write(ByteBuffer(string: "GET /d/one HTTP/1.1\r\nHost: gw\r\n\r\n"
                    + "POST /d/two HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nhello"
                    + "GET /nope/three HTTP/1.1\r\nHost: gw\r\n\r\n"
                    + "GET /d/four HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"))
                var all = ByteBuffer()
                for try await var chunk in inbound { all.writeBuffer(&chunk) }
                return String(buffer: all)
            }
            let one = try #require(text.range(of: "path=/one "))
            let two = try #require(text.range(of: "path=/two body=hello"))
            let three = try #require(text.range(of: "unknown deployment nope"))
            let four = try #require(text.range(of: "path=/four "))
            #expect(one.lowerBound < two.lowerBound && two.lowerBound < three.lowerBound && three.lowerBound < four.lowerBound)
            #expect(text.components(separatedBy: "HTTP/1.1 200 OK").count == 4)
            #expect(text.contains("HTTP/1.1 404 Not Found"))
            #expect(backend.counters.snapshot.requests == 3)
        }
    }

    @Test func aClientThatGoesAwayMidRequestClosesTheUpstreamConnection() async throws {
        let upstream = try await TestUpstream.start(.echo)
        try await withGateway(upstream) { url, backend in
            let port = Int(url.split(separator: ":").last!)!
            let client = try await RawClient.connect(port: port)
            try await client.executeThenClose { _, outbound in
                try await outbound.write(ByteBuffer(string: "POST /d/upload HTTP/1.1\r\nHost: gw\r\nContent-Length: 1000000\r\n\r\n0123456789"))
                await eventually("the upload reached the model server") { upstream.bodyBytesReceived.load(ordering: .relaxed) == 10 }
            }
            await eventually("the upstream connection is closed") { upstream.closed.load(ordering: .relaxed) == 1 }
            #expect(backend.replicas[0].inFlight.load(ordering: .relaxed) == 0)
            // The gateway goes on serving.
            #expect(try await HTTP.get(url + "/d/after").status == 200)
        }
    }

    @Test func noAnswerIs502AfterTheTimeoutAndARefusedConnectionAtOnce() async throws {
        let silent = try await TestUpstream.start(.silent)
        try await withGateway(silent, timeout: .milliseconds(300)) { url, backend in
            let answer = try await HTTP.post(url + "/d/predict")
            #expect(answer.status == 502)
            #expect(answer.error?.contains("did not answer: timed out") == true, "\(answer.body)")
            #expect(backend.counters.snapshot.connectionErrors == 1)
            #expect(backend.counters.snapshot.latency.total == 0)
        }
        let gone = try await TestUpstream.start(.echo)
        await gone.stop()
        try await withGateway(gone) { url, backend in
            let answer = try await HTTP.get(url + "/d/predict")
            #expect(answer.status == 502)
            #expect(answer.error == "the model server of d v3 (127.0.0.1:\(gone.port)) did not answer: connection refused")
            #expect(answer.headers["X-Capstan-Version"] == ["3"])
            #expect(backend.counters.snapshot.requests == 1)
            #expect(backend.counters.snapshot.connectionErrors == 1)
        }
    }

    // MARK: Requests the gateway answers itself, each complete and, when it must, closing.

    @Test(arguments: [
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\nSSH-2.0-tunnel-data\r\n",
        "CONNECT /d/x HTTP/1.0\r\n\r\n",
    ])
    func connectIsAComplete405AndTheConnectionCloses(_ request: String) async throws {
        let upstream = try await TestUpstream.start(.echo)
        try await withGateway(upstream) { url, backend in
            let port = Int(url.split(separator: ":").last!)!
            let answer = await RawSocket.exchange(port: port, request, more: "GET /d/after HTTP/1.1\r\nHost: gw\r\n\r\n")
            #expect(answer.closed, "the connection was left open: \(answer.text)")
            #expect(answer.status == 405, "\(answer.text)")
            #expect(answer.headers["allow"] == [ProxyHeaders.allowedMethods])
            #expect(answer.headers["connection"] == ["close"])
            #expect(answer.headers["content-type"] == ["application/json"])
            let body = answer.body
            #expect(answer.headers["content-length"] == ["\(body.utf8.count)"], "\(answer.text)")
            let json = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: String], "\(body)")
            #expect(json["error"]?.contains("makes no tunnels; use GET, HEAD, POST") == true, "\(body)")
            #expect(!answer.text.contains("conn="), "nothing reached the model server: \(answer.text)")
            #expect(upstream.accepted.load(ordering: .relaxed) == 0)
            #expect(backend.counters.snapshot.requests == 0)
        }
    }

    @Test func anAbsoluteFormTargetIsRoutedByItsPath() async throws {
        let upstream = try await TestUpstream.start(.echo)
        try await withGateway(upstream) { url, _ in
            try await RawClient.withConnection(to: url) { send in
                let answer = try await send("GET http://gw.example:8080/d/item?q=1 HTTP/1.1\r\nHost: gw.example:8080\r\n\r\n")
                #expect(answer.status == 200)
                #expect(answer.body.contains("path=/item?q=1 "), "\(answer.body)")
                #expect(answer.body.contains("host=127.0.0.1:\(upstream.port)"), "\(answer.body)")
                let root = try await send("GET HTTPS://gw.example/d HTTP/1.1\r\nHost: gw.example\r\n\r\n")
                #expect(root.body.contains("path=/ "), "\(root.body)")
                let none = try await send("GET http://gw.example HTTP/1.1\r\nHost: gw.example\r\n\r\n")
                #expect(none.status == 404)
            }
        }
    }

    @Test func anAnswerWithout100ContinueClosesTheConnection() async throws {
        // The client waits for 100 Continue before its body; refused at once, it may never send
        // it: the gateway must not read its next request as that body.
        let upstream = try await TestUpstream.start(.echo)
        try await withGateway(upstream) { url, _ in
            let port = Int(url.split(separator: ":").last!)!
            let answer = await RawSocket.exchange(port: port, "POST /nope/predict HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            #expect(answer.closed, "the connection was left waiting for a body: \(answer.text)")
            #expect(answer.status == 404, "\(answer.text)")
            #expect(answer.headers["connection"] == ["close"])
            #expect(!answer.text.contains("100 Continue"))
            // With a backend: 100 Continue, then the answer, and the connection stays.
            try await RawClient.withConnection(to: url) { send in
                let first = try await send("POST /d/x HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}")
                #expect(first.status == 100 || first.status == 200, "\(first)")
            }
        }
    }

    @Test func http10ClosesUnlessAskedToKeepAlive() async throws {
        let upstream = try await TestUpstream.start(.echo)
        try await withGateway(upstream) { url, _ in
            let port = Int(url.split(separator: ":").last!)!
            for request in ["GET /d/a HTTP/1.0\r\n\r\n", "GET /nope/a HTTP/1.0\r\n\r\n"] {
                let answer = await RawSocket.exchange(port: port, request)
                #expect(answer.closed, "\(request): \(answer.text)")
                #expect(answer.text.hasPrefix("HTTP/1.0 "), "\(answer.text)")
                #expect(answer.headers["connection"] == nil, "\(answer.text)")
            }
            try await RawClient.withConnection(to: url) { send in
                for i in 0..<2 {
                    let answer = try await send("GET /d/k\(i) HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                    #expect(answer.status == 200)
                    #expect(answer.headers["connection"] == "keep-alive", "\(answer.headers)")
                }
            }
        }
    }

    @Test func anOversizedHostIsRefusedAndClosed() async throws {
        let upstream = try await TestUpstream.start(.echo)
        try await withGateway(upstream) { url, _ in
            let port = Int(url.split(separator: ":").last!)!
            let answer = await RawSocket.exchange(port: port, "GET /d/a HTTP/1.1\r\nHost: " + String(repeating: "h", count: 100_000) + "\r\n\r\n")
            #expect(answer.closed, "\(answer.text.prefix(300))")
            #expect(answer.status == 400, "\(answer.text.prefix(300))")
            #expect(upstream.accepted.load(ordering: .relaxed) == 0)
        }
    }

    @Test(arguments: [
        ("/churn/predict", "churn", "/predict"),
        ("/churn", "churn", "/"),
        ("/churn?x=1", "churn", "/?x=1"),
        ("/churn/a%20b/?q=1&r=2", "churn", "/a%20b/?q=1&r=2"),
        ("/churn/", "churn", "/"),
    ])
    func requestTargetsSplitIntoDeploymentAndUpstreamTarget(_ uri: String, _ deployment: String, _ target: String) throws {
        let split = try #require(ProxyHeaders.split(target: uri))
        #expect(split.deployment == deployment)
        #expect(split.upstreamTarget == target)
    }

    @Test(arguments: ["/", "//x", "*", "http://example.com/a", ""])
    func targetsWithoutADeploymentAreRefused(_ uri: String) {
        #expect(ProxyHeaders.split(target: uri) == nil)
    }

    @Test(arguments: [
        ("http://gw/d/x?q=1", "/d/x?q=1"), ("HTTP://gw:80/d", "/d"), ("https://gw?x", "/?x"), ("http://gw", "/"),
        ("/d/http://x", "/d/http://x"), ("*", "*"), ("example.com:443", "example.com:443"), ("ftp://gw/d", "ftp://gw/d"),
    ])
    func absoluteFormTargetsBecomeOriginForm(_ uri: String, _ origin: String) {
        #expect(ProxyHeaders.originForm(uri) == origin)
    }

    @Test func hopByHopHeadersStayOnTheirSide() {
        var headers = HTTPHeaders()
        for (name, value) in [("Host", "gw"), ("Connection", "keep-alive, X-Private"), ("X-Private", "1"), ("Keep-Alive", "timeout=5"),
                              ("TE", "trailers"), ("Trailer", "X"), ("Upgrade", "h2c"), ("Proxy-Authorization", "x"),
                              ("Proxy-Connection", "x"), ("Expect", "100-continue"), ("Transfer-Encoding", "chunked"),
                              ("X-Kept", "yes"), ("Content-Type", "text/plain")] {
            headers.add(name: name, value: value)
        }
        let request = ProxyHeaders.upstreamRequest(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/d/x", headers: headers),
                                                   target: "/x", authority: "127.0.0.1:9")
        #expect(request.headers.map(\.name) == ["Host", "X-Kept", "Content-Type", "Transfer-Encoding"])
        #expect(request.headers["Host"] == ["127.0.0.1:9"])
        #expect(request.headers["Transfer-Encoding"] == ["chunked"])
        #expect(request.uri == "/x")

        var keepAlive = true
        let response = ProxyHeaders.clientResponse(HTTPResponseHead(version: .http1_0, status: .ok, headers: headers),
                                                   version: .http1_1, capstanVersion: "7", keepAlive: &keepAlive)
        #expect(response.headers.map(\.name) == ["X-Kept", "Content-Type", "X-Capstan-Version"])
        #expect(keepAlive)
        var closing = true
        let old = ProxyHeaders.clientResponse(HTTPResponseHead(version: .http1_0, status: .ok), version: .http1_0, capstanVersion: "7",
                                              keepAlive: &closing)
        #expect(!closing, "an HTTP/1.0 client can only learn the end of an answer of unknown length by the close")
        #expect(old.headers["Connection"] == [])
    }

    /// A model server's own X-Capstan-Version never reaches the client beside the gateway's (found
    /// by scripts/fuzz.sh; Tests/CapstanFuzzTests/Regressions/gateway-head).
    @Test func theModelServersVersionHeaderIsReplaced() {
        var keepAlive = true
        let response = ProxyHeaders.clientResponse(HTTPResponseHead(version: .http1_1, status: .ok, headers: ["x-capstan-version": "99", "X-Kept": "1"]),
                                                   version: .http1_1, capstanVersion: "7", keepAlive: &keepAlive)
        #expect(response.headers["X-Capstan-Version"] == ["7"])
        #expect(response.headers["X-Kept"] == ["1"])
    }
}

/// A gateway with one deployment `d` of one backend (version 3) over `upstream`, for `body`.
private func withGateway(_ upstream: TestUpstream, timeout: TimeAmount = .seconds(30),
                         _ body: (String, RouteBackend) async throws -> Void) async throws {
    let routes = RoutingTable()
    let backend = RouteBackend(version: 3, weight: 100, counters: BackendCounters(), replicas: [ReplicaTarget(port: upstream.port)])
    routes.set(EndpointRoute(deployment: "d", backends: [backend]))
    let gateway = Gateway(routes: routes, upstreamTimeout: timeout)
    let server = try await gateway.bind(host: "127.0.0.1", port: 0)
    let result: Result<Void, any Error>
    do {
        try await body("http://127.0.0.1:\(server.localAddress?.port ?? 0)", backend)
        result = .success(())
    } catch {
        result = .failure(error)
    }
    try? await server.close()
    gateway.closeAll()
    await upstream.stop()
    try result.get()
}

/// One answer read off a raw connection (`Content-Length` bodies only); header names lowercased.
struct RawAnswer {
    var status: Int
    var headers: [String: String]
    var body: String
}

enum RawClient {
    /// One connection to `url`'s port; `body` sends requests on it one at a time.
    static func withConnection(to url: String, _ body: (_ send: (String) async throws -> RawAnswer) async throws -> Void) async throws {
        let client = try await connect(port: Int(url.split(separator: ":").last!)!)
        try await client.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            var pending = ByteBuffer()
            func send(_ request: String) async throws -> RawAnswer {
                try await outbound.write(ByteBuffer(string: request))
                while true {
                    let text = String(buffer: pending)
                    if let end = text.range(of: "\r\n\r\n") {
                        let lines = text[..<end.lowerBound].components(separatedBy: "\r\n")
                        var headers: [String: String] = [:]
                        for line in lines.dropFirst() {
                            guard let colon = line.firstIndex(of: ":") else { continue }
                            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                        }
                        let length = Int(headers["content-length"] ?? "0") ?? 0
                        let headLength = text.utf8.distance(from: text.startIndex, to: end.upperBound)
                        if pending.readableBytes >= headLength + length {
                            pending.moveReaderIndex(forwardBy: headLength)
                            let body = pending.readString(length: length) ?? ""
                            pending.discardReadBytes()
                            let status = Int(lines[0].split(separator: " ").dropFirst().first ?? "") ?? 0
                            return RawAnswer(status: status, headers: headers, body: body)
                        }
                    }
                    guard var more = try await iterator.next() else { throw ChannelError.eof }
                    pending.writeBuffer(&more)
                }
            }
            try await body(send)
        }
    }


    static func connect(port: Int) async throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: port) { channel in
            channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
        }
    }
}

/// An HTTP/1.1 server on 127.0.0.1 with one behaviour:
///
/// - `echo`: 200 `conn=<i> n=<k> method=<m> path=<p> body=<b> host=<h>` (connection i, its k-th request), keep-alive;
/// - `delayedEcho`: the same, 20 ms later;
/// - `hangupOnReuse`: like echo, but closes a connection on its second request, unanswered;
/// - `crashMidResponse`: announces 100000 bytes, sends 1000, closes;
/// - `big(n)`: sends n bytes as fast as the connection takes them (counted in `bodyBytesSent`);
/// - `silent`: never answers.
final class TestUpstream: Sendable {
    enum Mode: Sendable {
        case echo, delayedEcho, hangupOnReuse, crashMidResponse, big(Int), silent
    }

    let mode: Mode
    let accepted = Atomic<Int>(0)
    let closed = Atomic<Int>(0)
    let bodyBytesSent = Atomic<Int>(0)
    let bodyBytesReceived = Atomic<Int>(0)
    private let server = Mutex<(any Channel)?>(nil)
    private let boundPort = Atomic<Int>(0)

    var port: Int { boundPort.load(ordering: .relaxed) }

    private init(mode: Mode) {
        self.mode = mode
    }

    static func start(_ mode: Mode) async throws -> TestUpstream {
        let upstream = TestUpstream(mode: mode)
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let id = upstream.accepted.wrappingAdd(1, ordering: .relaxed).oldValue
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(TestUpstreamHandler(upstream: upstream, connection: id))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        upstream.server.withLock { $0 = channel }
        upstream.boundPort.store(channel.localAddress?.port ?? 0, ordering: .relaxed)
        return upstream
    }

    func stop() async {
        let channel = server.withLock { server -> (any Channel)? in
            defer { server = nil }
            return server
        }
        try? await channel?.close()
    }
}

private final class TestUpstreamHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let upstream: TestUpstream
    let connection: Int
    var requests = 0
    var head: HTTPRequestHead?
    var body = ""
    var remaining = 0
    var writing = false

    init(upstream: TestUpstream, connection: Int) {
        self.upstream = upstream
        self.connection = connection
    }

    func channelInactive(context: ChannelHandlerContext) {
        upstream.closed.wrappingAdd(1, ordering: .relaxed)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            body = ""
            requests += 1
            if case .hangupOnReuse = upstream.mode, requests >= 2 { context.close(promise: nil) }
        case .body(let buffer):
            upstream.bodyBytesReceived.wrappingAdd(buffer.readableBytes, ordering: .relaxed)
            body += String(buffer: buffer)
        case .end:
            respond(context: context)
        }
    }

    private func respond(context: ChannelHandlerContext) {
        guard let head else { return }
        switch upstream.mode {
        case .delayedEcho:
            context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(20)) { self.echo(head, context: context) }
        case .echo, .hangupOnReuse:
            echo(head, context: context)
        case .crashMidResponse:
            var headers = HTTPHeaders()
            headers.add(name: "Content-Length", value: "100000")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(repeating: 65, count: 1000)))), promise: nil)
            context.close(promise: nil)
        case .big(let size):
            var headers = HTTPHeaders()
            headers.add(name: "Content-Length", value: String(size))
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
            remaining = size
            writeMore(context: context)
        case .silent:
            break
        }
    }

    private func echo(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let text = "conn=\(connection) n=\(requests) method=\(head.method.rawValue) path=\(head.uri) body=\(body) host=\(head.headers["Host"].first ?? "")"
        var headers = HTTPHeaders()
        headers.add(name: "Content-Length", value: String(text.utf8.count))
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .ok, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: text)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { writeMore(context: context) }
        context.fireChannelWritabilityChanged()
    }

    /// Writes the big body while the connection takes it (a write may call it again, from
    /// `channelWritabilityChanged`: that call does nothing).
    private func writeMore(context: ChannelHandlerContext) {
        guard remaining > 0, !writing else { return }
        writing = true
        defer { writing = false }
        let upstream = self.upstream
        while remaining > 0, context.channel.isWritable {
            let n = min(remaining, 64 << 10)
            remaining -= n
            let promise = context.eventLoop.makePromise(of: Void.self)
            promise.futureResult.whenSuccess { upstream.bodyBytesSent.wrappingAdd(n, ordering: .relaxed) }
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(repeating: 66, count: n)))), promise: promise)
        }
        if remaining == 0 { context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil) }
    }
}
