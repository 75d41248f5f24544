import CapstanCore
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// Whether the controller can take traffic (`GET /readyz`).
public struct Readiness: Sendable, Equatable {
    public var ready: Bool
    /// Why not (or what it is doing when ready), one sentence.
    public var reason: String

    public init(ready: Bool, reason: String) {
        self.ready = ready
        self.reason = reason
    }
}

/// What the HTTP side asks of the controller. The command layer implements it over the state
/// directory and the reconcile loop.
public protocol ControllerBackend: Sendable {
    func readiness() -> Readiness
    /// The status document (`capstan status --format json`, `GET /api/v1/status`).
    func status() async throws -> StatusDocument
    /// The newest audit events, newest first (the status page's history).
    func history(limit: Int) async throws -> [AuditEvent]
    /// What the page says about the controller itself (repository, poll interval, last commit).
    func pageContext() -> StatusPageContext
    /// Asks for a pass as soon as possible (`why` says who asked: a webhook, the API). False when
    /// the controller is shutting down and takes no more work.
    func requestPass(why: String) -> Bool
    /// The model card of the version the model's first alias holds (`GET /models/<name>/card`);
    /// nil when the last commit read has no such Model or the registry none of its versions.
    func card(model: String) async throws -> ModelCard?
}

/// The controller's HTTP settings.
public struct ControllerHTTPConfiguration: Sendable {
    /// The shared secret of `POST /hooks/git`; nil disables webhooks (401 with a message).
    public var webhookSecret: String?
    /// The bearer token of `POST /api/v1/reconcile`; nil disables that route (403 with a message).
    public var apiToken: String?
    /// The secret of MLflow's registry webhooks (`POST /hooks/mlflow`); nil disables them.
    public var mlflowWebhookSecret: String?
    /// The largest webhook or API body read (larger ones get 413 and trigger nothing).
    public var bodyLimit = 1 << 20

    public init(webhookSecret: String? = nil, apiToken: String? = nil, mlflowWebhookSecret: String? = nil) {
        self.webhookSecret = webhookSecret
        self.apiToken = apiToken
        self.mlflowWebhookSecret = mlflowWebhookSecret
    }
}

/// The controller's HTTP routes (docs/controller.md):
///
///     GET  /                   the status page (HTML)
///     GET  /healthz            200 "ok" while the process runs
///     GET  /readyz             200 once the first pass finished and the source is reachable, else 503
///     GET  /metrics            Prometheus text
///     GET  /api/v1/status      the JSON of `capstan status --format json`
///     GET  /models/<name>/card the model card of the version the model's first alias holds (HTML)
///     POST /api/v1/reconcile   202, a pass as soon as possible (Authorization: Bearer <token>)
///     POST /hooks/git          202, a pass as soon as possible (signed: see WebhookAuthenticator)
///     POST /hooks/mlflow       202, a pass as soon as possible (MLflow's registry webhooks, signed:
///                              see MLflowWebhookAuthenticator)
public struct ControllerHTTP: HTTPResponder {
    public typealias Context = BasicRequestContext

    let backend: any ControllerBackend
    let metrics: ControllerMetrics
    let configuration: ControllerHTTPConfiguration
    let webhooks: WebhookAuthenticator?
    let mlflowWebhooks: MLflowWebhookAuthenticator?
    let tokenDigest: [UInt8]?
    let logger: Logger

    public init(backend: any ControllerBackend, metrics: ControllerMetrics, configuration: ControllerHTTPConfiguration, logger: Logger) {
        self.backend = backend
        self.metrics = metrics
        self.configuration = configuration
        self.webhooks = configuration.webhookSecret.map(WebhookAuthenticator.init(secret:))
        self.mlflowWebhooks = configuration.mlflowWebhookSecret.map { MLflowWebhookAuthenticator(secret: $0) }
        self.tokenDigest = configuration.apiToken.map { Array(SHA256.hash(data: Data($0.utf8))) }
        self.logger = logger
    }

