import Foundation
import NIOCore
import NIOHTTP1

/// The pure parts of proxying one request: where `/<deployment>/<rest>` goes, and which headers
/// cross the gateway (docs/serving.md, "The gateway").
enum ProxyHeaders {
    static let versionHeader = "X-Capstan-Version"

    /// `/<deployment>/<rest>?<query>` → the deployment name and the upstream target
    /// (`/<rest>?<query>`, `/` when empty). Nil when the path names no deployment.
    static func split(target uri: String) -> (deployment: Substring, upstreamTarget: String)? {
        let utf8 = uri.utf8
        guard utf8.first == UInt8(ascii: "/") else { return nil }
        let nameStart = utf8.index(after: utf8.startIndex)
        let nameEnd = utf8[nameStart...].firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") } ?? utf8.endIndex
        guard nameStart != nameEnd else { return nil }
        let rest = uri[nameEnd...]
        let target: String
        if rest.isEmpty {
            target = "/"
        } else if rest.utf8.first == UInt8(ascii: "?") {
            target = "/" + rest
        } else {
            target = String(rest)
        }
        return (uri[nameStart..<nameEnd], target)
    }

    /// The origin-form of a request target: `http://host/churn/x?q` (absolute-form, which a
    /// server must accept: RFC 9112, 3.2.2) → `/churn/x?q`; anything else unchanged.
    static func originForm(_ uri: String) -> String {
        let utf8 = uri.utf8
        guard utf8.first != UInt8(ascii: "/"), let schemeEnd = uri.range(of: "://"),
              ["http", "https"].contains(where: { uri[..<schemeEnd.lowerBound].equalsIgnoringASCIICase($0) }) else { return uri }
        let afterAuthority = uri[schemeEnd.upperBound...].firstIndex { $0 == "/" || $0 == "?" || $0 == "#" }
        guard let afterAuthority else { return "/" }
        let rest = uri[afterAuthority...].prefix { $0 != "#" }
        return rest.first == "?" ? "/" + rest : String(rest)
    }

    /// The methods the gateway passes on (the model server answers them); CONNECT is refused.
    static let allowedMethods = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"

    /// The request head sent to the model server: the client's headers less the hop-by-hop ones,
    /// `Expect` and `Host`; `Host` set to the model server's `127.0.0.1:PORT`; framing as the
    /// client's (`Content-Length`, or chunked for a chunked body).
    static func upstreamRequest(_ head: HTTPRequestHead, target: String, authority: String) -> HTTPRequestHead {
        let connectionTokens = tokens(of: head.headers)
        var headers = HTTPHeaders()
        headers.reserveCapacity(head.headers.count + 1)
        headers.add(name: "Host", value: authority)
        var framed = false
        var chunked = false
        for (name, value) in head.headers {
            switch hopByHop(name) {
            case .endToEnd:
                if let connectionTokens, connectionTokens.contains(where: { $0.equalsIgnoringASCIICase(name) }) { continue }
                headers.add(name: name, value: value)
            case .contentLength:
                framed = true
                headers.add(name: name, value: value)
            case .transferEncoding:
                chunked = true
            case .dropped:
                continue
            }
        }
        if !framed {
            if chunked {
                headers.add(name: "Transfer-Encoding", value: "chunked")
            } else if head.method == .POST || head.method == .PUT || head.method == .PATCH {
                headers.add(name: "Content-Length", value: "0")
            }
        }
        return HTTPRequestHead(version: .http1_1, method: head.method, uri: target, headers: headers)
    }

    /// The response head sent back to the client: the model server's headers less the hop-by-hop
    /// ones and any `X-Capstan-Version` of its own (found by the gateway fuzz target's invariants: the client saw two, the
    /// server's first), plus `X-Capstan-Version`, and `Connection: close` when the client connection ends
    /// after this answer. `keepAlive` may be turned off (an HTTP/1.0 client and an answer of
    /// unknown length: only closing can end it).
    static func clientResponse(_ head: HTTPResponseHead, version: HTTPVersion, capstanVersion: String, keepAlive: inout Bool) -> HTTPResponseHead {
        let connectionTokens = tokens(of: head.headers)
        var headers = HTTPHeaders()
        headers.reserveCapacity(head.headers.count + 2)
        var hasLength = false
        for (name, value) in head.headers {
            switch hopByHop(name) {
            case .endToEnd:
                if let connectionTokens, connectionTokens.contains(where: { $0.equalsIgnoringASCIICase(name) }) { continue }
                if name.equalsIgnoringASCIICase(versionHeader) { continue }
                headers.add(name: name, value: value)
            case .contentLength:
                hasLength = true
                headers.add(name: name, value: value)
            case .transferEncoding, .dropped:
                continue
            }
        }
        headers.add(name: versionHeader, value: capstanVersion)
        if version.major == 1, version.minor == 0, !hasLength, head.status.mayHaveResponseBody { keepAlive = false }
        connectionHeader(&headers, version: version, keepAlive: keepAlive)
        return HTTPResponseHead(version: version, status: head.status, headers: headers)
    }

