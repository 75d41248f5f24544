import Foundation

/// How the client authenticates, following MLflow's own conventions: a bearer token
/// (`MLFLOW_TRACKING_TOKEN`) or HTTP basic auth (`MLFLOW_TRACKING_USERNAME` and
/// `MLFLOW_TRACKING_PASSWORD`; basic auth wins when both are set, as in MLflow's Python client).
///
/// The client takes the values; the names of the environment variables they came from are kept
/// only to say which to check when the server refuses them. The secrets never appear in a
/// description, a mirror, an error or a log line.
public struct MLflowCredentials: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    enum Storage: Sendable {
        case none
        case bearer(token: String, variable: String)
        case basic(username: String, password: String, usernameVariable: String, passwordVariable: String)
    }

    let storage: Storage

    /// No `Authorization` header.
    public static let none = MLflowCredentials(storage: .none)

    /// `Authorization: Bearer <token>`; `variable` names where the token came from.
    public static func bearer(token: String, variable: String = "MLFLOW_TRACKING_TOKEN") -> MLflowCredentials {
        MLflowCredentials(storage: .bearer(token: token, variable: variable))
    }

    /// `Authorization: Basic base64(username:password)`; the variables name where they came from.
    public static func basic(username: String, password: String, usernameVariable: String = "MLFLOW_TRACKING_USERNAME",
                             passwordVariable: String = "MLFLOW_TRACKING_PASSWORD") -> MLflowCredentials {
        MLflowCredentials(storage: .basic(username: username, password: password, usernameVariable: usernameVariable,
                                          passwordVariable: passwordVariable))
    }

    /// Reads the credentials from `environment` as MLflow does, with the variable names the
    /// configuration gives (nil: not configured). Basic auth when a username variable is
    /// configured, else a bearer token when a token variable is, else none. A configured
    /// variable that is unset or empty is an error that names it: a typo in a variable name
    /// must not silently send requests without credentials.
    public static func resolve(tokenVariable: String?, usernameVariable: String?, passwordVariable: String?,
                               environment: [String: String]) throws(MLflowCredentialsError) -> MLflowCredentials {
        func value(_ name: String) throws(MLflowCredentialsError) -> String {
            guard let v = environment[name], !v.isEmpty else { throw .unset(variable: name) }
            return v
        }
        switch (usernameVariable, passwordVariable) {
        case (let user?, let password?):
            return .basic(username: try value(user), password: try value(password), usernameVariable: user, passwordVariable: password)
        case (let user?, nil):
            throw .incomplete(present: user, missing: "passwordEnv")
        case (nil, let password?):
            throw .incomplete(present: password, missing: "usernameEnv")
        case (nil, nil):
            if let tokenVariable { return .bearer(token: try value(tokenVariable), variable: tokenVariable) }
            return .none
        }
    }

    /// Which environment variables to check after a 401 or 403.
    public var source: String {
        switch storage {
        case .none: return "no credentials are configured (set tokenEnv, or usernameEnv and passwordEnv)"
        case .bearer(_, let variable): return "the token in $\(variable)"
        case .basic(_, _, let u, let p): return "the username in $\(u) and the password in $\(p)"
        }
    }

    public var description: String {
        switch storage {
        case .none: return "no credentials"
        case .bearer(_, let variable): return "bearer token from $\(variable)"
        case .basic(_, _, let u, let p): return "basic auth from $\(u) and $\(p)"
        }
    }

    public var debugDescription: String { description }

    public var customMirror: Mirror { Mirror(self, children: ["credentials": description]) }

    /// The `Authorization` header value, or nil. Refuses values that would break the header.
    func authorizationHeader() throws(MLflowCredentialsError) -> String? {
        switch storage {
        case .none:
            return nil
        case .bearer(let token, let variable):
            guard Self.isHeaderSafe(token) else { throw .unusable(variable: variable, why: "it contains a control character or a line break") }
            return "Bearer " + token
        case .basic(let username, let password, let uVar, let pVar):
            guard !username.contains(":") else { throw .unusable(variable: uVar, why: "a basic-auth username cannot contain ':'") }
            guard Self.isHeaderSafe(username) else { throw .unusable(variable: uVar, why: "it contains a control character or a line break") }
            guard Self.isHeaderSafe(password) else { throw .unusable(variable: pVar, why: "it contains a control character or a line break") }
            return "Basic " + Data("\(username):\(password)".utf8).base64EncodedString()
        }
    }

    /// The secrets, to mask in any text that may have echoed them: the header's encoded form
    /// first (it contains the others), then the raw values.
    var secrets: [String] {
        switch storage {
        case .none: return []
        case .bearer(let token, _): return [token]
        case .basic(let username, let password, _, _):
            return [Data("\(username):\(password)".utf8).base64EncodedString(), Data(password.utf8).base64EncodedString(), password]
        }
    }

    /// `text` with every secret replaced by `***` (values shorter than 4 characters are left:
    /// masking them would garble the text more than it protects).
    func redact(_ text: String) -> String {
        var out = text
        for secret in secrets where secret.count >= 4 {
            out = out.replacingOccurrences(of: secret, with: "***")
        }
        return out
    }

    private static func isHeaderSafe(_ value: String) -> Bool {
        !value.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }
    }
}

/// Credentials that cannot be read or used. Names the variable, never its value.
public enum MLflowCredentialsError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The configuration names a variable that is not set (or is empty).
    case unset(variable: String)
    /// One of the basic-auth pair is configured without the other.
    case incomplete(present: String, missing: String)
    /// The value cannot go into an HTTP header.
    case unusable(variable: String, why: String)

    public var description: String {
        switch self {
        case .unset(let v):
            return "the environment variable $\(v) named for MLflow credentials is not set (or empty); set it, or fix the variable's name in spec.registry.mlflow"
        case .incomplete(let present, let missing):
            return "MLflow basic auth needs both a username and a password: $\(present) is configured but \(missing) is not; set both, or use tokenEnv"
        case .unusable(let v, let why):
            return "the value of $\(v) cannot be sent to MLflow: \(why)"
        }
    }
}
