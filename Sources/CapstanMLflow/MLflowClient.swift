import AsyncHTTPClient
import CapstanCore
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// A client of an MLflow tracking server's REST API (`/api/2.0/mlflow/…`) and of its artifact
/// proxy (`/api/2.0/mlflow-artifacts/artifacts/…`): experiments, runs, artifacts, registered
/// models, model versions and aliases. docs/mlflow.md describes what it sends and what its
/// errors mean.
///
/// Every failure is an `MLflowError` naming the server and the operation (cancellation stays a
/// `CancellationError`). TLS is verified, redirects are not followed, every call has a timeout
/// and a bound on the size of its answer. Credentials go only into the `Authorization` header.
///
/// It owns an HTTP client: call `shutdown()` when done, or use `MLflowClient.with(…)`.
public final class MLflowClient: Sendable {
    public struct Configuration: Sendable {
        /// The tracking server's base URL, `http(s)://host[:port][/prefix]`, without `/api/…`.
        public var url: String
        public var credentials: MLflowCredentials
        /// The bound of one API call, from connecting to the last byte of the answer; for
        /// artifact transfers, the longest silence while a file's bytes flow.
        public var timeout: Duration
        /// The bound of one artifact file's upload or download.
        public var transferTimeout: Duration
        /// The largest JSON answer read (bytes).
        public var maxResponseBytes: Int
        /// The largest artifact folder downloaded at once (bytes, by the server's listing).
        public var maxDownloadBytes: Int64

        public init(url: String, credentials: MLflowCredentials = .none, timeout: Duration = .seconds(30),
                    transferTimeout: Duration = .seconds(30 * 60), maxResponseBytes: Int = 64 << 20,
                    maxDownloadBytes: Int64 = 64 << 30) {
            self.url = url
            self.credentials = credentials
            self.timeout = timeout
            self.transferTimeout = transferTimeout
            self.maxResponseBytes = maxResponseBytes
            self.maxDownloadBytes = maxDownloadBytes
        }
    }

    /// The server's base URL, as errors name it (no trailing slash, never credentials).
    public let server: String
    let configuration: Configuration
    private let authorization: String?
    let http: HTTPClient
    let logger: Logger
    private let requests = Atomic(0)
    private let isShutDown = Atomic(false)

