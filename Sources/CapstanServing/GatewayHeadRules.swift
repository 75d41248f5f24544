import NIOHTTP1

/// What the gateway decides from a request head, for the rest of the package: the fuzz target
/// `FuzzGatewayHead` (scripts/fuzz.sh) checks these decisions over arbitrary heads. The rules
/// themselves are `ProxyHeaders`; this only opens them to the package.
package enum GatewayHeadRules {
    /// `/<deployment>/<rest>?<query>` → the deployment and the upstream target; nil when the path
    /// names no deployment (the gateway answers 404).
    package static func split(target uri: String) -> (deployment: Substring, upstreamTarget: String)? {
        ProxyHeaders.split(target: uri)
    }

    /// The head sent to the model server at `authority`.
    package static func upstreamRequest(_ head: HTTPRequestHead, target: String, authority: String) -> HTTPRequestHead {
        ProxyHeaders.upstreamRequest(head, target: target, authority: authority)
    }

    /// The head sent back to the client; `keepAlive` may be turned off.
    package static func clientResponse(_ head: HTTPResponseHead, version: HTTPVersion, capstanVersion: String, keepAlive: inout Bool) -> HTTPResponseHead {
        ProxyHeaders.clientResponse(head, version: version, capstanVersion: capstanVersion, keepAlive: &keepAlive)
    }

    /// The header names listed in `Connection`; nil when there is none.
    package static func connectionTokens(_ headers: HTTPHeaders) -> [Substring]? {
        ProxyHeaders.tokens(of: headers)
    }

    /// True for a header that concerns one connection and is never forwarded as it is
    /// (`Content-Length` is forwarded; `Transfer-Encoding` is set by the gateway).
    package static func isHopByHop(_ name: String) -> Bool {
        switch ProxyHeaders.hopByHop(name) {
        case .dropped, .transferEncoding: return true
        case .endToEnd, .contentLength: return false
        }
    }

    /// The gateway's own error body, `{"error": …}`.
    package static func errorBody(_ message: String) -> String {
        ProxyHeaders.errorBody(message)
    }

    package static let versionHeader = ProxyHeaders.versionHeader
}
