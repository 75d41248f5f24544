import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The gateway: an HTTP/1.1 reverse proxy on SwiftNIO from `/<deployment>/<rest>` to
/// `http://127.0.0.1:PORT/<rest>` of one ready replica of a backend chosen by weight
/// (docs/serving.md, "The gateway").
///
/// Each client connection is served by a `ProxyHandler` on its event loop, with upstream
/// connections of the same loop (`UpstreamPool`): a request never changes threads, and takes no
/// lock but the routing snapshot's and the backend counters'.
final class Gateway: Sendable {
    let routes: RoutingTable
    /// How long the model server may take to send the response head (502 after), and pause
    /// between two reads of the body.
    let upstreamTimeout: TimeAmount
    let group: any EventLoopGroup
    let pools = UpstreamPools()

    private struct Connections {
        var open: [ObjectIdentifier: any Channel] = [:]
        var quiescing = false
    }

    private let connections = Mutex(Connections())

    /// `group` defaults to NIO's shared loops (one thread per core), those of the admin API and
    /// the readiness probes too.
    init(routes: RoutingTable, upstreamTimeout: TimeAmount, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.routes = routes
        self.upstreamTimeout = upstreamTimeout
        self.group = group
    }

    /// Listens on `host:port`; returns the listening channel.
    func bind(host: String, port: Int) async throws -> any Channel {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.configureHTTPServerPipeline(withPipeliningAssistance: true, withErrorHandling: true,
                                                         withOutboundHeaderValidation: false)
                    try sync.addHandler(ProxyHandler(routes: routes, pool: pools.pool(for: channel.eventLoop), upstreamTimeout: upstreamTimeout))
                    track(channel)
                }
            }
        return try await bootstrap.bind(host: host, port: port).get()
    }

    private func track(_ channel: any Channel) {
        let key = ObjectIdentifier(channel)
        let quiescing = connections.withLock { connections in
            connections.open[key] = channel
            return connections.quiescing
        }
        channel.closeFuture.whenComplete { [self] _ in
            _ = connections.withLock { $0.open.removeValue(forKey: key) }
        }
        if quiescing {
            channel.eventLoop.execute { channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
        }
    }

    /// Closes each client connection once its request in flight is answered (idle ones at once),
    /// and returns when all are closed.
    func quiesce() async {
        let open = connections.withLock { connections in
            connections.quiescing = true
            return Array(connections.open.values)
        }
        for channel in open { channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
        for channel in open { try? await channel.closeFuture.get() }
        while let late = connections.withLock({ $0.open.values.first }) {
            try? await late.closeFuture.get()
        }
    }

    /// Closes every client connection now, and the idle upstream connections.
    func closeAll() {
        let open = connections.withLock { connections in
            connections.quiescing = true
            return Array(connections.open.values)
        }
        for channel in open { channel.close(promise: nil) }
        pools.closeAll()
    }
}

/// The gateway as a service of the agent: listens, serves, and on graceful shutdown stops
/// listening and lets the requests in flight finish (the service group cancels it past its
/// timeout, which closes every connection).
struct GatewayService: Service {
    let gateway: Gateway
    let address: ListenAddress
    /// Called with the address as bound.
    let onListening: @Sendable (ListenAddress) -> Void

    func run() async throws {
        let server: any Channel
        do {
            server = try await gateway.bind(host: address.host, port: address.port)
        } catch {
            throw ListenFailure.error(error, role: "gateway", address: address, flag: "--gateway")
        }
        onListening(ListenAddress(boundTo: server.localAddress, otherwise: address))
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                try? await server.closeFuture.get()
            } onGracefulShutdown: {
                server.close(promise: nil)
            }
            await gateway.quiesce()
        } onCancel: {
            server.close(promise: nil)
            gateway.closeAll()
        }
        gateway.closeAll()
    }
}
