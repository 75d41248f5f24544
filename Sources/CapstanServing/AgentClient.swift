import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import Synchronization

/// The `ServingTarget` of the local serving agent, over its admin API (docs/serving.md).
///
/// It owns an HTTP client: call `shutdown()` when done, or use `AgentClient.with(…)`, which does
/// it for you. (A client dropped without `shutdown()` shuts its connections down in the
/// background instead of crashing.)
///
/// Errors: the agent not reachable (connection refused, timeout, reset) → `.unavailable`; a 4xx
/// answer → `.rejected` with the agent's message; a 5xx answer → `.unavailable` with it.
public final class AgentClient: ServingTarget {
    /// `http://127.0.0.1:7070`, without a trailing slash.
    public let adminURL: String
    private let token: String?
    private let timeout: Duration
    private let client: HTTPClient
    private let isShutDown = Atomic(false)

    public init(adminURL: String, token: String? = nil, timeout: Duration = .seconds(10)) {
        var url = adminURL
        while url.hasSuffix("/") { url.removeLast() }
        self.adminURL = url
        self.token = token
        self.timeout = timeout
        var pool = HTTPClient.Configuration.ConnectionPool(idleTimeout: .seconds(30), concurrentHTTP1ConnectionsPerHostSoftLimit: 4)
        pool.retryConnectionEstablishment = false
        let connect = TimeAmount.milliseconds(max(1, min(timeout.milliseconds, 5000)))
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .disallow, timeout: .init(connect: connect), connectionPool: pool, decompression: .disabled)
        configuration.httpVersion = .http1Only
        client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }

    deinit {
        if !isShutDown.load(ordering: .acquiring) {
            client.shutdown { _ in }
        }
    }

    /// Closes the client's connections. Call it once, when done with the client.
    public func shutdown() async throws {
        guard !isShutDown.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try await client.shutdown()
    }

    /// Runs `body` with a client that is shut down afterwards, whatever happens.
    public static func with<T>(
        adminURL: String, token: String? = nil, timeout: Duration = .seconds(10), _ body: (AgentClient) async throws -> T
    ) async throws -> T {
        let client = AgentClient(adminURL: adminURL, token: token, timeout: timeout)
        let result: Result<T, any Error>
        do {
            result = .success(try await body(client))
        } catch {
            result = .failure(error)
        }
        try? await client.shutdown()
        return try result.get()
    }

    // MARK: ServingTarget

    public func endpoints() async throws -> [EndpointStatus] {
        try await list().endpoints
    }

    public func apply(_ spec: EndpointSpec) async throws {
        _ = try await put(spec)
    }

    /// Removes the endpoint; an endpoint the agent does not know is already removed (no error).
    public func remove(deployment: String) async throws {
        let (status, body) = try await call(.DELETE, "/v1/endpoints/\(Self.escape(deployment))")
        if status == 204 || status == 404 { return }
        throw failure(status, body)
    }

    // MARK: More of the admin API

    /// `GET /v1/endpoints`: every endpoint, with the agent's boot id and start time.
    public func list() async throws -> AgentEndpointList {
        let (status, body) = try await call(.GET, "/v1/endpoints")
        guard status == 200 else { throw failure(status, body) }
        return try decode(AgentEndpointList.self, body)
    }

    /// `GET /v1/endpoints/{deployment}`; nil when the agent has no such endpoint.
    public func endpoint(_ deployment: String) async throws -> EndpointStatus? {
        let (status, body) = try await call(.GET, "/v1/endpoints/\(Self.escape(deployment))")
        if status == 404 { return nil }
        guard status == 200 else { throw failure(status, body) }
        return try decode(EndpointStatus.self, body)
    }

    /// `PUT /v1/endpoints/{deployment}`: applies `spec` and returns the endpoint's status.
    @discardableResult
    public func put(_ spec: EndpointSpec) async throws -> EndpointStatus {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let data = try encoder.encode(spec)
        let (status, body) = try await call(.PUT, "/v1/endpoints/\(Self.escape(spec.deployment))", body: data)
        guard status == 200 else { throw failure(status, body) }
        return try decode(EndpointStatus.self, body)
    }

    // MARK: Calls

    private func call(_ method: HTTPMethod, _ path: String, body: Data? = nil) async throws -> (Int, ByteBuffer) {
        var request = HTTPClientRequest(url: adminURL + path)
        request.method = method
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        do {
            let response = try await client.execute(request, timeout: .milliseconds(max(1, timeout.milliseconds)))
            let buffer = try await response.body.collect(upTo: 64 << 20)
            return (Int(response.status.code), buffer)
        } catch let error as HTTPClientError where error == .invalidURL || error == .emptyHost || error == .emptyScheme {
            throw ServingError(kind: .unavailable, message: "'\(adminURL)' is not a URL of a serving agent; fix spec.serving.local.admin")
        } catch {
            let why = ConnectionFailure.describe(error)
            throw ServingError(kind: .unavailable, message: "the serving agent at \(adminURL) cannot be reached (\(why == "timed out" ? "no answer within \(timeout.text)" : why)); "
                + "start it with `capstan serve` or fix spec.serving.local.admin")
        }
    }

    private func failure(_ status: Int, _ body: ByteBuffer) -> ServingError {
        let message = (try? JSONDecoder().decode(AgentErrorBody.self, from: Data(body.readableBytesView)).error)
            ?? String(buffer: body).trimmingCharacters(in: .whitespacesAndNewlines)
        let detail = message.isEmpty ? "HTTP \(status)" : message
        if status == 401 {
            return ServingError(kind: .rejected, message: "the serving agent at \(adminURL) refused the call: \(detail)")
        }
        if (400..<500).contains(status) {
            return ServingError(kind: .rejected, message: "the serving agent at \(adminURL) refused the request (HTTP \(status)): \(detail)")
        }
        return ServingError(kind: .unavailable, message: "the serving agent at \(adminURL) failed (HTTP \(status)): \(detail)")
    }

    private func decode<T: Decodable>(_ type: T.Type, _ body: ByteBuffer) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(body.readableBytesView))
        } catch {
            throw ServingError(kind: .unavailable, message: "the serving agent at \(adminURL) sent an answer this capstan cannot read (\(error)); "
                + "are the agent and capstan the same version?")
        }
    }

    private static func escape(_ segment: String) -> String {
        segment.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? segment
    }
}