    public func respond(to request: Request, context: Context) async throws -> Response {
        let path = request.uri.path
        let method = request.method
        switch path {
        case "/healthz":
            guard method == .get || method == .head else { return Self.methodNotAllowed(method, path, allow: "GET, HEAD") }
            return Self.text(.ok, "ok\n")
        case "/readyz":
            guard method == .get || method == .head else { return Self.methodNotAllowed(method, path, allow: "GET, HEAD") }
            let readiness = backend.readiness()
            return Self.text(readiness.ready ? .ok : .serviceUnavailable, (readiness.ready ? "ready: " : "not ready: ") + readiness.reason + "\n")
        case "/metrics":
            guard method == .get || method == .head else { return Self.methodNotAllowed(method, path, allow: "GET, HEAD") }
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: ResponseBody(byteBuffer: ByteBuffer(string: metrics.exposition())))
        case "/api/v1/status":
            guard method == .get || method == .head else { return Self.methodNotAllowed(method, path, allow: "GET, HEAD") }
            do {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
                let data = try encoder.encode(try await backend.status())
                return Response(status: .ok, headers: [.contentType: "application/json"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
            } catch {
                return Self.json(.internalServerError, ["error": "cannot read the state: \(error)"])
            }
        case "/", "/index.html":
            guard method == .get || method == .head else { return Self.methodNotAllowed(method, path, allow: "GET, HEAD") }
            do {
                var context = backend.pageContext()
                context.now = Date()
                let html = StatusPage.render(status: try await backend.status(), history: try await backend.history(limit: 50), context: context)
                return Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
                                body: ResponseBody(byteBuffer: ByteBuffer(string: html)))
            } catch {
                return Self.text(.internalServerError, "cannot render the status page: \(error)\n")
            }
        case "/api/v1/reconcile":
            guard method == .post else { return Self.methodNotAllowed(method, path, allow: "POST") }
            return await reconcile(request)
        case "/hooks/git":
            guard method == .post else { return Self.methodNotAllowed(method, path, allow: "POST") }
            return await webhook(request)
        case "/hooks/mlflow":
            guard method == .post else { return Self.methodNotAllowed(method, path, allow: "POST") }
            return await mlflowWebhook(request)
        case _ where path.hasPrefix("/models/") && path.hasSuffix("/card"):
            guard method == .get || method == .head else { return Self.methodNotAllowed(method, path, allow: "GET, HEAD") }
            let name = String(path.dropFirst("/models/".count).dropLast("/card".count))
            do {
                guard Names.dnsLabelProblem(name) == nil, let card = try await backend.card(model: name) else {
                    return Self.text(.notFound, "no model card for '\(name)': the last commit read has no such Model, or the registry none of its versions\n")
                }
                return Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
                                body: ResponseBody(byteBuffer: ByteBuffer(string: ModelCardPage.render(card))))
            } catch {
                return Self.text(.internalServerError, "cannot make the model card: \(error)\n")
            }
        default:
            return Self.json(.notFound, ["error": "no route \(path); see docs/controller.md for the controller's routes"])
        }
    }

    private func reconcile(_ request: Request) async -> Response {
        guard let tokenDigest else {
            return Self.json(.forbidden, ["error": "POST /api/v1/reconcile is disabled: start capstan run with --api-token-env NAME to enable it"])
        }
        let header = request.headers[.authorization] ?? ""
        guard header.hasPrefix("Bearer "),
              WebhookAuthenticator.constantTimeEqual(Array(SHA256.hash(data: Data(header.dropFirst("Bearer ".count).utf8))), tokenDigest) else {
            logger.warning("refused POST /api/v1/reconcile: \(header.isEmpty ? "no bearer token" : "wrong bearer token")")
            var response = Self.json(.unauthorized, ["error": header.isEmpty
                ? "send Authorization: Bearer <token> (the value of the controller's --api-token-env variable)"
                : "the bearer token is not this controller's token"])
            response.headers[.wwwAuthenticate] = "Bearer"
            return response
        }
        guard backend.requestPass(why: "POST /api/v1/reconcile") else {
            return Self.json(.serviceUnavailable, ["error": "the controller is shutting down"])
        }
        return Self.json(.accepted, ["status": "a pass starts as soon as the current one (if any) ends"])
    }

    private func webhook(_ request: Request) async -> Response {
        guard let webhooks else {
            metrics.recordWebhook(accepted: false)
            logger.warning("refused a webhook: webhooks are disabled (no --webhook-secret-env)")
            return Self.json(.unauthorized, ["error": "webhooks are disabled: start capstan run with --webhook-secret-env NAME, NAME holding the webhook's secret"])
        }
        if let length = request.headers[.contentLength].flatMap(Int.init), length > configuration.bodyLimit {
            metrics.recordWebhook(accepted: false)
            return Self.json(.contentTooLarge, ["error": "the payload is larger than \(configuration.bodyLimit) bytes; nothing was triggered"])
        }
        let body = request.body
        let buffer: ByteBuffer
        do {
            buffer = try await body.collect(upTo: configuration.bodyLimit)
        } catch {
            metrics.recordWebhook(accepted: false)
            return Self.json(.contentTooLarge, ["error": "the payload is larger than \(configuration.bodyLimit) bytes; nothing was triggered"])
        }
        let bytes = Array(buffer.readableBytesView)
        let headers = request.headers
        let verdict = webhooks.verify(body: bytes) { name in HTTPField.Name(name).flatMap { headers[$0] } }
        switch verdict {
        case .rejected(let reason):
            metrics.recordWebhook(accepted: false)
            logger.warning("refused a webhook: \(reason)", metadata: ["remote": "\(request.headers[.userAgent] ?? "?")"])
            return Self.json(.unauthorized, ["error": reason + "; nothing was triggered"])
        case .accepted(let provider):
            metrics.recordWebhook(accepted: true)
            if provider == "github", headers[HTTPField.Name("X-GitHub-Event")!] == "ping" {
                logger.info("GitHub webhook ping accepted")
                return Self.json(.ok, ["status": "pong"])
            }
            guard backend.requestPass(why: "\(provider) webhook") else {
                return Self.json(.serviceUnavailable, ["error": "the controller is shutting down"])
            }
            // The payload is not trusted for anything: the pass fetches the ref itself.
            return Self.json(.accepted, ["status": "a pass starts as soon as the current one (if any) ends"])
        }
    }

    /// An MLflow registry event (an alias moved, a version created or tagged): a pass at once, so
    /// that drift is handled within a second. The payload only names the event in the log; the
    /// pass reads MLflow itself.
    private func mlflowWebhook(_ request: Request) async -> Response {
        guard let mlflowWebhooks else {
            metrics.recordWebhook(accepted: false)
            logger.warning("refused an MLflow webhook: they are disabled (no --mlflow-webhook-secret-env)")
            return Self.json(.unauthorized, ["error": "MLflow webhooks are disabled: start capstan run with --mlflow-webhook-secret-env NAME, NAME holding the webhook's secret"])
        }
        if let length = request.headers[.contentLength].flatMap(Int.init), length > configuration.bodyLimit {
            metrics.recordWebhook(accepted: false)
            return Self.json(.contentTooLarge, ["error": "the payload is larger than \(configuration.bodyLimit) bytes; nothing was triggered"])
        }
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: configuration.bodyLimit)
        } catch {
            metrics.recordWebhook(accepted: false)
            return Self.json(.contentTooLarge, ["error": "the payload is larger than \(configuration.bodyLimit) bytes; nothing was triggered"])
        }
        let bytes = Array(buffer.readableBytesView)
        let headers = request.headers
        switch mlflowWebhooks.verify(body: bytes, header: { name in HTTPField.Name(name).flatMap { headers[$0] } }) {
        case .rejected(let reason):
            metrics.recordWebhook(accepted: false)
            logger.warning("refused an MLflow webhook: \(reason)")
            return Self.json(.unauthorized, ["error": reason + "; nothing was triggered"])
        case .duplicate(let delivery):
            logger.info("MLflow webhook delivered again; ignored", metadata: ["delivery": "\(delivery)"])
            return Self.json(.ok, ["status": "already received"])
        case .accepted:
            metrics.recordWebhook(accepted: true)
            let event = Self.mlflowEvent(bytes)
            guard backend.requestPass(why: "mlflow webhook" + (event.map { " (\($0))" } ?? "")) else {
                return Self.json(.serviceUnavailable, ["error": "the controller is shutting down"])
            }
            return Self.json(.accepted, ["status": "a pass starts as soon as the current one (if any) ends"])
        }
    }

    /// `model_version_alias.created`, from a signed payload's `entity` and `action` (for the log
    /// only; kept short and plain).
    static func mlflowEvent(_ body: [UInt8]) -> String? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
              let entity = object["entity"] as? String, let action = object["action"] as? String else { return nil }
        let text = "\(entity).\(action)"
        guard text.count <= 80, text.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" || $0 == "." }) else { return nil }
        return text
    }

    static func text(_ status: HTTPResponse.Status, _ text: String) -> Response {
        Response(status: status, headers: [.contentType: "text/plain; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
    }

    static func json(_ status: HTTPResponse.Status, _ object: [String: String]) -> Response {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return Response(status: status, headers: [.contentType: "application/json"],
                         body: ResponseBody(byteBuffer: ByteBuffer(bytes: data + Data("\n".utf8))))
    }

    static func methodNotAllowed(_ method: HTTPRequest.Method, _ path: String, allow: String) -> Response {
        var response = json(.methodNotAllowed, ["error": "\(method.rawValue) is not allowed on \(path); use \(allow)"])
        response.headers[.allow] = allow
        return response
    }
}