    /// Checks the URL and the credentials; throws `.invalidConfiguration` when they cannot be used.
    public init(_ configuration: Configuration, logger: Logger = Logger(label: "capstan.mlflow", factory: { _ in SwiftLogNoOpLogHandler() })) throws {
        var url = configuration.url.trimmingCharacters(in: .whitespaces)
        while url.hasSuffix("/") { url.removeLast() }
        let server = try Self.checkedURL(url, original: configuration.url)
        self.server = server
        func refuse(_ what: String) -> MLflowError {
            MLflowError(kind: .invalidConfiguration, server: server, operation: "configure the MLflow client", message: what)
        }
        guard configuration.timeout >= .milliseconds(1), configuration.timeout <= .seconds(86_400) else {
            throw refuse("the timeout must be between 1ms and 1d")
        }
        guard configuration.transferTimeout >= .milliseconds(1), configuration.transferTimeout <= .seconds(7 * 86_400) else {
            throw refuse("the transfer timeout must be between 1ms and 7d")
        }
        guard configuration.maxResponseBytes > 0, configuration.maxDownloadBytes > 0 else { throw refuse("the size limits must be positive") }
        self.configuration = configuration
        self.logger = logger
        do {
            authorization = try configuration.credentials.authorizationHeader()
        } catch {
            throw MLflowError(kind: .invalidConfiguration, server: server, operation: "prepare the MLflow credentials",
                              message: error.description)
        }
        let timeout = TimeAmount.nanoseconds(configuration.timeout.nanosecondsClamped)
        var pool = HTTPClient.Configuration.ConnectionPool(idleTimeout: .seconds(30), concurrentHTTP1ConnectionsPerHostSoftLimit: 8)
        pool.retryConnectionEstablishment = false
        let connect = min(timeout, .seconds(10))
        var http = HTTPClient.Configuration(
            redirectConfiguration: .disallow, timeout: .init(connect: connect, read: timeout, write: timeout),
            connectionPool: pool, decompression: .disabled)
        http.httpVersion = .automatic
        self.http = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: http)
    }

    deinit {
        if !isShutDown.load(ordering: .acquiring) {
            http.shutdown { _ in }
        }
    }

    /// Closes the client's connections. Call it once, when done with the client.
    public func shutdown() async throws {
        guard !isShutDown.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try await http.shutdown()
    }

    /// Runs `body` with a client that is shut down afterwards, whatever happens.
    public static func with<T>(_ configuration: Configuration, logger: Logger? = nil, _ body: (MLflowClient) async throws -> T) async throws -> T {
        let client = try logger.map { try MLflowClient(configuration, logger: $0) } ?? MLflowClient(configuration)
        let result: Result<T, any Error>
        do {
            result = .success(try await body(client))
        } catch {
            result = .failure(error)
        }
        try? await client.shutdown()
        return try result.get()
    }

    /// HTTP requests sent so far (every attempt, answered or not): what a plan or a pass costs.
    public var requestCount: Int { requests.load(ordering: .relaxed) }

    // MARK: - JSON calls

    struct Empty: Codable, Sendable {}

    /// `GET /api/2.0/mlflow/<endpoint>?query`, decoded as `R`.
    func get<R: Decodable>(_ endpoint: String, _ query: [(String, String)] = [], as: R.Type = R.self, operation: String) async throws -> R {
        let url = apiURL(endpoint) + Self.queryString(query)
        let answer = try await exchange(.GET, url: url, body: nil, contentType: nil, operation: operation)
        return try decode(R.self, answer, operation: operation)
    }

    /// A POST, PATCH or DELETE with a JSON body (DELETE too: MLflow reads its parameters only there).
    func send<B: Encodable, R: Decodable>(_ method: HTTPMethod, _ endpoint: String, _ body: B, as: R.Type = R.self, operation: String) async throws -> R {
        let data: Data
        do {
            data = try JSONEncoder().encode(body)
        } catch {
            throw MLflowError(kind: .invalidParameter, server: server, operation: operation,
                              message: "the request cannot be written as JSON", cause: "\(error)")
        }
        let answer = try await exchange(method, url: apiURL(endpoint), body: .bytes(ByteBuffer(bytes: data)),
                                        contentType: "application/json", operation: operation)
        return try decode(R.self, answer, operation: operation)
    }

    func apiURL(_ endpoint: String) -> String { server + "/api/2.0/mlflow/" + endpoint }

    // MARK: - Exchange

    struct Answer: Sendable {
        var status: Int
        var headers: HTTPHeaders
        var body: ByteBuffer
    }

    /// Sends one request and reads the whole answer (bounded by `maxResponseBytes`), within
    /// `timeout` from start to end. Non-2xx answers become errors.
    func exchange(_ method: HTTPMethod, url: String, body: HTTPClientRequest.Body?, contentType: String?,
                  operation: String) async throws -> Answer {
        let request = makeRequest(method, url: url, body: body, contentType: contentType)
        let started = ContinuousClock.now
        let deadline = started.advanced(by: configuration.timeout)
        let limit = configuration.maxResponseBytes
        let answer: Answer
        do {
            let response = try await http.execute(request, deadline: NIODeadline.now() + .nanoseconds(configuration.timeout.nanosecondsClamped))
            let buffer = try await Self.within(deadline) { try await response.body.collect(upTo: limit) }
            answer = Answer(status: Int(response.status.code), headers: response.headers, body: buffer)
        } catch {
            throw transportFailure(error, operation: operation)
        }
        log(method, url, answer.status, since: started)
        guard (200..<300).contains(answer.status) else { throw failure(answer, operation: operation) }
        return answer
    }

    func makeRequest(_ method: HTTPMethod, url: String, body: HTTPClientRequest.Body?, contentType: String?,
                     accept: String = "application/json") -> HTTPClientRequest {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers.add(name: "User-Agent", value: "capstan")
        request.headers.add(name: "Accept", value: accept)
        if let authorization { request.headers.add(name: "Authorization", value: authorization) }
        if let contentType { request.headers.add(name: "Content-Type", value: contentType) }
        if let body { request.body = body }
        requests.add(1, ordering: .relaxed)
        return request
    }

    func log(_ method: HTTPMethod, _ url: String, _ status: Int, since started: ContinuousClock.Instant) {
        let path = url.dropFirst(server.count).prefix { $0 != "?" }
        logger.debug("MLflow request", metadata: [
            "method": "\(method.rawValue)", "path": "\(path)", "status": "\(status)",
            "ms": "\((ContinuousClock.now - started).nanosecondsClamped / 1_000_000)",
        ])
    }

    /// Runs `body`, or throws `HTTPClientError.deadlineExceeded` once `deadline` passes.
    static func within<T: Sendable>(_ deadline: ContinuousClock.Instant, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(until: deadline, clock: .continuous)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else { throw HTTPClientError.deadlineExceeded }
            return value
        }
    }

    // MARK: - Decoding and errors

    func decode<R: Decodable>(_ type: R.Type, _ answer: Answer, operation: String) throws -> R {
        if R.self == Empty.self, answer.body.readableBytes == 0 { return Empty() as! R }
        do {
            return try JSONDecoder().decode(R.self, from: Data(answer.body.readableBytesView))
        } catch {
            if !Self.looksLikeJSON(answer) {
                throw MLflowError(kind: .badResponse, server: server, operation: operation, httpStatus: answer.status,
                                  message: "the answer is \(Self.describeBody(answer)), not MLflow's JSON",
                                  hint: "is \(server) the base URL of an MLflow tracking server, with no login page or proxy answering in its place?")
            }
            throw MLflowError(kind: .badResponse, server: server, operation: operation, httpStatus: answer.status,
                              message: "the answer does not have the shape this capstan expects (\(Self.describeDecoding(error)))",
                              hint: "is the server an MLflow version this capstan supports (docs/mlflow.md)?")
        }
    }

    /// The error for a non-2xx answer, classified by MLflow's `error_code` when the body has one,
    /// else by the HTTP status.
    func failure(_ answer: Answer, operation: String) -> MLflowError {
        let status = answer.status
        struct ErrorBody: Decodable {
            var error_code: String?
            var message: String?
        }
        var code: String?
        var message: String
        let parsed = Self.looksLikeJSON(answer) ? try? JSONDecoder().decode(ErrorBody.self, from: Data(answer.body.readableBytesView)) : nil
        if let parsed, parsed.error_code != nil || parsed.message != nil {
            code = parsed.error_code
            message = clean(parsed.message ?? "")
            if message.isEmpty { message = "no message" }
        } else {
            message = "the answer is \(Self.describeBody(answer))"
        }
        var error = MLflowError(kind: .rejected, server: server, operation: operation, httpStatus: status, errorCode: code, message: message)
        switch (status, code) {
        case (_, "RESOURCE_ALREADY_EXISTS"):
            error.kind = .alreadyExists
        case (_, "RESOURCE_DOES_NOT_EXIST"?), (_, "NOT_FOUND"?):
            error.kind = .notFound
        case (401, _), (_, "UNAUTHENTICATED"?), (_, "CUSTOMER_UNAUTHORIZED"?):
            error.kind = .unauthenticated
            error.hint = "the server did not accept the credentials: check \(configuration.credentials.source)"
        case (403, _), (_, "PERMISSION_DENIED"?):
            if code == nil, message.contains("Host header") {
                error.hint = "the server does not accept the host name of \(server): add it to the server's allowed hosts (mlflow server --allowed-hosts)"
            } else {
                error.kind = .permissionDenied
                error.hint = "the server accepted the credentials but refuses this operation: grant their user the permission in MLflow, or check \(configuration.credentials.source)"
            }
        case (_, "INVALID_PARAMETER_VALUE"?), (_, "BAD_REQUEST"?), (400, nil):
            error.kind = .invalidParameter
        case (404, _), (405, nil):
            error.kind = .endpointNotFound
            error.hint = "is \(server) the base URL of an MLflow tracking server (without /api/…, with any proxy prefix), MLflow 2.9 or later?"
        case (300..<400, _):
            let location = answer.headers.first(name: "Location").map { clean($0) } ?? "another URL"
            error.message = "the server redirects to \(location)"
            error.hint = "use the URL it redirects to in spec.registry.mlflow.url (redirects are not followed, so credentials never go elsewhere)"
        case (429, _), (500, _), (502..<600, _):
            error.kind = .serverError
            error.hint = "the server failed or is overloaded; the next pass retries (see the MLflow server's log)"
        default:
            break
        }
        return error
    }

    /// The error for a request that got no (complete) answer. `transfer`: an artifact transfer,
    /// whose whole-file bound is `transferTimeout` (its idle bound is `timeout`).
    func transportFailure(_ error: any Error, operation: String, transfer: Bool = false) -> any Error {
        if error is CancellationError { return error }
        if let mlflow = error as? MLflowError { return mlflow }
        if error is NIOTooManyBytesError {
            return MLflowError(kind: .badResponse, server: server, operation: operation,
                               message: "the answer is larger than \(configuration.maxResponseBytes) bytes, the limit of one answer",
                               hint: "narrow the request (a smaller page size), or check what answers at \(server)")
        }
        let (kind, why) = Self.classify(error)
        switch kind {
        case .timeout:
            // The whole call's bound, or (read, write, connect) the longest silence allowed.
            let bound = why == "timed out" && transfer ? configuration.transferTimeout : configuration.timeout
            return MLflowError(kind: .timeout, server: server, operation: operation,
                               message: "no complete answer within \(ManifestDurationText.format(bound)) (\(why))",
                               hint: "check that the MLflow server is up and not overloaded; the next pass retries")
        case .tls:
            return MLflowError(kind: .tls, server: server, operation: operation, message: "the TLS handshake failed",
                               hint: "the server's certificate must be valid for this host and trusted by the system's CA store (TLS is always verified)",
                               cause: clean(why))
        default:
            return MLflowError(kind: .unreachable, server: server, operation: operation, message: "the server cannot be reached (\(clean(why)))",
                               hint: "check that the MLflow server is running and that the URL is right; the next pass retries")
        }
    }

    /// A transport error as a kind (`.timeout`, `.tls`, else `.unreachable`) and a few words.
    static func classify(_ error: any Error) -> (MLflowError.Kind, String) {
        if let e = error as? HTTPClientError {
            switch e {
            case .deadlineExceeded: return (.timeout, "timed out")
            case .readTimeout: return (.timeout, "read timeout")
            case .writeTimeout: return (.timeout, "write timeout")
            case .connectTimeout: return (.timeout, "connect timeout")
            case .tlsHandshakeTimeout: return (.timeout, "TLS handshake timeout")
            case .remoteConnectionClosed: return (.unreachable, "connection closed before an answer")
            default: return (.unreachable, e.description)
            }
        }
        // An untrusted certificate, a host-name mismatch, a failed handshake.
        if error is NIOSSLError || error is NIOSSLExtraError { return (.tls, "\(error)") }
        // Every address failed: report the first reason.
        if let e = error as? NIOConnectionError {
            if let first = e.connectionErrors.first { return classify(first.error) }
            if let dns = e.dnsAError ?? e.dnsAAAAError { return (.unreachable, "host not found (\(dns))") }
            return (.unreachable, "cannot connect")
        }
        if let e = error as? IOError {
            switch e.errnoCode {
            case ECONNREFUSED: return (.unreachable, "connection refused")
            case ECONNRESET: return (.unreachable, "connection reset")
            case ETIMEDOUT: return (.timeout, "timed out")
            case EPIPE: return (.unreachable, "connection closed")
            case EHOSTUNREACH, ENETUNREACH: return (.unreachable, "no route to the host")
            default: return (.unreachable, e.description)
            }
        }
        if let e = error as? ChannelError {
            switch e {
            case .connectTimeout: return (.timeout, "connect timeout")
            case .ioOnClosedChannel, .eof, .alreadyClosed, .outputClosed: return (.unreachable, "connection closed before an answer")
            default: return (.unreachable, "\(e)")
            }
        }
        let text = "\(error)"
        if text.contains("ECONNREFUSED") || text.lowercased().contains("connection refused") { return (.unreachable, "connection refused") }
        return (.unreachable, text)
    }

    /// Server-provided text made safe for a message: the first line, bounded, secrets masked.
    func clean(_ text: String) -> String {
        var line = text.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        line = line.trimmingCharacters(in: .whitespaces)
        if line.count > 400 { line = String(line.prefix(400)) + "…" }
        return configuration.credentials.redact(line)
    }

    static func looksLikeJSON(_ answer: Answer) -> Bool {
        if let type = answer.headers.first(name: "Content-Type")?.lowercased(), type.contains("json") { return true }
        let first = answer.body.readableBytesView.first { !($0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09) }
        return first == UInt8(ascii: "{")
    }

    /// `an HTML page (text/html)`, `text/plain: "Permission denied"`, `empty`.
    static func describeBody(_ answer: Answer) -> String {
        let type = answer.headers.first(name: "Content-Type").map { $0.split(separator: ";").first.map(String.init) ?? $0 } ?? "no content type"
        if answer.body.readableBytes == 0 { return "empty (\(type))" }
        let text = String(decoding: answer.body.readableBytesView.prefix(2048), as: UTF8.self)
        let lower = text.lowercased()
        if lower.contains("<html") || lower.contains("<!doctype html") {
            if let start = lower.range(of: "<title>"), let end = lower.range(of: "</title>", range: start.upperBound..<lower.endIndex) {
                let title = text[start.upperBound..<end.lowerBound].trimmingCharacters(in: .whitespacesAndNewlines)
                return "an HTML page titled \"\(title.prefix(80))\" (\(type))"
            }
            return "an HTML page (\(type))"
        }
        let line = text.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        let printable = String(line.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7F }.map(Character.init))
        return "\(type): \"\(printable.prefix(200))\""
    }

    static func describeDecoding(_ error: any Error) -> String {
        guard let e = error as? DecodingError else { return "\(error)" }
        func path(_ c: DecodingError.Context) -> String {
            let p = c.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
            return p.isEmpty ? c.debugDescription : "\(p): \(c.debugDescription)"
        }
        switch e {
        case .keyNotFound(let key, let c): return "missing '\(key.stringValue)' at \(path(c))"
        case .typeMismatch(_, let c), .valueNotFound(_, let c), .dataCorrupted(let c): return path(c)
        @unknown default: return "\(e)"
        }
    }

    // MARK: - URLs

    static func checkedURL(_ url: String, original: String) throws -> String {
        func refuse(_ why: String) -> MLflowError {
            MLflowError(kind: .invalidConfiguration, server: url.isEmpty ? "(no URL)" : redactUserInfo(url), operation: "use the MLflow URL",
                        message: why, hint: "give the tracking server's base URL, such as https://mlflow.example.com or http://127.0.0.1:5000")
        }
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased() else {
            throw refuse("'\(redactUserInfo(original))' is not a URL")
        }
        guard scheme == "http" || scheme == "https" else { throw refuse("the scheme must be http or https, not '\(scheme)'") }
        guard let host = components.host, !host.isEmpty else { throw refuse("the URL has no host") }
        guard components.user == nil, components.password == nil else {
            throw refuse("the URL carries credentials; put them in the environment variables that tokenEnv, or usernameEnv and passwordEnv, name")
        }
        guard components.query == nil, components.fragment == nil else { throw refuse("the URL has a query or a fragment; give only scheme, host, port and path") }
        if components.path.contains("/api/2.0") { throw refuse("the URL includes the API path; give the server's base URL, without /api/2.0/…") }
        return url
    }

    private static func redactUserInfo(_ url: String) -> String {
        guard let at = url.firstIndex(of: "@"), let scheme = url.range(of: "://"), scheme.upperBound < at else { return url }
        return String(url[..<scheme.upperBound]) + "***@" + String(url[url.index(after: at)...])
    }

    /// `?a=b&c=d`, each value percent-encoded (RFC 3986 unreserved characters kept).
    static func queryString(_ items: [(String, String)]) -> String {
        guard !items.isEmpty else { return "" }
        return "?" + items.map { "\(escape($0.0))=\(escape($0.1))" }.joined(separator: "&")
    }

    static let unreserved = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")

    /// Percent-encodes everything but RFC 3986's unreserved characters (so `/`, `?`, `#`, `%`,
    /// spaces and quotes are all encoded).
    static func escape(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: unreserved) ?? text
    }
}

extension Duration {
    /// Whole nanoseconds, clamped to Int64.
    var nanosecondsClamped: Int64 {
        let (seconds, atto) = (components.seconds, components.attoseconds)
        if seconds >= Int64.max / 1_000_000_000 { return Int64.max }
        if seconds <= Int64.min / 1_000_000_000 { return Int64.min }
        return seconds * 1_000_000_000 + atto / 1_000_000_000
    }
}
