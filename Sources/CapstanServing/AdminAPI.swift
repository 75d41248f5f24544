import CapstanCore
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The body of `GET /v1/endpoints`.
public struct AgentEndpointList: Hashable, Sendable, Codable {
    /// Identifies the agent process; counters restart from zero when it changes.
    public var bootID: String
    /// When the agent process started (RFC 3339, UTC).
    public var startedAt: String
    public var endpoints: [EndpointStatus]

    public init(bootID: String, startedAt: String, endpoints: [EndpointStatus]) {
        self.bootID = bootID
        self.startedAt = startedAt
        self.endpoints = endpoints
    }
}

/// The error body of every admin and gateway error: `{"error": "..."}`.
public struct AgentErrorBody: Hashable, Sendable, Codable {
    public var error: String
    public init(error: String) { self.error = error }
}

/// The admin API (docs/serving.md):
///
///     GET    /healthz                      200 "ok" (never needs the token)
///     GET    /v1/endpoints                 200 AgentEndpointList
///     GET    /v1/endpoints/{deployment}    200 EndpointStatus | 404
///     PUT    /v1/endpoints/{deployment}    200 EndpointStatus | 400 | 413 | 500 (EndpointSpec body)
///     DELETE /v1/endpoints/{deployment}    204 | 404
///
/// With a token, every route but /healthz needs `Authorization: Bearer <token>` (else 401).
/// Without one (the agent then listens on loopback only), every route but /healthz needs a
/// loopback `Host` (else 403): a web page that rebinds its own name to 127.0.0.1 cannot use it.
struct AdminAPI: HTTPResponder {
    typealias Context = BasicRequestContext

    static let bodyLimit = 1 << 20

    let supervisor: Supervisor
    let token: [UInt8]?
    let bootID: String
    let startedAt: String

    func respond(to request: Request, context: Context) async throws -> Response {
        let path = request.uri.path
        let method = request.method
        if path == "/healthz" {
            guard method == .get || method == .head else { return Self.methodNotAllowed(method, path, allow: "GET, HEAD") }
            return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(string: "ok\n")))
        }
        if token == nil, let problem = Self.hostProblem(request) {
            return Self.error(.forbidden, problem)
        }
        if let token, !Self.authorized(request.headers[.authorization], token: token) {
            var response = Self.error(.unauthorized, request.headers[.authorization] == nil
                ? "this agent needs a bearer token: send Authorization: Bearer <token> (the value of its --admin-token-env variable)"
                : "the bearer token is not this agent's token")
            response.headers[.wwwAuthenticate] = "Bearer"
            return response
        }
        let segments = path.split(separator: "/", omittingEmptySubsequences: true)
        guard segments.count >= 2, segments[0] == "v1", segments[1] == "endpoints", segments.count <= 3 else {
            return Self.error(.notFound, "no such route: \(method) \(path); the admin API serves /healthz, /v1/endpoints and /v1/endpoints/<deployment>")
        }
        if segments.count == 2 {
            guard method == .get else { return Self.methodNotAllowed(method, path, allow: "GET") }
            let list = AgentEndpointList(bootID: bootID, startedAt: startedAt, endpoints: await supervisor.statuses())
            return Self.json(.ok, list)
        }
        let deployment = String(segments[2]).removingPercentEncoding ?? String(segments[2])
        switch method {
        case .get:
            guard let status = await supervisor.status(deployment: deployment) else {
                return Self.error(.notFound, "unknown deployment \(deployment)")
            }
            return Self.json(.ok, status)
        case .put:
            return await put(deployment, request: request)
        case .delete:
            do {
                guard try await supervisor.remove(deployment: deployment) else {
                    return Self.error(.notFound, "unknown deployment \(deployment)")
                }
                return Response(status: .noContent)
            } catch {
                return Self.error(.internalServerError, error.message)
            }
        default:
            return Self.methodNotAllowed(method, path, allow: "GET, PUT, DELETE")
        }
    }

    private func put(_ deployment: String, request: Request) async -> Response {
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > Self.bodyLimit {
            return Self.error(.contentTooLarge, "the body is \(length) bytes; the admin API accepts at most 1 MiB")
        }
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: Self.bodyLimit)
        } catch {
            return Self.error(.contentTooLarge, "the body is larger than 1 MiB, the admin API's limit")
        }
        let spec: EndpointSpec
        do {
            spec = try EndpointSpecDocument.decode(Data(buffer.readableBytesView))
        } catch {
            return Self.error(.badRequest, error.message)
        }
        let problems = EndpointValidation.problems(spec, pathDeployment: deployment)
        if !problems.isEmpty {
            return Self.error(.badRequest, "invalid endpoint spec for '\(deployment)': " + problems.joined(separator: "; "))
        }
        do {
            return Self.json(.ok, try await supervisor.apply(spec))
        } catch {
            return Self.error(.internalServerError, error.message)
        }
    }

    /// Why a request to the token-less admin API is refused for its `Host`, or nil: the host
    /// must be `localhost`, a 127.0.0.0/8 address or `[::1]`, with or without a port, and there
    /// must be exactly one.
    static func hostProblem(_ request: Request) -> String? {
        let advice = "; this admin API has no token, so it answers only requests addressed to a loopback name "
            + "(Host: 127.0.0.1, localhost or [::1], with or without the port), which a web page cannot forge by rebinding its own name "
            + "to this machine. Use http://127.0.0.1:<port>, or start the agent with --admin-token-env"
        guard let authority = request.head.authority else { return "the request has no Host header" + advice }
        if request.headers[values: HTTPField.Name("Host")!].count > 0 { return "the request has more than one Host header" + advice }
        guard let (host, _) = Loopback.splitAuthority(authority), Loopback.isLoopbackHost(host) else {
            let shown = authority.count > 100 ? String(authority.prefix(100)) + "…" : authority
            return "Host '\(shown)' is not a loopback name" + advice
        }
        return nil
    }

    /// Compares in time independent of where the values differ.
    static func authorized(_ header: String?, token: [UInt8]) -> Bool {
        guard let header, header.hasPrefix("Bearer ") else { return false }
        let given = Array(header.utf8.dropFirst(7))
        var difference = UInt8(truncatingIfNeeded: given.count ^ token.count)
        if given.count != token.count { difference |= 1 }
        for i in 0..<token.count {
            difference |= token[i] ^ (i < given.count ? given[i] : 0)
        }
        return difference == 0
    }

    static func methodNotAllowed(_ method: HTTPRequest.Method, _ path: String, allow: String) -> Response {
        var response = Self.error(.methodNotAllowed, "\(method) is not allowed on \(path); use \(allow)")
        response.headers[.allow] = allow
        return response
    }

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return encoder
    }()

    static func json(_ status: HTTPResponse.Status, _ value: some Encodable) -> Response {
        do {
            var data = try encoder.encode(value)
            data.append(0x0A)
            return Response(status: status, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
        } catch {
            return Self.error(.internalServerError, "cannot encode the answer (\(error))")
        }
    }

    /// A JSON error answer: `{"error": "..."}`.
    static func error(_ status: HTTPResponse.Status, _ message: String) -> Response {
        Response(status: status, headers: [.contentType: "application/json"],
                 body: ResponseBody(byteBuffer: ByteBuffer(string: ProxyHeaders.errorBody(message))))
    }
}
