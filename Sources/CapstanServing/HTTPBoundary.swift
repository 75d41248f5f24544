import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1

/// Where HTTP/1.1 requests meet Capstan's servers: what every listener answers the same way,
/// before a request reaches its routes (docs/security.md, "Network boundaries").
///
/// - `CONNECT` asks for a tunnel, which no Capstan server makes: a complete `405` with `Allow`,
///   `Content-Length` and `Connection: close`, then the connection closes (what follows the
///   request is tunnel data, not HTTP). It is written below SwiftNIO's response encoder, which
///   frames every answer to CONNECT as a switch to a tunnel (no `Content-Length`, no body) and
///   would leave the client waiting for a body that never ends.
/// - `Expect: 100-continue` gets its `100 Continue` at once, so the client sends the body it
///   holds back and the server reads it whatever it answers: a request answered without reading
///   its body (401, 403, 404) cannot leave the next request to be read as that body.
/// - HTTP/1.0 without `Connection: keep-alive` is closed after its answer, as HTTP/1.0 expects.
public enum HTTPBoundary {
    /// The whole answer to a CONNECT request, as bytes on the wire: 405, `Allow`, a JSON error,
    /// `Content-Length`, `Connection: close`.
    static func tunnelRefusal(version: HTTPVersion, target: String, server: String, allow: String) -> String {
        let shown = target.utf8.count > 200 ? String(target.prefix(200)) + "…" : target
        let body = ProxyHeaders.errorBody("CONNECT \(shown): \(server) makes no tunnels; use \(allow)")
        let line = version.major == 1 && version.minor == 0 ? "HTTP/1.0" : "HTTP/1.1"
        return "\(line) 405 Method Not Allowed\r\nAllow: \(allow)\r\nContent-Type: application/json\r\n"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body
    }

    /// Writes `answer` straight to the socket (below the HTTP encoder of `context`'s pipeline),
    /// then closes the connection.
    static func writeRawAndClose(_ answer: String, context: ChannelHandlerContext) {
        let channel = context.channel
        guard let below = try? context.pipeline.syncOperations.context(handlerType: HTTPResponseEncoder.self) else {
            channel.close(promise: nil)
            return
        }
        below.writeAndFlush(NIOAny(channel.allocator.buffer(string: answer))).assumeIsolated().whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    static func expectsContinue(_ head: HTTPRequestHead) -> Bool {
        head.headers[canonicalForm: "expect"].contains { $0.equalsIgnoringASCIICase("100-continue") }
    }

    /// Hummingbird's HTTP/1.1 server with `RequestBoundaryHandler` in front of its routes; the
    /// 405 to CONNECT names `server` ("the admin API") and `allow`.
    public static func http1(server: String, allow: String) -> HTTPServerBuilder {
        HTTPServerBuilder { responder in
            BoundedHTTP1Channel(base: HTTP1Channel(responder: responder), server: server, allow: allow)
        }
    }
}

/// Hummingbird's HTTP/1.1 child channel, with a `RequestBoundaryHandler` between SwiftNIO's
/// request decoder and Hummingbird's conversion to HTTP types (where the HTTP version and the
/// raw head are still at hand).
struct BoundedHTTP1Channel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value
    let base: HTTP1Channel
    let server: String
    let allow: String

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        base.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let decoder = try channel.pipeline.syncOperations.context(handlerType: ByteToMessageHandler<HTTPRequestDecoder>.self)
            try channel.pipeline.syncOperations.addHandler(RequestBoundaryHandler(server: server, allow: allow),
                                                           position: .after(decoder.handler))
            return value
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

/// See `HTTPBoundary`: refuses CONNECT, answers `Expect: 100-continue`, closes HTTP/1.0.
final class RequestBoundaryHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let server: String
    private let allow: String
    /// After a CONNECT: everything that follows is dropped until the connection closes.
    private var refusing = false

    init(server: String, allow: String) {
        self.server = server
        self.allow = allow
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refusing else { return }
        guard case .head(var head) = unwrapInboundIn(data) else {
            context.fireChannelRead(data)
            return
        }
        if head.method == .CONNECT {
            refusing = true
            HTTPBoundary.writeRawAndClose(HTTPBoundary.tunnelRefusal(version: head.version, target: head.uri, server: server, allow: allow),
                                          context: context)
            return
        }
        if HTTPBoundary.expectsContinue(head) {
            context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
        }
        if head.version.major == 1, head.version.minor == 0, !head.isKeepAlive {
            // Hummingbird closes the connection after answering a request that says so.
            head.headers.replaceOrAdd(name: "Connection", value: "close")
        }
        context.fireChannelRead(wrapInboundOut(.head(head)))
    }
}
