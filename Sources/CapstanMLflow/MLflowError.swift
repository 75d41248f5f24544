/// A call to an MLflow server that failed: which server, which operation, what the server said,
/// and what kind of failure it is, so the caller can decide what to do next (retry on the next
/// pass, stop and ask for a fix, treat as absent).
///
/// Never holds a credential: the server URL has no user information (the client refuses such
/// URLs), and any text the server sent back has the client's secrets masked before it is kept.
public struct MLflowError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable, Equatable, CaseIterable {
        /// No connection: refused, reset, closed before an answer, host not found. Transient.
        case unreachable
        /// No complete answer within the client's timeout. Transient.
        case timeout
        /// HTTP 5xx (except 501) or 429: the server or something in front of it failed. Transient.
        case serverError
        /// HTTP 401: no credentials, or the server does not accept them.
        case unauthenticated
        /// HTTP 403: the credentials are valid but may not do this.
        case permissionDenied
        /// `RESOURCE_DOES_NOT_EXIST` (HTTP 404): the model, version, run or experiment is absent.
        case notFound
        /// `INVALID_PARAMETER_VALUE` or `BAD_REQUEST` (HTTP 400): the server refused a value.
        case invalidParameter
        /// `RESOURCE_ALREADY_EXISTS` (HTTP 400 in MLflow, not 409).
        case alreadyExists
        /// Any other refusal (409, 405, a redirect, a host the server does not allow, 501…).
        case rejected
        /// The URL answered, but not as an MLflow tracking server does (HTML 404, unknown route).
        case endpointNotFound
        /// An answer that cannot be read: not JSON, not the expected shape, larger than the
        /// limit, or artifacts that do not match their listing (size, unsafe names).
        case badResponse
        /// The TLS handshake failed (an untrusted or mismatched certificate). Not retried: the
        /// certificate or the URL must change.
        case tls
        /// A model version ended in `FAILED_REGISTRATION`.
        case registrationFailed
        /// A model version was still `PENDING_REGISTRATION` when the wait's deadline passed.
        /// Transient: the next pass looks again.
        case registrationPending
        /// The client's own configuration (URL, credentials) cannot be used.
        case invalidConfiguration
        /// A local file or folder cannot be uploaded or downloaded into (symlinks, special files,
        /// a destination that is not empty, I/O errors).
        case localFiles
    }

    public var kind: Kind
    /// The server's base URL as configured (never with credentials).
    public var server: String
    /// What was being done, for example `create model version of churn`.
    public var operation: String
    /// The HTTP status of the answer, when there was one.
    public var httpStatus: Int?
    /// MLflow's `error_code` (`RESOURCE_DOES_NOT_EXIST`, …) when the answer carried one.
    public var errorCode: String?
    /// What went wrong, in words: MLflow's `message`, or ours.
    public var message: String
    /// What to do about it.
    public var hint: String?
    /// The underlying error (a transport or decoding error), described without secrets.
    public var cause: String?

    public init(kind: Kind, server: String, operation: String, httpStatus: Int? = nil, errorCode: String? = nil,
                message: String, hint: String? = nil, cause: String? = nil) {
        self.kind = kind
        self.server = server
        self.operation = operation
        self.httpStatus = httpStatus
        self.errorCode = errorCode
        self.message = message
        self.hint = hint
        self.cause = cause
    }

    /// True when the same call may succeed later without any change: the server was down, slow,
    /// failing, or a registration had not finished yet.
    public var isTransient: Bool {
        switch kind {
        case .unreachable, .timeout, .serverError, .registrationPending: return true
        default: return false
        }
    }

    /// True for 401 and 403: the credentials must change (the hint names the variables).
    public var isAuthFailure: Bool { kind == .unauthenticated || kind == .permissionDenied }

    /// `create model version of churn at http://mlflow:5000 failed: HTTP 404 RESOURCE_DOES_NOT_EXIST:
    /// Registered Model with name=churn not found; <hint>`.
    public var description: String {
        var text = "\(operation) at \(server) failed: "
        var status: [String] = []
        if let httpStatus { status.append("HTTP \(httpStatus)") }
        if let errorCode { status.append(errorCode) }
        if !status.isEmpty { text += status.joined(separator: " ") + ": " }
        text += message
        if let cause, !message.contains(cause) { text += " (\(cause))" }
        if let hint { text += "; " + hint }
        return text
    }
}