    /// `Connection: close` (HTTP/1.1) or `Connection: keep-alive` (HTTP/1.0) when the default does not hold.
    static func connectionHeader(_ headers: inout HTTPHeaders, version: HTTPVersion, keepAlive: Bool) {
        if version.major == 1, version.minor == 0 {
            if keepAlive { headers.add(name: "Connection", value: "keep-alive") }
        } else if !keepAlive {
            headers.add(name: "Connection", value: "close")
        }
    }

    enum HeaderKind { case endToEnd, contentLength, transferEncoding, dropped }

    /// Hop-by-hop headers concern one connection, not the message: never forwarded. `Host` and
    /// `Expect` are the gateway's business too (it sets the one and answers the other).
    static func hopByHop(_ name: String) -> HeaderKind {
        let utf8 = name.utf8
        switch utf8.count {
        case 2: return name.equalsIgnoringASCIICase("te") ? .dropped : .endToEnd
        case 4: return name.equalsIgnoringASCIICase("host") ? .dropped : .endToEnd
        case 6: return name.equalsIgnoringASCIICase("expect") ? .dropped : .endToEnd
        case 7: return name.equalsIgnoringASCIICase("trailer") || name.equalsIgnoringASCIICase("upgrade") ? .dropped : .endToEnd
        case 10: return name.equalsIgnoringASCIICase("connection") || name.equalsIgnoringASCIICase("keep-alive") ? .dropped : .endToEnd
        case 14: return name.equalsIgnoringASCIICase("content-length") ? .contentLength : .endToEnd
        case 16: return name.equalsIgnoringASCIICase("proxy-connection") ? .dropped : .endToEnd
        case 17: return name.equalsIgnoringASCIICase("transfer-encoding") ? .transferEncoding : .endToEnd
        case 18: return name.equalsIgnoringASCIICase("proxy-authenticate") ? .dropped : .endToEnd
        case 19: return name.equalsIgnoringASCIICase("proxy-authorization") ? .dropped : .endToEnd
        default: return .endToEnd
        }
    }

    /// The header names listed in `Connection` (hop-by-hop too); nil when there is none.
    static func tokens(of headers: HTTPHeaders) -> [Substring]? {
        var result: [Substring]?
        for (name, value) in headers where name.utf8.count == 10 && name.equalsIgnoringASCIICase("connection") {
            for token in value.split(separator: ",") {
                let trimmed = token.drop { $0 == " " || $0 == "\t" }
                let end = trimmed.lastIndex { $0 != " " && $0 != "\t" }
                guard let end else { continue }
                result = (result ?? []) + [trimmed[...end]]
            }
        }
        return result
    }

    /// A JSON error answer's body: `{"error": "..."}` and a newline.
    static func errorBody(_ message: String) -> String {
        "{\"error\":" + JSONText.quote(message) + "}\n"
    }
}

extension StringProtocol {
    /// ASCII case-insensitive equality (header names).
    func equalsIgnoringASCIICase(_ other: some StringProtocol) -> Bool {
        let a = utf8, b = other.utf8
        guard a.count == b.count else { return false }
        for (x, y) in zip(a, b) where x != y {
            let lx = x >= 65 && x <= 90 ? x | 0x20 : x
            let ly = y >= 65 && y <= 90 ? y | 0x20 : y
            if lx != ly { return false }
        }
        return true
    }
}

/// JSON string quoting for hand-written error bodies.
enum JSONText {
    static func quote(_ s: String) -> String {
        var out = "\""
        out.reserveCapacity(s.utf8.count + 2)
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
